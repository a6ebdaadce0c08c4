"""The compiled ops of ``unsc_fast._C`` (``torch.ops.unsc_fast.*``) against the float64
reference, on the CPU (``cpp`` backend) and on a CUDA device (``cuda`` backend).

Every test takes a ``device`` parameter, "cpu" or "cuda" (the ids start with it, so ``-k cpu``
and ``-k cuda`` select one side; the CUDA cases also carry the ``gpu`` marker). The CUDA side
adds shapes that cross many tiles, row splits and launch batches; the CPU side adds the
thread-count variants. A gate (the autouse fixture below) skips
* every case when ``unsc_fast._C`` is not built (``pip install -e . --no-build-isolation``);
* the CUDA cases without a CUDA device, or when the extension was built without CUDA kernels
  (a CPU torch, ``UNSC_FAST_CUDA=0``) —
unless ``UNSC_FAST_REQUIRE_CUDA=1`` (set by benchmarks/gpu.sh): then a CUDA case that cannot
run is a failure (an error at set-up), never a skip.

Tolerances: relative Frobenius error against float64 on the same rounded inputs; the CUDA
kernels compute in fp32 (fp64 for fp64) without TF32, so the same bounds hold on both devices.
* accumulate / accumulate_conv: REL_TOL of S's dtype, on the upper triangles (the lower one
  is unspecified after a fast kernel); fp16/bf16 products are exact in fp32.
* project: measured against max(‖expected‖, ‖G‖) (the output is ~0 when a full basis is
  removed): fp64 1e-12, fp32 1e-5, fp16/bf16 one unit roundoff of the dtype plus 1e-5 (the
  result is computed in fp32 and rounded once to the gradient's dtype).
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from cases import (
    CONV_CASES, DENSE_SHAPES, IN_DTYPES, PROJECT_SHAPES, REL_TOL, non_contiguous, orthonormal,
    rand, rel_err,
)
from unsc_fast import dispatch, ops
from unsc_fast import reference as ref
from unsc_fast.geometry import ConvGeometry

try:
    from unsc_fast.kernels import cpp
    _NOT_BUILT = None
except ImportError as exc:  # extension not built: the gate skips (or fails) every case
    cpp, _NOT_BUILT = None, f"unsc_fast._C not available: {exc}"

REQUIRE_CUDA = os.environ.get("UNSC_FAST_REQUIRE_CUDA") == "1"
OPS = torch.ops.unsc_fast
BACKEND = {"cpu": "cpp", "cuda": "cuda"}
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
PROJECT_TOL = {torch.float64: 1e-12, torch.float32: 1e-5,
               torch.float16: UNIT_ROUNDOFF[torch.float16] + 1e-5,
               torch.bfloat16: UNIT_ROUNDOFF[torch.bfloat16] + 1e-5}
SYMMETRIC_CONV_CASES = [c for c in CONV_CASES if c[4].symmetric_padding is not None]
LARGE_CONV = [(8, 32, 20, 20, ConvGeometry((3, 3), pad=(1, 1, 1, 1))),            # d = 288
              (4, 64, 14, 14, ConvGeometry((3, 3), stride=(2, 2), pad=(1, 1, 1, 1), groups=32))]
ALL_CONV_CASES = SYMMETRIC_CONV_CASES + LARGE_CONV

GPU = pytest.mark.gpu
CPU_ONLY = ["cpu"]
CUDA_ONLY = [pytest.param("cuda", marks=GPU)]
DEVICES = CPU_ONLY + CUDA_ONLY


def on_devices(cases, cuda_extra=()) -> list:
    """Params (device, *case): every case on both devices, and cuda_extra on CUDA only."""
    def tup(c):
        return c if isinstance(c, tuple) else (c,)
    return ([pytest.param("cpu", *tup(c)) for c in cases]
            + [pytest.param("cuda", *tup(c), marks=GPU) for c in [*cases, *cuda_extra]])


def _missing(device: str) -> str | None:
    """Why the compiled ops cannot run on device, or None when they can."""
    if cpp is None:
        return _NOT_BUILT
    if device == "cuda":
        if not torch.cuda.is_available():
            return "needs a CUDA device"
        if not cpp.WITH_CUDA:
            return "unsc_fast._C was built without CUDA kernels"
    return None


@pytest.fixture(autouse=True)
def _gate(request):
    """Skip a case whose device cannot run the compiled ops; with UNSC_FAST_REQUIRE_CUDA=1 a
    CUDA case that cannot run fails instead."""
    callspec = getattr(request.node, "callspec", None)
    device = callspec.params.get("device", "cpu") if callspec else "cpu"
    reason = _missing(device)
    if reason is None:
        return
    if device == "cuda" and REQUIRE_CUDA:
        pytest.fail(f"{reason}, but UNSC_FAST_REQUIRE_CUDA=1 requires the CUDA tests to run",
                    pytrace=False)
    if device == "cuda":
        reason += " (set UNSC_FAST_REQUIRE_CUDA=1 to make this a failure)"
    pytest.skip(reason)


@pytest.fixture
def threads(request):
    """torch's CPU thread count for the test (the indirect param; None leaves it alone)."""
    old = torch.get_num_threads()
    if request.param is not None:
        torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


