"""``accumulate_conv_`` (``S[g] += P_gᵀP_g`` over conv patches) on every backend against float64.

The contract once for all backends (the ``backend`` fixture), then what only one backend has.
Tolerances: tests/kernel_helpers.py.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases import CONV_CASES, IN_DTYPES, non_contiguous, rand
from kernel_helpers import (
    ACCUMULATE_TOL, accumulate_tol, gen, ids, launch_events, params, raises_and_unchanged,
    random_sym, run_in_fresh_process, upper_err,
)
from unsc_fast import dispatch, ops
from unsc_fast import reference as ref
from unsc_fast.geometry import ConvGeometry

S_DTYPES = [torch.float32, torch.float64]
LARGE_CONV = [(8, 32, 20, 20, ConvGeometry((3, 3), pad=(1, 1, 1, 1))),            # d = 288
              (4, 64, 14, 14, ConvGeometry((3, 3), stride=(2, 2), pad=(1, 1, 1, 1), groups=32)),
              (16, 64, 28, 28, ConvGeometry((3, 3), stride=(2, 2), pad=(1, 1, 1, 1), groups=2))]
DECLINED = [ConvGeometry((2, 2), pad=(0, 1, 0, 1)),             # padding="same", even kernel
            ConvGeometry((3, 3), pad=(1, 1, 1, 1), padding_mode="reflect")]


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
            "strided": non_contiguous(x)}


def _expected(x: torch.Tensor, geom: ConvGeometry, s_dtype=torch.float64) -> torch.Tensor:
    d = geom.patch_dim(x.shape[1])
    E = torch.zeros(geom.groups, d, d, dtype=torch.float64)
    return ref.accumulate_conv_(E, x.cpu().to(s_dtype).double(), geom)


# --------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("x_dtype", IN_DTYPES, ids=ids(IN_DTYPES))
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_accumulate_conv(backend, case, x_dtype):
    """Every shared geometry (stride, padding, dilation, groups, depthwise, 1x1), input dtype,
    fp32/fp64 S and memory format; S starts non-zero."""
    N, C, H, W, geom = CONV_CASES[case]
    x = rand(N, C, H, W, dtype=x_dtype, device=backend.device, gen=gen(case))
    d = geom.patch_dim(C)
    for s_dtype in S_DTYPES:
        S0 = random_sym((geom.groups, d, d), s_dtype, backend.device)
        expected = _expected(x, geom, s_dtype) + S0.cpu().double()
        for layout, xl in _layouts(x).items():
            S = S0.clone()
            out = ops.accumulate_conv_(S, xl, geom, backend=backend.name)
            assert out is S
            err = upper_err(S, expected)
            assert err <= accumulate_tol(backend, s_dtype, x_dtype), (s_dtype, layout, err)


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(N=st.integers(1, 2), cg=st.integers(1, 3), groups=st.integers(1, 2),
       hw=st.tuples(st.integers(3, 8), st.integers(3, 8)),
       k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pad=st.tuples(st.integers(0, 1), st.integers(0, 1)),
       dil=st.tuples(st.integers(1, 2), st.integers(1, 2)), seed=st.integers(0, 2 ** 16))
def test_accumulate_conv_random_geometry(backend, N, cg, groups, hw, k, stride, pad, dil, seed):
    """Property: any symmetric-zero-padding geometry whose window fits gives P_gᵀP_g."""
    geom = ConvGeometry(k, stride, (pad[1], pad[1], pad[0], pad[0]), dil, groups)
    if min(geom.output_size(*hw)) < 1:
        return
    x = rand(N, cg * groups, *hw, device=backend.device, gen=gen(seed))
    d = geom.patch_dim(cg * groups)
    S = torch.zeros(groups, d, d, device=backend.device)
    ops.accumulate_conv_(S, x, geom, backend=backend.name)
    assert upper_err(S, _expected(x, geom)) <= accumulate_tol(backend, S.dtype, x.dtype)


def test_conv_geometries_the_backend_declines(backend):
    """Asymmetric or non-zero padding: only the reference takes it; auto never picks a backend
    that declines, and forcing one raises before writing."""
    x = rand(1, 2, 6, 6, device=backend.device, gen=gen(1))
    for geom in DECLINED:
        d = geom.patch_dim(2)
        S = torch.zeros(1, d, d, device=backend.device)
        if backend.name == "reference":
            ops.accumulate_conv_(S, x, geom, backend="reference")
            assert upper_err(S, _expected(x, geom)) <= ACCUMULATE_TOL[torch.float32]
            continue
        with warnings.catch_warnings():  # dispatch's one-time "runs the reference" notice
            warnings.simplefilter("ignore")
            name, _ = dispatch.resolve("accumulate_conv", S.device, (S, x, geom))
        assert name != backend.name
        with pytest.raises(RuntimeError, match="does not support"):
            ops.accumulate_conv_(S, x, geom, backend=backend.name)
        assert torch.all(S == 0)
        if backend.device == "cuda":  # auto moves on to another backend instead
            ops.accumulate_conv_(S, x, geom)
    if backend.name == "cpp":  # symmetric zero padding is taken by cpp under auto
        S = torch.zeros(1, 18, 18)
        geom = ConvGeometry((3, 3), pad=(1, 1, 1, 1))
        assert dispatch.resolve("accumulate_conv", S.device, (S, x, geom))[0] == "cpp"


@pytest.mark.parametrize("backend", params("cuda", "triton"), indirect=True)
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=ids([torch.bfloat16, torch.float16, torch.float32]))
def test_accumulate_conv_large_on_gpu(backend, x_dtype):
    """GPU sizes: d up to 288, 32 groups, channels_last, many row splits."""
    if backend.device != "cuda":
        pytest.skip("needs a CUDA device (interpreter run)")
    for N, C, H, W, geom in LARGE_CONV:
        x = rand(N, C, H, W, dtype=x_dtype, device="cuda", gen=gen(C))
        d = geom.patch_dim(C)
        for xl in _layouts(x).values():
            S = torch.zeros(geom.groups, d, d, device="cuda")
            ops.accumulate_conv_(S, xl, geom, backend=backend.name)
            assert upper_err(S, _expected(x, geom)) <= accumulate_tol(backend, S.dtype, x_dtype)


# --------------------------------------------------------------------------- cpp / cuda

@pytest.mark.parametrize("N,C,H,W,groups", [(2, 32, 12, 11, 1), (2, 128, 12, 11, 4),
                                             (16, 3, 32, 32, 1)])
@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["threads1", "threads2"])
@pytest.mark.parametrize("backend", params("cpp"), indirect=True)
def test_accumulate_conv_many_tiles_and_chunks(backend, threads, N, C, H, W, groups):
    """cpp: d > 256 (blocks of S, threads owning row ranges), many groups (a group per thread)
    and small d with many rows (private accumulators), serial and threaded."""
    geom = ConvGeometry((3, 3), stride=(1, 2), pad=(1, 1, 1, 1), dilation=(2, 1), groups=groups)
    x = rand(N, C, H, W, gen=gen(groups))
    d = geom.patch_dim(C)
    expected = _expected(x, geom)
    for xl in _layouts(x).values():
        with torch.inference_mode():
            S = torch.zeros(groups, d, d)
            ops.accumulate_conv_(S, xl, geom, backend="cpp")
        assert upper_err(S, expected) <= ACCUMULATE_TOL[torch.float32]


@pytest.mark.parametrize("backend", params("cpp", "cuda"), indirect=True)
def test_opcheck_accumulate_conv(backend):
    x = rand(2, 4, 5, 5, device=backend.device, gen=gen(2))
    S = torch.zeros(2, 18, 18, device=backend.device)
    op = torch.ops.unsc_fast.accumulate_conv_.default
    torch.library.opcheck(op, (S, x, [3, 3], [1, 2], [1, 1], [1, 1], 2, [5, 3]))
    torch.library.opcheck(op, (S, x.contiguous(memory_format=torch.channels_last), [3, 3],
                               [1, 1], [1, 1], [1, 1], 2, [5, 5]))


@pytest.mark.parametrize("backend", params("cpp", "cuda"), indirect=True)
def test_accumulate_conv_bad_inputs_raise_before_writing(backend):
    dev, OPS = backend.device, torch.ops.unsc_fast
    x = rand(1, 4, 5, 5, device=dev, gen=gen(2))
    S = random_sym((1, 36, 36), torch.float32, dev)
    S2 = random_sym((2, 18, 18), torch.float32, dev)
    cases = [
        (lambda: OPS.accumulate_conv_(S, x, [3, 3], [1, 1], [1, 1], [1, 1], 3, [5, 5]), "groups"),
        (lambda: OPS.accumulate_conv_(S, x, [3, 3], [1, 1], [1, 1], [1, 1], 2, [5, 5]), r"must be \(groups"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [0, 1], [1, 1], [1, 1], 2, [5, 5]), "stride"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [-1, 1], [1, 1], 2, [5, 5]), "padding"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [1, 1], [0, 1], 2, [5, 5]), "dilation"),
        (lambda: OPS.accumulate_conv_(S2, x, [3, 3], [1, 1], [0, 0], [3, 3], 2, [-1, -1]), "smaller than"),
        (lambda: OPS.accumulate_conv_(S2, x[0], [3, 3], [1, 1], [1, 1], [1, 1], 2, [5, 5]), "N, C, H, W"),
        (lambda: OPS.accumulate_conv_(S2, x.to(torch.int64), [3, 3], [1, 1], [1, 1], [1, 1], 2, [5, 5]),
         "x must be float16"),
        (lambda: OPS.accumulate_conv_(S2.to(torch.bfloat16), x, [3, 3], [1, 1], [1, 1], [1, 1],
                                      2, [5, 5]), "S must be float32"),
    ]
    for fn, match in cases:
        raises_and_unchanged(fn, [S, S2], match)


# --------------------------------------------------------------------------- triton

def _triton_conv(S, x, geom: ConvGeometry, split: int) -> None:
    torch.ops.unsc_fast_triton.accumulate_conv_(
        S, x, list(geom.kernel_size), list(geom.stride), list(geom.symmetric_padding),
        list(geom.dilation), geom.groups, list(geom.output_size(*x.shape[2:])), split, False)


@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_accumulate_conv_row_splits(backend, split):
    geom = ConvGeometry((3, 3), pad=(1, 1, 1, 1), groups=2)
    x = rand(2, 4, 7, 7, device=backend.device, gen=gen(11)).to(memory_format=torch.channels_last)
    S = torch.zeros(2, 18, 18, device=backend.device)
    _triton_conv(S, x, geom, split)
    assert upper_err(S, _expected(x, geom)) <= ACCUMULATE_TOL[torch.float32]


@pytest.mark.parametrize("major", [9, 8])
@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_gpu_tilings_in_interpreter(backend, major, monkeypatch):
    """Every Hopper/Ampere candidate tiling of the conv kernel gives the right answer."""
    if not backend.interpreted:
        pytest.skip("checks for the interpreter run")
    from unsc_fast.kernels.triton import accumulate_conv as tconv
    from unsc_fast.kernels.triton import common
    x = rand(2, 6, 9, 8, gen=gen(major)).to(memory_format=torch.channels_last)
    geom = ConvGeometry((3, 3), stride=(2, 1), pad=(1, 1, 1, 1), groups=2)
    expected = _expected(x, geom)
    for cfg in common.conv_configs_for(major):
        monkeypatch.setattr(tconv.accumulate_conv_kernel, "configs", [cfg])
        S = torch.zeros(2, 27, 27)
        _triton_conv(S, x, geom, 2)
        assert upper_err(S, expected) <= ACCUMULATE_TOL[torch.float32], cfg


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_output_size_comes_from_the_geometry(backend, monkeypatch):
    """The kernel takes (OH, OW) from ConvGeometry.output_size, the one home of the formula."""
    seen = []
    real = ConvGeometry.output_size
    monkeypatch.setattr(ConvGeometry, "output_size",
                        lambda self, h, w: seen.append((h, w)) or real(self, h, w))
    x = rand(1, 2, 6, 5, device=backend.device, gen=gen(3))
    geom = ConvGeometry((3, 3), stride=(2, 1), pad=(1, 1, 1, 1))
    S = torch.zeros(1, 18, 18, device=backend.device)
    _, fn = dispatch.resolve("accumulate_conv", S.device, (S, x, geom), "triton")
    seen.clear()
    fn(S, x, geom)
    assert seen == [(6, 5)]
    assert upper_err(S, _expected(x, geom)) <= ACCUMULATE_TOL[torch.float32]


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_triton_registration(backend):
    from unsc_fast.kernels.triton import backend as tb
    assert dispatch._registry[("accumulate_conv", "triton")].devices == tb.DEVICES
    assert hasattr(torch.ops.unsc_fast_triton, "accumulate_conv_")
    assert not hasattr(torch.ops.unsc_fast_triton, "syrk_conv_")  # one name per op


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_launches_under_the_tensors_device(backend, monkeypatch):
    from types import SimpleNamespace

    from unsc_fast.kernels.triton import accumulate_conv as tconv
    dev = torch.device("cuda", 1)
    t = SimpleNamespace(device=dev, shape=(1, 1, 5, 5))
    geom = ConvGeometry((3, 3))
    _, fn = dispatch.resolve("accumulate_conv", dev, (t, t, geom), "triton")
    assert launch_events(monkeypatch, tconv, "accumulate_conv_", lambda: fn(t, t, geom)) == [
        ("enter", dev), "accumulate_conv_", ("exit", dev)]


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_opcheck_triton(backend):
    x = rand(2, 4, 6, 6, device=backend.device, gen=gen(2))
    torch.library.opcheck(torch.ops.unsc_fast_triton.accumulate_conv_.default,
                          (torch.zeros(2, 18, 18, device=backend.device), x, [3, 3], [1, 1],
                           [1, 1], [1, 1], 2, [6, 6], 0, False), test_utils=("test_schema",))


_TRACE_SCRIPT = """
import torch
from torch._dynamo.backends.common import aot_autograd
from unsc_fast.kernels.triton import accumulate_conv
graphs = []

