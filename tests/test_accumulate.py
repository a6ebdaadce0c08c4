"""``accumulate_`` (``S += XᵀX``, upper triangle) on every backend against float64.

The contract once for all backends (reference, cpp, cuda, triton: the ``backend`` fixture),
then what only one backend has (thread strategies of cpp, row splits / tilings / compile
checks of Triton, the compiled op's own checks). Tolerances: tests/kernel_helpers.py.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases import DENSE_SHAPES, IN_DTYPES, non_contiguous, rand
from kernel_helpers import (
    ACCUMULATE_TOL, TF32_TOL, accumulate_tol, gen, ids, launch_events, params, raw,
    raises_and_unchanged, random_sym, run_in_fresh_process, upper_err,
)
from unsc_fast import dispatch, ops

S_DTYPES = [torch.float32, torch.float64]


def _layouts(X: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"contiguous": X, "strided": non_contiguous(X), "column_major": X.mT.contiguous().mT}


# --------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("x_dtype", IN_DTYPES, ids=ids(IN_DTYPES))
@pytest.mark.parametrize("n,d", DENSE_SHAPES)
def test_accumulate(backend, n, d, x_dtype):
    """Every shared shape, input dtype, fp32/fp64 S and layout; S starts non-zero."""
    X = rand(n, d, dtype=x_dtype, device=backend.device, gen=gen(n * 1000 + d))
    for s_dtype in S_DTYPES:
        S0 = random_sym((d, d), s_dtype, backend.device)
        Xs = X.cpu().to(s_dtype).double()
        expected = S0.cpu().double() + Xs.mT @ Xs
        for layout, Xl in _layouts(X).items():
            S = S0.clone()
            out = ops.accumulate_(S, Xl, backend=backend.name)
            assert out is S
            err = upper_err(S, expected)
            assert err <= accumulate_tol(backend, s_dtype, x_dtype), (s_dtype, layout, err)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), d=st.integers(1, 40), x_dtype=st.sampled_from(IN_DTYPES),
       s_dtype=st.sampled_from(S_DTYPES), seed=st.integers(0, 2 ** 16))
def test_accumulate_random_shapes(backend, n, d, x_dtype, s_dtype, seed):
    """Property: on random shapes, twice in a row, S gains exactly 2·XᵀX (upper triangle)."""
    X = rand(n, d, dtype=x_dtype, device=backend.device, gen=gen(seed))
    S = torch.zeros(d, d, dtype=s_dtype, device=backend.device)
    ops.accumulate_(S, X, backend=backend.name)
    ops.accumulate_(S, X, backend=backend.name)
    Xs = X.cpu().to(s_dtype).double()
    assert upper_err(S, 2 * Xs.mT @ Xs) <= accumulate_tol(backend, s_dtype, x_dtype)


def test_accumulate_zero_rows_is_noop(backend):
    """The kernel itself (not only ops) leaves S alone for n = 0."""
    S = random_sym((5, 5), torch.float32, backend.device)
    S0 = S.clone()
    raw(backend, "accumulate")(S, torch.empty(0, 5, device=backend.device))
    assert torch.equal(S, S0)


def test_accumulate_leaves_other_memory_alone(backend):
    """A (d, d) S inside a larger buffer: nothing outside it is written."""
    X = rand(40, 20, device=backend.device, gen=gen(3))
    buf = torch.full((20 * 20 + 64,), 7.0, device=backend.device)
    S = buf[32:32 + 400].view(20, 20).zero_()
    ops.accumulate_(S, X, backend=backend.name)
    assert torch.all(buf[:32] == 7) and torch.all(buf[432:] == 7)
    assert upper_err(S, X.double().mT @ X.double()) <= ACCUMULATE_TOL[torch.float32]


@pytest.mark.parametrize("backend", params("cuda", "triton"), indirect=True)
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=ids([torch.bfloat16, torch.float16, torch.float32]))
def test_accumulate_large_on_gpu(backend, x_dtype):
    """GPU sizes: many tiles, row splits and launches; accumulation across two calls."""
    if backend.device != "cuda":
        pytest.skip("needs a CUDA device (interpreter run)")
    for n, d in [(5000, 300), (70, 1000), (8192, 1000)]:
        X = rand(n, d, dtype=x_dtype, device="cuda", gen=gen(0))
        S = torch.zeros(d, d, device="cuda")
        ops.accumulate_(S, X, backend=backend.name)
        ops.accumulate_(S, X[:3001], backend=backend.name)
        Xd = X.double()
        expected = Xd.mT @ Xd + Xd[:3001].mT @ Xd[:3001]
        assert upper_err(S, expected) <= accumulate_tol(backend, S.dtype, x_dtype), (n, d)


# --------------------------------------------------------------------------- cpp / cuda

@pytest.mark.parametrize("backend", params("cuda"), indirect=True)
def test_cuda_backend_available(backend):
    state = dispatch.availability()["cuda"]
    assert state == "available", state


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=ids([torch.float32, torch.bfloat16, torch.float64]))
@pytest.mark.parametrize("n,d", [(700, 300), (6000, 40)])
@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["threads1", "threads2"])
@pytest.mark.parametrize("backend", params("cpp"), indirect=True)
def test_accumulate_many_tiles_and_chunks(backend, threads, n, d, x_dtype):
    """cpp: both threaded strategies: d > 256 (several blocks of S, threads owning row ranges)
    and small d with many row chunks (private accumulators); in inference mode, so the worker
    threads must see the caller's thread-local state."""
    X = rand(n, d, dtype=x_dtype, gen=gen(3))
    s_dtype = torch.float64 if x_dtype == torch.float64 else torch.float32
    expected = X.double().mT @ X.double()
    for Xl in (X, non_contiguous(X)):
        with torch.inference_mode():
            S = torch.zeros(d, d, dtype=s_dtype)
            raw(backend, "accumulate")(S, Xl)
        assert upper_err(S, expected) <= ACCUMULATE_TOL[s_dtype]