CPU_THREADS = [pytest.param("cpu", 1, id="cpu-threads1"), pytest.param("cpu", 2, id="cpu-threads2")]


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_cuda_backend_available(device):
    state = dispatch.availability()["cuda"]
    assert state == "available", state


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ids(seq) -> list[str]:
    return [str(s).replace("torch.", "") for s in seq]


def _upper_err(S: torch.Tensor, expected: torch.Tensor) -> float:
    return rel_err(torch.triu(S.cpu()), torch.triu(expected.cpu()))


def _s_dtypes(x_dtype: torch.dtype) -> list[torch.dtype]:
    """fp32 accumulators for every input; fp64 ones for fp64 (and fp16) inputs too."""
    return [torch.float32] + ([torch.float64] if x_dtype in (torch.float64, torch.float16) else [])


def _random_sym(d: int, dtype: torch.dtype, device: str, groups: int | None = None,
                seed: int = 7):
    shape = (d, d) if groups is None else (groups, d, d)
    A = rand(*shape, dtype=torch.float64, gen=_gen(seed))
    return (A + A.mT).to(dtype=dtype, device=device)  # S starts non-zero: the op must add


# --------------------------------------------------------------------------- accumulate

def _dense_layouts(X: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"contiguous": X, "strided": non_contiguous(X), "column_major": X.mT.contiguous().mT}


@pytest.mark.parametrize("layout", ["contiguous", "strided", "column_major"])
@pytest.mark.parametrize("x_dtype", IN_DTYPES, ids=_ids(IN_DTYPES))
@pytest.mark.parametrize("device,n,d", on_devices(DENSE_SHAPES, [(5000, 300), (70, 1000)]))
def test_accumulate(device, n, d, x_dtype, layout):
    X = rand(n, d, dtype=x_dtype, device=device, gen=_gen(n * 1000 + d))
    Xl = _dense_layouts(X)[layout]
    expected0 = X.cpu().double().mT @ X.cpu().double()
    for s_dtype in _s_dtypes(x_dtype):
        S0 = _random_sym(d, s_dtype, device)
        S = S0.clone()
        out = ops.accumulate_(S, Xl, backend=BACKEND[device])
        assert out is S
        expected = expected0 + S0.cpu().double()
        assert _upper_err(S, expected) <= REL_TOL[s_dtype], (s_dtype, layout)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=_ids([torch.float32, torch.bfloat16, torch.float64]))
