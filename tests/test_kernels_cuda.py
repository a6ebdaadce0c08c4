"""The compiled CUDA ops (``cuda`` backend) against the float64 reference: the checks of
tests/test_kernels_cpp.py on a CUDA device, plus shapes that cross many tiles, row splits and
launch batches. Skipped without a CUDA device, when ``unsc_fast._C`` is not built at all, or
when it was built without CUDA kernels (``UNSC_FAST_CUDA=0``) — unless
``UNSC_FAST_REQUIRE_CUDA=1`` (set by benchmarks/gpu.sh), which turns that skip into a failure.

Tolerances as in test_kernels_cpp.py: the kernels compute in fp32 (fp64 for fp64) without
TF32, so REL_TOL applies to fp32 as well.
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
from unsc_fast.reference import ConvGeometry

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
try:
    from unsc_fast.kernels import cpp  # noqa: F401  (loads the extension)
except ImportError as exc:
    pytest.skip(f"unsc_fast._C not available: {exc}", allow_module_level=True)

if not cpp.WITH_CUDA and os.environ.get("UNSC_FAST_REQUIRE_CUDA") != "1":
    pytest.skip("unsc_fast._C was built without CUDA kernels (set UNSC_FAST_REQUIRE_CUDA=1 to"
                " make this a failure)", allow_module_level=True)

pytestmark = pytest.mark.gpu
DEV = torch.device("cuda")
OPS = torch.ops.unsc_fast
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
PROJECT_TOL = {torch.float64: 1e-12, torch.float32: 1e-5,
               torch.float16: UNIT_ROUNDOFF[torch.float16] + 1e-5,
               torch.bfloat16: UNIT_ROUNDOFF[torch.bfloat16] + 1e-5}
SYMMETRIC_CONV_CASES = [c for c in CONV_CASES if c[4].symmetric_padding is not None]


def test_cuda_backend_available():
    state = dispatch.availability()["cuda"]
    assert state == "available", state


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ids(seq) -> list[str]:
    return [str(s).replace("torch.", "") for s in seq]


def _upper_err(S: torch.Tensor, expected: torch.Tensor) -> float:
    return rel_err(torch.triu(S.cpu()), torch.triu(expected.cpu()))


def _s_dtypes(x_dtype: torch.dtype) -> list[torch.dtype]:
    return [torch.float32] + ([torch.float64] if x_dtype in (torch.float64, torch.float16) else [])


def _random_sym(d: int, dtype: torch.dtype, groups: int | None = None, seed: int = 7):
    shape = (d, d) if groups is None else (groups, d, d)
    A = rand(*shape, dtype=torch.float64, gen=_gen(seed))
    return (A + A.mT).to(dtype=dtype, device=DEV)


def _proj_err(out: torch.Tensor, expected: torch.Tensor, G0: torch.Tensor) -> float:
    out, expected, G0 = out.cpu().double(), expected.cpu().double(), G0.cpu().double()
    scale = max(expected.norm().item(), G0.norm().item(), 1e-300)
    return (out - expected).norm().item() / scale


# --------------------------------------------------------------------------- accumulate

def _dense_layouts(X: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"contiguous": X, "strided": non_contiguous(X), "column_major": X.mT.contiguous().mT}


@pytest.mark.parametrize("layout", ["contiguous", "strided", "column_major"])
@pytest.mark.parametrize("x_dtype", IN_DTYPES, ids=_ids(IN_DTYPES))
@pytest.mark.parametrize("n,d", DENSE_SHAPES + [(5000, 300), (70, 1000)])
def test_accumulate(n, d, x_dtype, layout):
    X = rand(n, d, dtype=x_dtype, device=DEV, gen=_gen(n * 1000 + d))
    Xl = _dense_layouts(X)[layout]
    expected0 = X.cpu().double().mT @ X.cpu().double()
    for s_dtype in _s_dtypes(x_dtype):
        S0 = _random_sym(d, s_dtype)
        S = S0.clone()
        assert ops.accumulate_(S, Xl, backend="cuda") is S
        assert _upper_err(S, expected0 + S0.cpu().double()) <= REL_TOL[s_dtype], (s_dtype, layout)


# ---------------------------------------------------------------------- accumulate_conv

def _conv_layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
            "strided": non_contiguous(x)}


LARGE_CONV = [(8, 32, 20, 20, ConvGeometry((3, 3), pad=(1, 1, 1, 1))),            # d = 288
              (4, 64, 14, 14, ConvGeometry((3, 3), stride=(2, 2), pad=(1, 1, 1, 1), groups=32))]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("x_dtype", IN_DTYPES, ids=_ids(IN_DTYPES))
@pytest.mark.parametrize("case", range(len(SYMMETRIC_CONV_CASES) + len(LARGE_CONV)))
def test_accumulate_conv(case, x_dtype, layout):
    N, C, H, W, geom = (SYMMETRIC_CONV_CASES + LARGE_CONV)[case]
    x = rand(N, C, H, W, dtype=x_dtype, device=DEV, gen=_gen(case))
    xl = _conv_layouts(x)[layout]
    d = geom.patch_dim(C)
    expected = torch.zeros(geom.groups, d, d, dtype=torch.float64)
    ref.accumulate_conv_(expected, x.cpu().double(), geom)
    for s_dtype in _s_dtypes(x_dtype):
        S0 = _random_sym(d, s_dtype, geom.groups)
        S = S0.clone()
        assert ops.accumulate_conv_(S, xl, geom, backend="cuda") is S
        assert _upper_err(S, expected + S0.cpu().double()) <= REL_TOL[s_dtype], (s_dtype, layout)


def test_conv_geometries_the_backend_declines():
    x = rand(1, 2, 6, 6, device=DEV, gen=_gen(1))
    for geom in (ConvGeometry((2, 2), pad=(0, 1, 0, 1)),
                 ConvGeometry((3, 3), pad=(1, 1, 1, 1), padding_mode="reflect")):
        d = geom.patch_dim(2)
        S = torch.zeros(1, d, d, device=DEV)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            name, _ = dispatch.resolve("accumulate_conv", S.device, (S, x, geom))
        assert name != "cuda"
        with pytest.raises(RuntimeError, match="does not support"):
            ops.accumulate_conv_(S, x, geom, backend="cuda")


# ------------------------------------------------------------------------------ project

@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", IN_DTYPES, ids=_ids(IN_DTYPES))
@pytest.mark.parametrize("rows,d,m", PROJECT_SHAPES + [(300, 200, 130)])
def test_project(rows, d, m, dtype, layout):
    for subtract in (True, False):
        G0 = rand(rows, d, dtype=dtype, device=DEV, gen=_gen(rows * 31 + d))
        B = orthonormal(d, m, dtype=dtype, device=DEV, gen=_gen(m + 5))
        G = non_contiguous(G0) if layout == "strided" else G0.clone()
        ops.project_([G], [B], [subtract], backend="cuda")
        expected = ref.project(G0.cpu().double(), B.cpu().double(), subtract)
        assert _proj_err(G, expected, G0) <= PROJECT_TOL[dtype], subtract
        if m == 0 and subtract:
            assert torch.equal(G, G0)


def test_project_grouped_one_call():
    """Many layers in ONE call (more than one launch batch of 24), mixed dtypes, strided and
    transposed views, row blocks of a conv weight gradient, m = 0 both ways, a strided basis."""
    g = _gen(11)
    Wconv = rand(12, 4, 3, 3, device=DEV, gen=g)
    flat = Wconv.view(12, -1)
    blocks = [flat[0:4], flat[4:8], flat[8:12]]
    wide = rand(40, 100, device=DEV, gen=g)
    strided = wide[:, ::2]
    transposed = rand(30, 20, device=DEV, gen=g).mT
    many = [rand(5 + i, 3 + 2 * i, device=DEV, gen=g) for i in range(26)]
    G64 = rand(9, 17, dtype=torch.float64, device=DEV, gen=g)
    G16 = rand(6, 10, dtype=torch.float16, device=DEV, gen=g)
    Gbf = rand(70, 64, dtype=torch.bfloat16, device=DEV, gen=g)
    Gz1, Gz2 = rand(3, 5, device=DEV, gen=g), rand(4, 6, device=DEV, gen=g)
    grads = blocks + [strided, transposed] + many + [G64, G16, Gbf, Gz1, Gz2]
    ms = [5, 36, 0, 20, 29] + [max(1, (3 + 2 * i) // 2) for i in range(26)] + [8, 3, 60, 0, 0]
    subtract = [True, False, True, True, False] + [i % 2 == 0 for i in range(26)] + \
        [True, False, True, True, False]
    bases = [orthonormal(G.shape[1], m, dtype=G.dtype, device=DEV, gen=g) for G, m in zip(grads, ms)]
    bases[4] = non_contiguous(bases[4])
    before = [G.clone() for G in grads]
    wide_before = wide.clone()
    expected = [ref.project(G.cpu().double(), B.cpu().double(), s)
                for G, B, s in zip(before, bases, subtract)]
    ops.project_(grads, bases, subtract, backend="cuda")
    for i, (G, E, G0) in enumerate(zip(grads, expected, before)):
        assert _proj_err(G, E, G0) <= PROJECT_TOL[G.dtype], i
    assert torch.equal(wide[:, 1::2], wide_before[:, 1::2])
    assert torch.equal(flat[8:12], before[2])
    assert torch.equal(grads[-1], torch.zeros_like(grads[-1]))


# ------------------------------------------------------------------------------ opcheck

def test_opcheck():
    g = _gen(3)
    S, X = torch.zeros(6, 6, device=DEV), rand(5, 6, device=DEV, gen=g)
    torch.library.opcheck(OPS.accumulate_.default, (S, X))
    x = rand(2, 4, 5, 5, device=DEV, gen=g)
    Sc = torch.zeros(2, 18, 18, device=DEV)
    torch.library.opcheck(OPS.accumulate_conv_.default, (Sc, x, [3, 3], [1, 2], [1, 1], [1, 1], 2))
    grads = [rand(4, 6, device=DEV, gen=g), rand(3, 5, device=DEV, gen=g)]
    bases = [orthonormal(6, 2, dtype=torch.float32, device=DEV, gen=g),
             orthonormal(5, 5, dtype=torch.float32, device=DEV, gen=g)]
    torch.library.opcheck(OPS.project_.default, (grads, bases, [True, False]))


def test_torch_compile_fullgraph():
    def step(S, X, G, B):
        OPS.accumulate_(S, X)
        OPS.project_([G], [B], [True])
        return S.sum() + G.sum()

    g = _gen(4)
    S, X = torch.zeros(5, 5, device=DEV), rand(7, 5, device=DEV, gen=g)
    G = rand(3, 5, device=DEV, gen=g)
    B = orthonormal(5, 2, dtype=torch.float32, device=DEV, gen=g)
    S2, G2 = S.clone(), G.clone()
    out = torch.compile(step, fullgraph=True)(S, X, G, B)
    expected = step(S2, X, G2, B)
    torch.testing.assert_close(torch.triu(S), torch.triu(S2))
    torch.testing.assert_close(G, G2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- bad inputs

def _raises_and_unchanged(fn, tensors, match):
    before = [t.clone() for t in tensors]
    with pytest.raises(RuntimeError, match=match):
        fn()
    torch.cuda.synchronize()
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)


def test_bad_inputs_raise_before_writing():
    S = _random_sym(4, torch.float32)
    X = rand(3, 4, device=DEV, gen=_gen(1))
    _raises_and_unchanged(lambda: OPS.accumulate_(S, rand(3, 5, device=DEV)), [S], "must be \\(n, 4\\)")
    _raises_and_unchanged(lambda: OPS.accumulate_(S, X.cpu()), [S], "but X is on")
    _raises_and_unchanged(lambda: OPS.accumulate_(S, X.to(torch.int32)), [S], "X must be float16")
    x = rand(1, 4, 5, 5, device=DEV, gen=_gen(2))
    S2 = _random_sym(18, torch.float32, groups=2)
    _raises_and_unchanged(lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [1, 1], [1, 1], 3),
                          [S2], "groups")
    _raises_and_unchanged(lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [0, 0], [3, 3], 2),
                          [S2], "smaller than")
    G1, G2 = rand(4, 6, device=DEV), rand(3, 5, device=DEV)
    empty1 = torch.empty(6, 0, device=DEV)
    B2 = orthonormal(5, 2, dtype=torch.float32, device=DEV)
    _raises_and_unchanged(lambda: OPS.project_([G1, G2], [empty1, B2.double()], [False, True]),
                          [G1, G2], "convert the bases")
    _raises_and_unchanged(lambda: OPS.project_([G1, G2], [empty1, B2.cpu()], [False, True]),
                          [G1, G2], "one device")