@pytest.mark.parametrize("backend", params("cpp", "cuda"), indirect=True)
def test_opcheck_accumulate(backend):
    S = torch.zeros(6, 6, device=backend.device)
    X = rand(5, 6, device=backend.device, gen=gen(1))
    op = torch.ops.unsc_fast.accumulate_.default
    torch.library.opcheck(op, (S, X))
    torch.library.opcheck(op, (S.double(), non_contiguous(X).half()))


@pytest.mark.parametrize("backend", params("cpp", "cuda"), indirect=True)
def test_torch_compile_fullgraph(backend):
    """The op traces (fake implementation, functionalised in-place update): aot_eager on the
    CPU, Inductor on CUDA."""
    def step(S, X):
        torch.ops.unsc_fast.accumulate_(S, X)
        return S.sum()

    dev = backend.device
    S, X = torch.zeros(5, 5, device=dev), rand(7, 5, device=dev, gen=gen(4))
    S2 = S.clone()
    kwargs = {"backend": "aot_eager"} if dev == "cpu" else {}
    out = torch.compile(step, fullgraph=True, **kwargs)(S, X)
    expected = step(S2, X)
    torch.testing.assert_close(torch.triu(S), torch.triu(S2))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", params("cpp", "cuda"), indirect=True)
def test_accumulate_bad_inputs_raise_before_writing(backend):
    dev, OPS = backend.device, torch.ops.unsc_fast
    S = random_sym((4, 4), torch.float32, dev)
    X = rand(3, 4, device=dev, gen=gen(1))
    cases = [
        (lambda: OPS.accumulate_(S, rand(3, 5, device=dev)), "must be \\(n, 4\\)"),
        (lambda: OPS.accumulate_(S, X.to(torch.int32)), "X must be float16"),
        (lambda: OPS.accumulate_(S.to(torch.float16), X), "S must be float32 or float64"),
        (lambda: OPS.accumulate_(S[:, :3], X[:, :3]), "square"),
        (lambda: OPS.accumulate_(torch.zeros(3, 6, device=dev)[:, ::2], X[:, :3]),
         "contiguous"),
        (lambda: OPS.accumulate_(S, X.view(3, 4, 1)), "must be \\(n, 4\\)"),
    ]
    for fn, match in cases:
        raises_and_unchanged(fn, [S], match)