@pytest.mark.parametrize("n,d", [(700, 300), (6000, 40)])
@pytest.mark.parametrize("device,threads", CPU_THREADS, indirect=["threads"])
def test_accumulate_many_tiles_and_chunks(device, threads, n, d, x_dtype):
    """CPU: both threaded strategies: d > 256 (several blocks of S, threads owning row ranges)
    and small d with many row chunks (private accumulators); in inference mode, so the worker
    threads must see the caller's thread-local state."""
    X = rand(n, d, dtype=x_dtype, gen=_gen(3))
    s_dtype = torch.float64 if x_dtype == torch.float64 else torch.float32
    expected = X.double().mT @ X.double()
    for Xl in (X, non_contiguous(X)):
        with torch.inference_mode():
            S = torch.zeros(d, d, dtype=s_dtype)
            OPS.accumulate_(S, Xl)
        assert _upper_err(S, expected) <= REL_TOL[s_dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_accumulate_zero_rows_is_noop(device):
    S = _random_sym(5, torch.float32, device)
    S0 = S.clone()
    OPS.accumulate_(S, torch.empty(0, 5, device=device))
    assert torch.equal(S, S0)


# ---------------------------------------------------------------------- accumulate_conv

def _conv_layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
            "strided": non_contiguous(x)}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("x_dtype", IN_DTYPES, ids=_ids(IN_DTYPES))
@pytest.mark.parametrize("device,case", on_devices(
    range(len(SYMMETRIC_CONV_CASES)), range(len(SYMMETRIC_CONV_CASES), len(ALL_CONV_CASES))))
def test_accumulate_conv(device, case, x_dtype, layout):
    N, C, H, W, geom = ALL_CONV_CASES[case]
    x = rand(N, C, H, W, dtype=x_dtype, device=device, gen=_gen(case))
    xl = _conv_layouts(x)[layout]
    d = geom.patch_dim(C)
    expected = torch.zeros(geom.groups, d, d, dtype=torch.float64)
    ref.accumulate_conv_(expected, x.cpu().double(), geom)
    for s_dtype in _s_dtypes(x_dtype):
        S0 = _random_sym(d, s_dtype, device, geom.groups)
        S = S0.clone()
        out = ops.accumulate_conv_(S, xl, geom, backend=BACKEND[device])
        assert out is S
        assert _upper_err(S, expected + S0.cpu().double()) <= REL_TOL[s_dtype], (s_dtype, layout)


@pytest.mark.parametrize("N,C,H,W,groups", [(2, 32, 12, 11, 1), (2, 128, 12, 11, 4),
                                             (16, 3, 32, 32, 1)])
@pytest.mark.parametrize("device,threads", CPU_THREADS, indirect=["threads"])
def test_accumulate_conv_many_tiles_and_chunks(device, threads, N, C, H, W, groups):
    """CPU: d > 256 (blocks of S, threads owning row ranges), many groups (a group per thread)
    and small d with many rows (private accumulators), serial and threaded."""
    geom = ConvGeometry((3, 3), stride=(1, 2), pad=(1, 1, 1, 1), dilation=(2, 1), groups=groups)
    x = rand(N, C, H, W, gen=_gen(groups))
    d = geom.patch_dim(C)
    expected = torch.zeros(groups, d, d, dtype=torch.float64)
    ref.accumulate_conv_(expected, x.double(), geom)
    for xl in _conv_layouts(x).values():
        with torch.inference_mode():
            S = torch.zeros(groups, d, d)
            cpp.accumulate_conv(S, xl, geom)
        assert _upper_err(S, expected) <= REL_TOL[torch.float32]


@pytest.mark.parametrize("device", DEVICES)
def test_conv_geometries_the_backend_declines(device):
    """Asymmetric or non-zero padding: auto does not pick the backend, forcing it raises."""
    backend = BACKEND[device]
    x = rand(1, 2, 6, 6, device=device, gen=_gen(1))
    for geom in (ConvGeometry((2, 2), pad=(0, 1, 0, 1)),
                 ConvGeometry((3, 3), pad=(1, 1, 1, 1), padding_mode="reflect")):
        d = geom.patch_dim(2)
        S = torch.zeros(1, d, d, device=device)
        with warnings.catch_warnings():  # dispatch's one-time "runs the reference" notice
            warnings.simplefilter("ignore")
            name, _ = dispatch.resolve("accumulate_conv", S.device, (S, x, geom))
        assert name != backend
        with pytest.raises(RuntimeError, match="does not support"):
            ops.accumulate_conv_(S, x, geom, backend=backend)
    if device == "cpu":  # symmetric zero padding is taken by cpp under auto
        geom = ConvGeometry((3, 3), pad=(1, 1, 1, 1))
        S = torch.zeros(1, 18, 18)
        assert dispatch.resolve("accumulate_conv", S.device, (S, x, geom))[0] == "cpp"