def fw(gm, inputs):
    graphs.append(gm.code)
    def run(*args):
        raise SystemExit(0)  # no GPU: stop before anything launches
    return run

@torch.compile(backend=aot_autograd(fw_compiler=fw), fullgraph=True)
def step(S, x):
    torch.ops.unsc_fast_triton.accumulate_conv_(S, x, [3, 3], [1, 1], [1, 1], [1, 1], 2, [6, 6],
                                                0, False)
    return S.sum()

try:
    step(torch.zeros(2, 18, 18), torch.randn(2, 4, 6, 6))
except SystemExit:
    pass
print(graphs[0])
"""


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_compile_traces_the_kernel(backend):
    """torch.compile(fullgraph=True) sees the conv kernel itself (triton_op); traced in a fresh
    process without the interpreter, never run."""
    if not backend.interpreted:
        pytest.skip("checks for the interpreter run")
    out = run_in_fresh_process(_TRACE_SCRIPT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("triton_kernel_wrapper_functional(") == 1, out.stdout
    assert "'S_ptr'" in out.stdout and "'x_ptr'" in out.stdout


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from unsc_fast.kernels.triton import accumulate_conv, common

args = ["M", "d", "Cg", "H", "W", "OHW", "OW", "sxn", "sxc", "sxh", "sxw", "KHW", "KW",
        "conv_sh", "conv_sw", "pad_h", "pad_w", "dil_h", "dil_w", "m_bucket"]
for cc in (90, 80):
    c = common.conv_configs_for(cc // 10)[0]
    consts = dict(COMPUTE=common.KEEP, DOT_PRECISION="tf32", **c.kwargs)
    sig = dict({"S_ptr": "*fp32", "x_ptr": "*fp16"}, **{a: "i32" for a in args})
    sig.update({k: "constexpr" for k in consts})
    triton.compile(ASTSource(accumulate_conv.accumulate_conv_kernel.fn, sig, consts),
                   target=GPUTarget("cuda", cc, 32),
                   options=dict(num_warps=c.num_warps, num_stages=c.num_stages))
print("compiled")
"""


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_kernel_compiles_for_hopper_and_ampere(backend):
    """The conv kernel (fp16 -> fp32 S) compiles to cubin for sm_90 and sm_80."""
    if not backend.interpreted:
        pytest.skip("checks for the interpreter run")
    out = run_in_fresh_process(_COMPILE_SCRIPT)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------------- grid limits