@pytest.mark.parametrize("backend", params("cuda"), indirect=True)
def test_mixed_devices_raise_before_writing(backend):
    S = random_sym((4, 4), torch.float32, "cuda")
    X = rand(3, 4, device="cuda", gen=gen(1))
    raises_and_unchanged(lambda: torch.ops.unsc_fast.accumulate_(S, X.cpu()), [S], "but X is on")


# --------------------------------------------------------------------------- triton

@pytest.mark.parametrize("split", [1, 2, 3, 50])
@pytest.mark.parametrize("n,d", [(200, 64), (129, 31), (5, 17)])
@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_accumulate_row_splits(backend, n, d, split):
    """Forced row splits: one program per S tile (plain update) or several (atomics)."""
    X = rand(n, d, device=backend.device, gen=gen(split))
    S = torch.zeros(d, d, device=backend.device)
    torch.ops.unsc_fast_triton.accumulate_(S, X, split, False)
    torch.ops.unsc_fast_triton.accumulate_(S, X, split, False)  # accumulation across calls
    assert upper_err(S, 2 * X.double().mT @ X.double()) <= ACCUMULATE_TOL[torch.float32]


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_tf32_follows_torch_setting(backend):
    """fp32 operands use TF32 exactly when torch.matmul would; results stay within TF32 tol."""
    from unsc_fast.kernels.triton import common
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert common.allow_tf32() and common.dot_precision(common.TO_FP32, True) == "tf32"
        X = rand(70, 40, device=backend.device, gen=gen(9))
        S = torch.zeros(40, 40, device=backend.device)
        ops.accumulate_(S, X, backend="triton")
        assert upper_err(S, X.double().mT @ X.double()) <= TF32_TOL
    finally:
        torch.set_float32_matmul_precision(old)
    assert common.dot_precision(common.TO_FP32, False) == "ieee"
    assert common.dot_precision(common.KEEP, False) == "tf32"  # Triton's default for 16-bit


@pytest.mark.parametrize("major", [9, 8])
@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_gpu_tilings_in_interpreter(backend, major, monkeypatch):
    """Every Hopper/Ampere candidate tiling gives the right answer (masks, block edges)."""
    if not backend.interpreted:
        pytest.skip("checks for the interpreter run")
    from unsc_fast.kernels.triton import accumulate as tacc
    from unsc_fast.kernels.triton import common
    X = rand(150, 70, gen=gen(major))
    expected = X.double().mT @ X.double()
    for cfg in common.configs_for(major):
        monkeypatch.setattr(tacc.accumulate_kernel, "configs", [cfg])
        for split in (1, 2):
            S = torch.zeros(70, 70)
            torch.ops.unsc_fast_triton.accumulate_(S, X, split, False)
            assert upper_err(S, expected) <= ACCUMULATE_TOL[torch.float32], (cfg, split)


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_triton_registration(backend):
    from unsc_fast.kernels.triton import backend as tb
    assert dispatch._registry[("accumulate", "triton")].devices == tb.DEVICES
    assert tb.DEVICES == (("cuda", "cpu") if backend.interpreted else ("cuda",))
    assert hasattr(torch.ops.unsc_fast_triton, "accumulate_")
    assert not hasattr(torch.ops.unsc_fast_triton, "syrk_")  # one name per op


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_launches_under_the_tensors_device(backend, monkeypatch):
    from types import SimpleNamespace

    from unsc_fast.kernels.triton import accumulate as tacc
    dev = torch.device("cuda", 1)
    t = SimpleNamespace(device=dev)
    _, fn = dispatch.resolve("accumulate", dev, (t, t), "triton")
    assert launch_events(monkeypatch, tacc, "accumulate_", lambda: fn(t, t)) == [
        ("enter", dev), "accumulate_", ("exit", dev)]
    cpu = SimpleNamespace(device=torch.device("cpu"))
    assert launch_events(monkeypatch, tacc, "accumulate_", lambda: fn(cpu, cpu)) == [
        "accumulate_"]


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_opcheck_triton(backend):
    """The schema declares exactly what is mutated (the fake implementation is the op's body,
    traced: checked by test_compile_traces_the_kernel)."""
    X = rand(30, 12, device=backend.device, gen=gen(1))
    torch.library.opcheck(torch.ops.unsc_fast_triton.accumulate_.default,
                          (torch.zeros(12, 12, device=backend.device), X, 0, False),
                          test_utils=("test_schema",))