# ------------------------------------------------------------------------------ project

def _proj_err(out: torch.Tensor, expected: torch.Tensor, G0: torch.Tensor) -> float:
    out, expected, G0 = out.cpu().double(), expected.cpu().double(), G0.cpu().double()
    scale = max(expected.norm().item(), G0.norm().item(), 1e-300)
    return (out - expected).norm().item() / scale


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", IN_DTYPES, ids=_ids(IN_DTYPES))
@pytest.mark.parametrize("device,rows,d,m", on_devices(PROJECT_SHAPES, [(300, 200, 130)]))
def test_project(device, rows, d, m, dtype, layout):
    for subtract in (True, False):
        G0 = rand(rows, d, dtype=dtype, device=device, gen=_gen(rows * 31 + d))
        B = orthonormal(d, m, dtype=dtype, device=device, gen=_gen(m + 5))
        G = non_contiguous(G0) if layout == "strided" else G0.clone()
        ops.project_grads_([G], [B], [subtract], backend=BACKEND[device])
        expected = ref.project(G0.cpu().double(), B.cpu().double(), subtract)
        assert _proj_err(G, expected, G0) <= PROJECT_TOL[dtype], subtract
        if m == 0 and subtract:
            assert torch.equal(G, G0)


@pytest.mark.parametrize("device,threads",
                         CPU_THREADS + [pytest.param("cuda", None, id="cuda", marks=GPU)],
                         indirect=["threads"])
