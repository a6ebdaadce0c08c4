"""The compiled CPU ops (``cpp`` backend, ``torch.ops.unsc_fast.*``) against the float64 reference.

Skipped as a whole when the extension is not built (``pip install -e . --no-build-isolation``).

Tolerances: relative Frobenius error against float64 on the same rounded inputs.
* accumulate / accumulate_conv: REL_TOL of S's dtype, on the upper triangles (the lower one
  is unspecified after a fast kernel); fp16/bf16 products are exact in fp32.
* project: measured against max(‖expected‖, ‖G‖) (the output is ~0 when a full basis is
  removed): fp64 1e-12, fp32 1e-5, fp16/bf16 one unit roundoff of the dtype plus 1e-5 (the
  result is computed in fp32 and rounded once to the gradient's dtype).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from cases import (
    CONV_CASES, DENSE_SHAPES, IN_DTYPES, PROJECT_SHAPES, REL_TOL, non_contiguous, orthonormal,
    rand, rel_err,
)
from unsc_fast import dispatch, ops
from unsc_fast import reference as ref
from unsc_fast.reference import ConvGeometry

try:
    from unsc_fast.kernels import cpp
except ImportError as exc:  # extension not built
    pytest.skip(f"unsc_fast._C not available: {exc}", allow_module_level=True)

OPS = torch.ops.unsc_fast
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
PROJECT_TOL = {torch.float64: 1e-12, torch.float32: 1e-5,
               torch.float16: UNIT_ROUNDOFF[torch.float16] + 1e-5,
               torch.bfloat16: UNIT_ROUNDOFF[torch.bfloat16] + 1e-5}
SYMMETRIC_CONV_CASES = [c for c in CONV_CASES if c[4].symmetric_padding is not None]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ids(seq) -> list[str]:
    return [str(s).replace("torch.", "") for s in seq]


def _upper_err(S: torch.Tensor, expected: torch.Tensor) -> float:
    return rel_err(torch.triu(S), torch.triu(expected))


def _s_dtypes(x_dtype: torch.dtype) -> list[torch.dtype]:
    """fp32 accumulators for every input; fp64 ones for fp64 (and fp16) inputs too."""
    return [torch.float32] + ([torch.float64] if x_dtype in (torch.float64, torch.float16) else [])


def _random_sym(d: int, dtype: torch.dtype, groups: int | None = None, seed: int = 7):
    shape = (d, d) if groups is None else (groups, d, d)
    A = rand(*shape, dtype=torch.float64, gen=_gen(seed))
    return (A + A.mT).to(dtype)  # S starts non-zero: the op must add, not overwrite


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


# --------------------------------------------------------------------------- accumulate

def _dense_layouts(X: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"contiguous": X, "strided": non_contiguous(X), "column_major": X.mT.contiguous().mT}


@pytest.mark.parametrize("layout", ["contiguous", "strided", "column_major"])
@pytest.mark.parametrize("x_dtype", IN_DTYPES, ids=_ids(IN_DTYPES))
@pytest.mark.parametrize("n,d", DENSE_SHAPES)
def test_accumulate(n, d, x_dtype, layout):
    X = rand(n, d, dtype=x_dtype, gen=_gen(n * 1000 + d))
    Xl = _dense_layouts(X)[layout]
    for s_dtype in _s_dtypes(x_dtype):
        S0 = _random_sym(d, s_dtype)
        S = S0.clone()
        out = ops.accumulate_(S, Xl, backend="cpp")
        assert out is S
        expected = S0.double() + X.double().mT @ X.double()
        assert _upper_err(S, expected) <= REL_TOL[s_dtype], (s_dtype, layout)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=_ids([torch.float32, torch.bfloat16, torch.float64]))
@pytest.mark.parametrize("n,d", [(700, 300), (6000, 40)])
def test_accumulate_many_tiles_and_chunks(n, d, x_dtype, threads):
    """Both threaded strategies: d > 256 (several blocks of S, threads owning row ranges) and
    small d with many row chunks (private accumulators); in inference mode, so the worker
    threads must see the caller's thread-local state."""
    X = rand(n, d, dtype=x_dtype, gen=_gen(3))
    s_dtype = torch.float64 if x_dtype == torch.float64 else torch.float32
    expected = X.double().mT @ X.double()
    for Xl in (X, non_contiguous(X)):
        with torch.inference_mode():
            S = torch.zeros(d, d, dtype=s_dtype)
            OPS.accumulate_(S, Xl)
        assert _upper_err(S, expected) <= REL_TOL[s_dtype]