_TRACE_SCRIPT = """
import torch
from torch._dynamo.backends.common import aot_autograd
from unsc_fast.kernels.triton import accumulate
graphs = []

def fw(gm, inputs):
    graphs.append(gm.code)
    def run(*args):
        raise SystemExit(0)  # no GPU: stop before anything launches
    return run

@torch.compile(backend=aot_autograd(fw_compiler=fw), fullgraph=True)
def step(S, X):
    torch.ops.unsc_fast_triton.accumulate_(S, X, 0, False)
    return S.sum()

try:
    step(torch.zeros(20, 20), torch.randn(50, 20))
except SystemExit:
    pass
print(graphs[0])
"""


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_compile_traces_the_kernel(backend):
    """torch.compile(fullgraph=True) sees the kernel itself (triton_op). Traced in a fresh
    process without the interpreter; the compiled graph is never run."""
    if not backend.interpreted:
        pytest.skip("checks for the interpreter run (test_gpu_torch_compile on a GPU)")
    out = run_in_fresh_process(_TRACE_SCRIPT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("triton_kernel_wrapper_functional(") == 1, out.stdout
    assert "'S_ptr'" in out.stdout and "'X_ptr'" in out.stdout


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from unsc_fast.kernels.triton import accumulate, common

for cc in (90, 80):
    c = common.configs_for(cc // 10)[0]
    for s_ty, x_ty, comp in (("fp32", "bf16", common.KEEP), ("fp64", "fp32", common.TO_FP64)):
        consts = dict(COMPUTE=comp, DOT_PRECISION=common.dot_precision(comp, False), **c.kwargs)
        sig = {"S_ptr": "*" + s_ty, "X_ptr": "*" + x_ty, "n": "i32", "d": "i32",
               "stride_xn": "i32", "stride_xd": "i32", "n_bucket": "i32"}
        sig.update({k: "constexpr" for k in consts})
        triton.compile(ASTSource(accumulate.accumulate_kernel.fn, sig, consts),
                       target=GPUTarget("cuda", cc, 32),
                       options=dict(num_warps=c.num_warps, num_stages=c.num_stages))
print("compiled")
"""


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_kernel_compiles_for_hopper_and_ampere(backend):
    """Without a GPU the interpreter never compiles: compile to cubin for sm_90 and sm_80
    (bf16 -> fp32 S, fp32 -> fp64 S) in a fresh process without the interpreter."""
    if not backend.interpreted:
        pytest.skip("checks for the interpreter run")
    out = run_in_fresh_process(_COMPILE_SCRIPT)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_gpu_torch_compile(backend):
    """The op inside a compiled function on a GPU: no graph break, same results."""
    if backend.device != "cuda":
        pytest.skip("needs a CUDA device (interpreter run)")
    X = rand(300, 96, device="cuda", gen=gen(2))

    @torch.compile(fullgraph=True)
    def step(S, X):
        torch.ops.unsc_fast_triton.accumulate_(S, X, 0, False)

    S = torch.zeros(96, 96, device="cuda")
    step(S, X)
    assert upper_err(S, X.double().mT @ X.double()) <= ACCUMULATE_TOL[torch.float32]