def test_project_grouped_one_call(device, threads):
    """Many layers in ONE call (more than one CUDA launch batch of 24): row blocks of a conv
    weight gradient (grouped conv), a strided view, a transposed view, several row tiles,
    fp64/fp16/bf16 layers, m = 0 both ways, a strided basis; memory outside the views must
    stay untouched. On the CPU with 1 and 2 threads."""
    g = _gen(11)
    Wconv = rand(12, 4, 3, 3, device=device, gen=g)         # conv weight grad, 3 groups
    flat = Wconv.view(12, -1)                                # (out, C/groups·kh·kw) = (12, 36)
    blocks = [flat[0:4], flat[4:8], flat[8:12]]
    wide = rand(40, 2 * 50, device=device, gen=g)
    strided = wide[:, ::2]                                   # (40, 50), stride gap
    transposed = rand(30, 20, device=device, gen=g).mT       # (20, 30), column major
    big = rand(300, 130, device=device, gen=g)               # several row tiles
    many = [rand(5 + i, 3 + 2 * i, device=device, gen=g) for i in range(26)]
    G64 = rand(9, 17, dtype=torch.float64, device=device, gen=g)
    G16 = rand(6, 10, dtype=torch.float16, device=device, gen=g)
    Gbf = [rand(r, 64, dtype=torch.bfloat16, device=device, gen=g) for r in (33, 70)]
    Gz1, Gz2 = rand(3, 5, device=device, gen=g), rand(4, 6, device=device, gen=g)
    grads = blocks + [strided, transposed, big] + many + [G64, G16] + Gbf + [Gz1, Gz2]
    ms = ([5, 36, 0, 20, 29, 100] + [max(1, (3 + 2 * i) // 2) for i in range(26)]
          + [8, 3, 60, 60, 0, 0])
    subtract = ([True, False, True, True, False, True] + [i % 2 == 0 for i in range(26)]
                + [True, False, True, True, True, False])
    bases = [orthonormal(G.shape[1], m, dtype=G.dtype, device=device, gen=g)
             for G, m in zip(grads, ms)]
    bases[4] = non_contiguous(bases[4])
    before = [G.clone() for G in grads]
    wide_before = wide.clone()
    expected = [ref.project(G.cpu().double(), B.cpu().double(), s)
                for G, B, s in zip(before, bases, subtract)]
    ops.project_grads_(grads, bases, subtract, backend=BACKEND[device])
    for i, (G, E, G0) in enumerate(zip(grads, expected, before)):
        assert _proj_err(G, E, G0) <= PROJECT_TOL[G.dtype], i
    assert torch.equal(wide[:, 1::2], wide_before[:, 1::2])  # the gaps of the strided view
    assert torch.equal(flat[8:12], before[2])                # m=0, subtract: untouched
    assert torch.equal(grads[-1], torch.zeros_like(grads[-1]))  # m=0, onto span{}: zero


# ------------------------------------------------------------------------------ opcheck

@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_accumulate(device):
    S = torch.zeros(6, 6, device=device)
    X = rand(5, 6, device=device, gen=_gen(1))
    torch.library.opcheck(OPS.accumulate_.default, (S, X))
    torch.library.opcheck(OPS.accumulate_.default, (S.double(), non_contiguous(X).half()))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_accumulate_conv(device):
    x = rand(2, 4, 5, 5, device=device, gen=_gen(2))
    S = torch.zeros(2, 18, 18, device=device)
    torch.library.opcheck(OPS.accumulate_conv_.default, (S, x, [3, 3], [1, 2], [1, 1], [1, 1], 2,
                                                             [5, 3]))
    torch.library.opcheck(OPS.accumulate_conv_.default,
                          (S, x.contiguous(memory_format=torch.channels_last), [3, 3], [1, 1],
                           [1, 1], [1, 1], 2, [5, 5]))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_project(device):
    g = _gen(3)
    grads = [rand(4, 6, device=device, gen=g), rand(3, 5, device=device, gen=g)]
    bases = [orthonormal(6, 2, dtype=torch.float32, device=device, gen=g),
             orthonormal(5, 5, dtype=torch.float32, device=device, gen=g)]
    torch.library.opcheck(OPS.project_grads_.default, (grads, bases, [True, False]))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    """The ops trace (fake implementations, functionalisation of the in-place updates):
    aot_eager on the CPU, Inductor on CUDA."""
    def step(S, X, G, B):
        OPS.accumulate_(S, X)
        OPS.project_grads_([G], [B], [True])
        return S.sum() + G.sum()

    g = _gen(4)
    S, X = torch.zeros(5, 5, device=device), rand(7, 5, device=device, gen=g)
    G = rand(3, 5, device=device, gen=g)
    B = orthonormal(5, 2, dtype=torch.float32, device=device, gen=g)
    S2, G2 = S.clone(), G.clone()
    compile_kwargs = {"backend": "aot_eager"} if device == "cpu" else {}
    out = torch.compile(step, fullgraph=True, **compile_kwargs)(S, X, G, B)
    expected = step(S2, X, G2, B)
    torch.testing.assert_close(torch.triu(S), torch.triu(S2))
    torch.testing.assert_close(G, G2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- bad inputs

def _raises_and_unchanged(fn, tensors, match):
    before = [t.clone() for t in tensors]
    with pytest.raises(RuntimeError, match=match):
        fn()
    if any(t.is_cuda for t in tensors):
        torch.cuda.synchronize()
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)


@pytest.mark.parametrize("device", DEVICES)
def test_accumulate_bad_inputs_raise_before_writing(device):
    S = _random_sym(4, torch.float32, device)
    X = rand(3, 4, device=device, gen=_gen(1))
    cases = [
        (lambda: OPS.accumulate_(S, rand(3, 5, device=device)), "must be \\(n, 4\\)"),
        (lambda: OPS.accumulate_(S, X.to(torch.int32)), "X must be float16"),
        (lambda: OPS.accumulate_(S.to(torch.float16), X), "S must be float32 or float64"),
        (lambda: OPS.accumulate_(S[:, :3], X[:, :3]), "square"),
        (lambda: OPS.accumulate_(torch.zeros(3, 6, device=device)[:, ::2], X[:, :3]),
         "contiguous"),
        (lambda: OPS.accumulate_(S, X.view(3, 4, 1)), "must be \\(n, 4\\)"),
    ]
    for fn, match in cases:
        _raises_and_unchanged(fn, [S], match)


@pytest.mark.parametrize("device", DEVICES)
def test_accumulate_conv_bad_inputs_raise_before_writing(device):
    x = rand(1, 4, 5, 5, device=device, gen=_gen(2))
    S = _random_sym(36, torch.float32, device, groups=1)
    S2 = _random_sym(18, torch.float32, device, groups=2)
    cases = [
        (lambda: OPS.accumulate_conv_(S, x, [3, 3], [1, 1], [1, 1], [1, 1], 3, [5, 5]), "groups"),
        (lambda: OPS.accumulate_conv_(S, x, [3, 3], [1, 1], [1, 1], [1, 1], 2, [5, 5]), r"must be \(groups"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [0, 1], [1, 1], [1, 1], 2, [5, 5]), "stride"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [-1, 1], [1, 1], 2, [5, 5]), "padding"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [1, 1], [0, 1], 2, [5, 5]), "dilation"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [0, 0], [3, 3], 2, [-1, -1]), "smaller than"),
        (lambda: OPS.accumulate_conv_(S2, x[0], [3, 3], [1, 1], [1, 1], [1, 1], 2, [5, 5]), "N, C, H, W"),
        (lambda: OPS.accumulate_conv_(S2, x.to(torch.int64), [3, 3], [1, 1], [1, 1], [1, 1], 2,
                                     [5, 5]),
         "x must be float16"),
        (lambda: OPS.accumulate_conv_(S2.to(torch.bfloat16), x, [3, 3], [1, 1], [1, 1], [1, 1], 2,
                                     [5, 5]),
         "S must be float32"),
    ]
    for fn, match in cases:
        _raises_and_unchanged(fn, [S, S2], match)