def test_more_groups_than_a_grid_holds_are_sliced(backend, monkeypatch):
    """Past MAX_GROUPS_PER_CALL groups (GPU grids hold 65535 along y/z) the contract hands the
    backend slices of S and x; the result is the same as one call (limit lowered to 2 so the
    case is small: 5 groups -> slices of 2, 2, 1)."""
    monkeypatch.setattr(ops, "MAX_GROUPS_PER_CALL", 2)
    geom = ConvGeometry((3, 3), stride=(2, 1), pad=(1, 1, 1, 1), groups=5)
    x = non_contiguous(rand(2, 10, 6, 7, device=backend.device, gen=gen(5)))
    S = torch.zeros(5, 18, 18, device=backend.device)
    seen = []
    _, fn = dispatch.resolve("accumulate_conv", S.device, (S, x, geom), backend.name)
    monkeypatch.setattr(dispatch, "resolve",
                        lambda *a, **k: (None, lambda S_, x_, g_: (seen.append(g_.groups),
                                                                    fn(S_, x_, g_))))
    ops.accumulate_conv_(S, x, geom, backend=backend.name)
    assert seen == [2, 2, 1]
    assert upper_err(S, _expected(x, geom)) <= accumulate_tol(backend, S.dtype, x.dtype)


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_triton_refuses_a_grid_it_cannot_launch(backend):
    from unsc_fast.kernels.triton import accumulate_conv as tconv
    from unsc_fast.kernels.triton.common import MAX_GRID_YZ, num_splits
    g = MAX_GRID_YZ + 1
    x = torch.zeros(1, g, 1, 1, device=backend.device)
    S = torch.zeros(g, 1, 1, device=backend.device)
    with pytest.raises(ValueError, match="grid limit"):
        tconv.accumulate_conv_(S, x, [1, 1], [1, 1], [0, 0], [1, 1], g, [1, 1], 0, False)
    assert num_splits(10 ** 6, 10 ** 9, 1, 16, 132) == MAX_GRID_YZ