def test_accumulate_zero_rows_is_noop():
    S = _random_sym(5, torch.float32)
    S0 = S.clone()
    OPS.accumulate_(S, torch.empty(0, 5))
    assert torch.equal(S, S0)


# ---------------------------------------------------------------------- accumulate_conv

def _conv_layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
            "strided": non_contiguous(x)}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("x_dtype", IN_DTYPES, ids=_ids(IN_DTYPES))
@pytest.mark.parametrize("case", range(len(SYMMETRIC_CONV_CASES)))
def test_accumulate_conv(case, x_dtype, layout):
    N, C, H, W, geom = SYMMETRIC_CONV_CASES[case]
    x = rand(N, C, H, W, dtype=x_dtype, gen=_gen(case))
    xl = _conv_layouts(x)[layout]
    d = geom.patch_dim(C)
    expected = torch.zeros(geom.groups, d, d, dtype=torch.float64)
    ref.accumulate_conv_(expected, x.double(), geom)
    for s_dtype in _s_dtypes(x_dtype):
        S0 = _random_sym(d, s_dtype, geom.groups)
        S = S0.clone()
        out = ops.accumulate_conv_(S, xl, geom, backend="cpp")
        assert out is S
        assert _upper_err(S, expected + S0.double()) <= REL_TOL[s_dtype], (s_dtype, layout)


@pytest.mark.parametrize("N,C,H,W,groups", [(2, 32, 12, 11, 1), (2, 128, 12, 11, 4),
                                             (16, 3, 32, 32, 1)])
def test_accumulate_conv_many_tiles_and_chunks(N, C, H, W, groups, threads):
    """d > 256 (blocks of S, threads owning row ranges), many groups (a group per thread) and
    small d with many rows (private accumulators), serial and threaded."""
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


def test_conv_geometries_the_backend_declines():
    """Asymmetric or non-zero padding: auto falls back to the reference, forcing cpp raises."""
    x = rand(1, 2, 6, 6, gen=_gen(1))
    for geom in (ConvGeometry((2, 2), pad=(0, 1, 0, 1)),
                 ConvGeometry((3, 3), pad=(1, 1, 1, 1), padding_mode="reflect")):
        d = geom.patch_dim(2)
        S = torch.zeros(1, d, d)
        with warnings.catch_warnings():  # dispatch's one-time "runs the reference" notice
            warnings.simplefilter("ignore")
            name, _ = dispatch.resolve("accumulate_conv", S.device, (S, x, geom))
        assert name != "cpp"
        with pytest.raises(RuntimeError, match="does not support"):
            ops.accumulate_conv_(S, x, geom, backend="cpp")
    # symmetric zero padding is taken by cpp under auto
    geom = ConvGeometry((3, 3), pad=(1, 1, 1, 1))
    S = torch.zeros(1, 18, 18)
    assert dispatch.resolve("accumulate_conv", S.device, (S, x, geom))[0] == "cpp"


# ------------------------------------------------------------------------------ project

def _proj_err(out: torch.Tensor, expected: torch.Tensor, G0: torch.Tensor) -> float:
    scale = max(expected.double().norm().item(), G0.double().norm().item(), 1e-300)
    return (out.double() - expected.double()).norm().item() / scale


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", IN_DTYPES, ids=_ids(IN_DTYPES))
@pytest.mark.parametrize("rows,d,m", PROJECT_SHAPES)
def test_project(rows, d, m, dtype, layout):
    for subtract in (True, False):
        G0 = rand(rows, d, dtype=dtype, gen=_gen(rows * 31 + d))
        B = orthonormal(d, m, dtype=dtype, gen=_gen(m + 5))
        G = non_contiguous(G0) if layout == "strided" else G0.clone()
        ops.project_([G], [B], [subtract], backend="cpp")
        expected = ref.project(G0.double(), B.double(), subtract)
        assert _proj_err(G, expected, G0) <= PROJECT_TOL[dtype], subtract
        if m == 0 and subtract:
            assert torch.equal(G, G0)