@pytest.mark.parametrize("device", DEVICES)
def test_project_bad_inputs_raise_before_writing(device):
    g = _gen(5)
    G1, G2 = rand(4, 6, device=device, gen=g), rand(3, 5, device=device, gen=g)
    B1 = orthonormal(6, 2, dtype=torch.float32, device=device, gen=g)
    B2 = orthonormal(5, 2, dtype=torch.float32, device=device, gen=g)
    empty1 = torch.empty(6, 0, device=device)  # m = 0 onto span{}: would zero G1 if written
    cases = [
        (lambda: OPS.project_grads_([G1, G2], [B1], [True, True]), "differ in length"),
        (lambda: OPS.project_grads_([G1, G2], [empty1, B2.double()], [False, True]), "convert the bases"),
        (lambda: OPS.project_grads_([G1, G2], [empty1, orthonormal(4, 2, dtype=torch.float32,
                                                             device=device)],
                              [False, True]), "must be \\(rows, d\\)"),
        (lambda: OPS.project_grads_([G1, G2.to(torch.int32)], [empty1, B2.to(torch.int32)],
                              [False, True]), "unsupported dtype"),
        (lambda: OPS.project_grads_([G1, rand(1, 5, device=device).expand(3, 5)], [empty1, B2],
                              [False, True]), "overlapping"),
    ]
    for fn, match in cases:
        _raises_and_unchanged(fn, [G1, G2], match)


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_mixed_devices_raise_before_writing(device):
    """CUDA tensors mixed with CPU ones: a clear error, nothing written."""
    S = _random_sym(4, torch.float32, device)
    X = rand(3, 4, device=device, gen=_gen(1))
    _raises_and_unchanged(lambda: OPS.accumulate_(S, X.cpu()), [S], "but X is on")
    G1, G2 = rand(4, 6, device=device), rand(3, 5, device=device)
    empty1 = torch.empty(6, 0, device=device)
    B2 = orthonormal(5, 2, dtype=torch.float32, device=device)
    _raises_and_unchanged(lambda: OPS.project_grads_([G1, G2], [empty1, B2.cpu()], [False, True]),
                          [G1, G2], "one device")