def test_project_grouped_one_call(threads):
    """Many layers in ONE call: row blocks of a conv weight gradient (grouped conv), a strided
    view, a transposed view, fp64/fp16/bf16 layers, m = 0 both ways; memory outside the
    views must stay untouched."""
    g = _gen(11)
    Wconv = rand(12, 4, 3, 3, gen=g)                         # conv weight grad, 3 groups
    flat = Wconv.view(12, -1)                                # (out, C/groups·kh·kw) = (12, 36)
    blocks = [flat[0:4], flat[4:8], flat[8:12]]
    wide = rand(40, 2 * 50, gen=g)
    strided = wide[:, ::2]                                   # (40, 50), stride gap
    base_t = rand(30, 20, gen=g)
    transposed = base_t.mT                                   # (20, 30), column major
    big = rand(300, 130, gen=g)                              # several row tiles
    G64, G16, Gbf = rand(9, 17, dtype=torch.float64, gen=g), rand(6, 10, dtype=torch.float16,
                                                                    gen=g), rand(33, 64, dtype=torch.bfloat16, gen=g)
    Gz1, Gz2 = rand(3, 5, gen=g), rand(4, 6, gen=g)
    grads = blocks + [strided, transposed, big, G64, G16, Gbf, Gz1, Gz2]
    ms = [5, 36, 0, 20, 29, 100, 8, 3, 60, 0, 0]
    subtract = [True, False, True, True, False, True, True, False, True, True, False]
    bases = [orthonormal(G.shape[1], m, dtype=G.dtype, gen=g) for G, m in zip(grads, ms)]
    before = [G.clone() for G in grads]
    wide_before, flat_before = wide.clone(), flat.clone()
    expected = [ref.project(G.double(), B.double(), s) for G, B, s in zip(before, bases, subtract)]
    ops.project_(grads, bases, subtract, backend="cpp")
    for i, (G, E, G0) in enumerate(zip(grads, expected, before)):
        assert _proj_err(G, E, G0) <= PROJECT_TOL[G.dtype], i
    assert torch.equal(wide[:, 1::2], wide_before[:, 1::2])  # the gaps of the strided view
    assert torch.equal(Wconv.view(12, -1)[8:12], flat_before[8:12])  # m=0, subtract: untouched
    assert torch.equal(grads[-1], torch.zeros_like(grads[-1]))       # m=0, onto span{}: zero


# ------------------------------------------------------------------------------ opcheck

def test_opcheck_accumulate():
    S = torch.zeros(6, 6)
    X = rand(5, 6, gen=_gen(1))
    torch.library.opcheck(OPS.accumulate_.default, (S, X))
    torch.library.opcheck(OPS.accumulate_.default, (S.double(), non_contiguous(X).half()))


def test_opcheck_accumulate_conv():
    x = rand(2, 4, 5, 5, gen=_gen(2))
    S = torch.zeros(2, 18, 18)
    torch.library.opcheck(OPS.accumulate_conv_.default, (S, x, [3, 3], [1, 2], [1, 1], [1, 1], 2))
    torch.library.opcheck(OPS.accumulate_conv_.default,
                          (S, x.contiguous(memory_format=torch.channels_last), [3, 3], [1, 1],
                           [1, 1], [1, 1], 2))


def test_opcheck_project():
    g = _gen(3)
    grads = [rand(4, 6, gen=g), rand(3, 5, gen=g)]
    bases = [orthonormal(6, 2, dtype=torch.float32, gen=g), orthonormal(5, 5, dtype=torch.float32, gen=g)]
    torch.library.opcheck(OPS.project_.default, (grads, bases, [True, False]))


def test_torch_compile_fullgraph():
    """The ops trace (fake implementations, functionalisation of the in-place updates)."""
    def step(S, X, G, B):
        OPS.accumulate_(S, X)
        OPS.project_([G], [B], [True])
        return S.sum() + G.sum()

    g = _gen(4)
    S, X = torch.zeros(5, 5), rand(7, 5, gen=g)
    G, B = rand(3, 5, gen=g), orthonormal(5, 2, dtype=torch.float32, gen=g)
    S2, G2 = S.clone(), G.clone()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    out = compiled(S, X, G, B)
    expected = step(S2, X, G2, B)
    torch.testing.assert_close(torch.triu(S), torch.triu(S2))
    torch.testing.assert_close(G, G2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- bad inputs

def _raises_and_unchanged(fn, tensors, match):
    before = [t.clone() for t in tensors]
    with pytest.raises(RuntimeError, match=match):
        fn()
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)


def test_accumulate_bad_inputs_raise_before_writing():
    S = _random_sym(4, torch.float32)
    X = rand(3, 4, gen=_gen(1))
    cases = [
        (lambda: OPS.accumulate_(S, rand(3, 5)), "must be \\(n, 4\\)"),
        (lambda: OPS.accumulate_(S, X.to(torch.int32)), "X must be float16"),
        (lambda: OPS.accumulate_(S.to(torch.float16), X), "S must be float32 or float64"),
        (lambda: OPS.accumulate_(S[:, :3], X[:, :3]), "square"),
        (lambda: OPS.accumulate_(torch.zeros(3, 6)[:, ::2], X[:, :3]), "contiguous"),
        (lambda: OPS.accumulate_(S, X.view(3, 4, 1)), "must be \\(n, 4\\)"),
    ]
    for fn, match in cases:
        _raises_and_unchanged(fn, [S], match)


def test_accumulate_conv_bad_inputs_raise_before_writing():
    x = rand(1, 4, 5, 5, gen=_gen(2))
    S = _random_sym(36, torch.float32, groups=1)
    S2 = _random_sym(18, torch.float32, groups=2)
    cases = [
        (lambda: OPS.accumulate_conv_(S, x, [3, 3], [1, 1], [1, 1], [1, 1], 3), "groups"),
        (lambda: OPS.accumulate_conv_(S, x, [3, 3], [1, 1], [1, 1], [1, 1], 2), "must be \\(groups"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [0, 1], [1, 1], [1, 1], 2), "stride"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [-1, 1], [1, 1], 2), "padding"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [1, 1], [0, 1], 2), "dilation"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [0, 0], [3, 3], 2), "smaller than"),
        (lambda: OPS.accumulate_conv_(S2, x[0], [3, 3], [1, 1], [1, 1], [1, 1], 2), "N, C, H, W"),
        (lambda: OPS.accumulate_conv_(S2, x.to(torch.int64), [3, 3], [1, 1], [1, 1], [1, 1], 2),
         "x must be float16"),
        (lambda: OPS.accumulate_conv_(S2.to(torch.bfloat16), x, [3, 3], [1, 1], [1, 1], [1, 1], 2),
         "S must be float32"),
    ]
    for fn, match in cases:
        _raises_and_unchanged(fn, [S, S2], match)


def test_project_bad_inputs_raise_before_writing():
    g = _gen(5)
    G1, G2 = rand(4, 6, gen=g), rand(3, 5, gen=g)
    B1, B2 = orthonormal(6, 2, dtype=torch.float32, gen=g), orthonormal(5, 2, dtype=torch.float32, gen=g)
    empty1 = torch.empty(6, 0)  # m = 0 onto span{}: would zero G1 if anything were written
    cases = [
        (lambda: OPS.project_([G1, G2], [B1], [True, True]), "differ in length"),
        (lambda: OPS.project_([G1, G2], [empty1, B2.double()], [False, True]), "convert the bases"),
        (lambda: OPS.project_([G1, G2], [empty1, orthonormal(4, 2, dtype=torch.float32)],
                              [False, True]), "must be \\(rows, d\\)"),
        (lambda: OPS.project_([G1, G2.to(torch.int32)], [empty1, B2.to(torch.int32)],
                              [False, True]), "unsupported dtype"),
        (lambda: OPS.project_([G1, rand(1, 5).expand(3, 5)], [empty1, B2], [False, True]),
         "overlapping"),
    ]
    for fn, match in cases:
        _raises_and_unchanged(fn, [G1, G2], match)
