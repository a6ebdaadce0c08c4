"""The Triton backend against the float64 reference, on the shared cases of tests/cases.py.

Without a GPU these run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, set by
conftest.py, and here too in case this file is run alone), which is slow: the cases are the
small shared ones, plus two checks in fresh processes without the interpreter: the kernels
compile to sm_90/sm_80 cubin, and torch.compile traces them. On a CUDA device the same tests
run on the GPU, plus larger shapes (``test_gpu_*``) that cross many tiles and exercise
autotuning and torch.compile with Inductor.

Tolerances: relative Frobenius error against float64 on the same rounded inputs.
* accumulate: REL_TOL of S's dtype (fp16/bf16 products are exact in fp32), REL_TOL_TF32 for
  fp32 inputs when torch allows TF32 matmuls (``set_float32_matmul_precision``).
* project: measured against ‖G‖ (the output is ~0 when a full basis is removed); fp64 1e-12,
  fp32 1e-5 (TF32: REL_TOL_TF32), fp16/bf16 8 units of roundoff of the dtype (the output is
  stored in that dtype and T is rounded to it before the second product).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from cases import (  # noqa: E402
    CONV_CASES, DENSE_SHAPES, IN_DTYPES, PROJECT_SHAPES, REL_TOL, REL_TOL_TF32,
    non_contiguous, orthonormal, rand, rel_err,
)
from unsc_fast import dispatch, ops  # noqa: E402
from unsc_fast import reference as ref  # noqa: E402
from unsc_fast.geometry import ConvGeometry  # noqa: E402

_STATE = dispatch.availability()["triton"]
if _STATE != "available":
    pytest.skip(f"triton backend unavailable: {_STATE}", allow_module_level=True)

from unsc_fast.kernels import triton_accumulate as tacc  # noqa: E402
from unsc_fast.kernels import triton_project as tproj  # noqa: E402

INTERPRET = tacc.INTERPRET
DEVICE = "cpu" if INTERPRET else "cuda"
gpu_only = pytest.mark.skipif(INTERPRET, reason="needs a CUDA device (interpreter run)")
interpreter_only = pytest.mark.skipif(not INTERPRET, reason="checks for the interpreter run")

PROJECT_TOL = {torch.float64: 1e-12, torch.float32: 1e-5,
               torch.float16: 8 * 2.0 ** -11, torch.bfloat16: 8 * 2.0 ** -8}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _acc_tol(s_dtype: torch.dtype, x_dtype: torch.dtype) -> float:
    if s_dtype == torch.float32 and x_dtype == torch.float32 and tacc.allow_tf32():
        return REL_TOL_TF32
    return REL_TOL[s_dtype]


def _proj_tol(dtype: torch.dtype) -> float:
    if dtype == torch.float32 and tacc.allow_tf32():
        return REL_TOL_TF32
    return PROJECT_TOL[dtype]


def _upper_err(S: torch.Tensor, expected: torch.Tensor) -> float:
    """Error on the upper triangles only: the lower one is undefined after a fast kernel."""
    return rel_err(torch.triu(S), torch.triu(expected))


def _proj_err(out: torch.Tensor, expected: torch.Tensor, G0: torch.Tensor) -> float:
    scale = max(expected.double().norm().item(), G0.double().norm().item(), 1e-300)
    return (out.double() - expected.double()).norm().item() / scale


# --------------------------------------------------------------------------- accumulate

def _layouts(X: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"contiguous": X, "strided": non_contiguous(X), "column_major": X.mT.contiguous().mT}


@pytest.mark.parametrize("s_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_dtype", IN_DTYPES)
@pytest.mark.parametrize("n,d", DENSE_SHAPES)
def test_accumulate_dense(n, d, x_dtype, s_dtype):
    gen = _gen(n * 1000 + d)
    X = rand(n, d, dtype=x_dtype, device=DEVICE, gen=gen)
    S0 = rand(d, d, dtype=s_dtype, device=DEVICE, gen=gen)  # accumulates into existing values
    expected = S0.double() + X.to(s_dtype).double().mT @ X.to(s_dtype).double()
    for name, Xl in _layouts(X).items():
        S = S0.clone()
        ops.accumulate_(S, Xl, backend="triton")
        err = _upper_err(S, expected)
        assert err <= _acc_tol(s_dtype, x_dtype), (name, err)


@pytest.mark.parametrize("split", [1, 2, 3, 50])
@pytest.mark.parametrize("n,d", [(200, 64), (129, 31), (5, 17)])
def test_accumulate_row_splits(n, d, split):
    """Forced row splits: one program per S tile (plain update) or several (atomics)."""
    gen = _gen(split)
    X = rand(n, d, device=DEVICE, gen=gen)
    S = torch.zeros(d, d, device=DEVICE)
    tacc.syrk_(S, X, split, False)
    tacc.syrk_(S, X, split, False)  # twice: accumulation across calls
    assert _upper_err(S, 2 * X.double().mT @ X.double()) <= REL_TOL[torch.float32]


def test_tf32_follows_torch_setting():
    """fp32 operands use TF32 exactly when torch.matmul would; results stay within TF32 tol."""
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert tacc.allow_tf32() and tacc.dot_precision(tacc.TO_FP32, True) == "tf32"
        X = rand(70, 40, device=DEVICE, gen=_gen(9))
        S = torch.zeros(40, 40, device=DEVICE)
        ops.accumulate_(S, X, backend="triton")
        assert _upper_err(S, X.double().mT @ X.double()) <= REL_TOL_TF32
        G = rand(10, 40, device=DEVICE, gen=_gen(10))
        B = orthonormal(40, 7, dtype=torch.float32, device=DEVICE, gen=_gen(11))
        G0 = G.clone()
        ops.project_grads_([G], [B], [True], backend="triton")
        assert _proj_err(G, ref.project(G0.double(), B.double(), True), G0) <= REL_TOL_TF32
    finally:
        torch.set_float32_matmul_precision(old)
    assert tacc.dot_precision(tacc.TO_FP32, False) == "ieee"
    assert tacc.dot_precision(tacc.KEEP, False) == "tf32"  # Triton's default for 16-bit


def test_accumulate_leaves_other_memory_alone():
    """A (d, d) S inside a larger buffer: nothing outside it is written."""
    X = rand(40, 20, device=DEVICE, gen=_gen(3))
    buf = torch.full((20 * 20 + 64,), 7.0, device=DEVICE)
    S = buf[32:32 + 400].view(20, 20).zero_()
    ops.accumulate_(S, X, backend="triton")
    assert torch.all(buf[:32] == 7) and torch.all(buf[432:] == 7)
    assert _upper_err(S, X.double().mT @ X.double()) <= REL_TOL[torch.float32]


# --------------------------------------------------------------------------- conv

def _conv_inputs(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"nchw": x, "channels_last": x.to(memory_format=torch.channels_last),
            "strided": non_contiguous(x)}


@pytest.mark.parametrize("s_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_dtype", IN_DTYPES)
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_accumulate_conv(case, x_dtype, s_dtype):
    N, C, H, W, geom = CONV_CASES[case]
    assert geom.symmetric_padding is not None
    gen = _gen(case)
    x = rand(N, C, H, W, dtype=x_dtype, device=DEVICE, gen=gen)
    d = geom.patch_dim(C)
    S0 = rand(geom.groups, d, d, dtype=s_dtype, device=DEVICE, gen=gen)
    expected = ref.accumulate_conv_(S0.double().clone(), x.to(s_dtype).double(), geom)
    for name, xl in _conv_inputs(x).items():
        S = S0.clone()
        ops.accumulate_conv_(S, xl, geom, backend="triton")
        err = _upper_err(S, expected)
        assert err <= _acc_tol(s_dtype, x_dtype), (name, err)


@pytest.mark.parametrize("split", [1, 3])
def test_accumulate_conv_row_splits(split):
    N, C, H, W, geom = 2, 4, 7, 7, ConvGeometry((3, 3), pad=(1, 1, 1, 1), groups=2)
    x = rand(N, C, H, W, device=DEVICE, gen=_gen(11)).to(memory_format=torch.channels_last)
    S = torch.zeros(2, 18, 18, device=DEVICE)
    tacc.syrk_conv_(S, x, [3, 3], [1, 1], [1, 1], [1, 1], 2, split, False)
    expected = ref.accumulate_conv_(torch.zeros(2, 18, 18, dtype=torch.float64),
                                    x.double().cpu(), geom)
    assert _upper_err(S.cpu(), expected) <= REL_TOL[torch.float32]


@pytest.mark.parametrize("geom", [
    ConvGeometry((2, 2), pad=(0, 1, 0, 1)),                       # padding="same", even kernel
    ConvGeometry((3, 3), pad=(1, 1, 1, 1), padding_mode="reflect"),
])
def test_accumulate_conv_declines_other_padding(geom):
    x = rand(1, 2, 5, 5, device=DEVICE, gen=_gen(0))
    d = geom.patch_dim(2)
    S = torch.zeros(1, d, d, device=DEVICE)
    with pytest.raises(RuntimeError, match="does not support"):
        ops.accumulate_conv_(S, x, geom, backend="triton")
    assert torch.all(S == 0)
    if DEVICE == "cuda":  # auto moves on to another backend instead
        ops.accumulate_conv_(S, x, geom)


# --------------------------------------------------------------------------- project

@pytest.mark.parametrize("dtype", IN_DTYPES)
@pytest.mark.parametrize("rows,d,m", PROJECT_SHAPES)
def test_project_cases(rows, d, m, dtype):
    """Every shared shape, both modes, contiguous and strided G, in one grouped call."""
    gen = _gen(rows * 100 + d * 10 + m)
    B = orthonormal(d, m, dtype=dtype, device=DEVICE, gen=gen)
    grads, originals, modes = [], [], []
    for subtract in (True, False):
        for strided in (False, True):
            G = rand(rows, d, dtype=dtype, device=DEVICE, gen=gen)
            G = non_contiguous(G) if strided else G
            grads.append(G)
            originals.append(G.clone())
            modes.append(subtract)
    ops.project_grads_(grads, [B] * len(grads), modes, backend="triton")
    for G, G0, subtract in zip(grads, originals, modes):
        expected = ref.project(G0.double(), B.double(), subtract)
        err = _proj_err(G, expected, G0)
        assert err <= _proj_tol(dtype), (subtract, G.stride(), err)


# Tilings that force d and m across several blocks: the on-chip path with several d chunks,
# and the workspace path (m > BLOCK_R) with several m chunks.
FORCED = [tproj.ProjectConfig(16, 16, 64, 4, 1), tproj.ProjectConfig(16, 16, 16, 4, 1)]


@pytest.mark.parametrize("cfg", FORCED, ids=["onchip", "workspace"])
@pytest.mark.parametrize("dtype", IN_DTYPES)
def test_project_grouped_layers(dtype, cfg):
    """Many layers in one launch: row-block views of one gradient (a fused qkv-like weight),
    a column-strided view, a transposed-layout G, ranks 0, 1, d-1 and d, both modes."""
    gen = _gen(7)
    big = rand(50, 40, dtype=dtype, device=DEVICE, gen=gen)
    wide = rand(9, 70, dtype=dtype, device=DEVICE, gen=gen)
    colmajor = rand(33, 17, dtype=dtype, device=DEVICE, gen=gen).mT.contiguous().mT
    layers = [
        (big[0:20], 40, 39, True), (big[20:37], 40, 40, False), (big[37:50], 40, 1, True),
        (wide[:, ::2], 35, 12, True), (wide[:, 1::2], 35, 0, False),
        (colmajor, 17, 5, False), (rand(3, 20, dtype=dtype, device=DEVICE, gen=gen), 20, 0, True),
        (rand(1, 1, dtype=dtype, device=DEVICE, gen=gen), 1, 1, True),
    ]
    grads = [G for G, _, _, _ in layers]
    bases = [orthonormal(d, m, dtype=dtype, device=DEVICE, gen=gen) for _, d, m, _ in layers]
    modes = [s for _, _, _, s in layers]
    originals = [G.clone() for G in grads]
    tproj.project_grouped(grads, bases, modes, config=cfg)
    for i, (G, G0, B, s) in enumerate(zip(grads, originals, bases, modes)):
        err = _proj_err(G, ref.project(G0.double(), B.double(), s), G0)
        assert err <= _proj_tol(dtype), (i, err)


def test_project_mixed_dtypes_and_empty():
    """One call with fp32 and fp16 layers (one launch each), an empty G, m = 0 null mode."""
    gen = _gen(5)
    G32 = rand(12, 20, device=DEVICE, gen=gen)
    G16 = rand(7, 9, dtype=torch.float16, device=DEVICE, gen=gen)
    Gnull = rand(4, 6, device=DEVICE, gen=gen)
    Gempty = rand(0, 8, device=DEVICE, gen=gen)
    B32 = orthonormal(20, 3, device=DEVICE, gen=gen, dtype=torch.float32)
    B16 = orthonormal(9, 4, device=DEVICE, gen=gen, dtype=torch.float16)
    B0 = torch.empty(6, 0, device=DEVICE)
    B8 = orthonormal(8, 2, device=DEVICE, gen=gen, dtype=torch.float32)
    originals = [G32.clone(), G16.clone()]
    ops.project_grads_([G32, G16, Gnull, Gempty], [B32, B16, B0, B8], [True, False, False, True],
                 backend="triton")
    assert _proj_err(G32, ref.project(originals[0].double(), B32.double(), True),
                     originals[0]) <= _proj_tol(torch.float32)
    assert _proj_err(G16, ref.project(originals[1].double(), B16.double(), False),
                     originals[1]) <= _proj_tol(torch.float16)
    assert torch.all(Gnull == 0)


def test_project_autotune_uses_scratch(monkeypatch):
    """The tuner times every candidate on clones (the op is in place) and caches the best."""
    cands = [tproj.ProjectConfig(16, 16, 16, 4, 1), tproj.ProjectConfig(16, 32, 64, 4, 1),
             tproj.ProjectConfig(32, 16, 32, 4, 1)]
    monkeypatch.setattr(tproj, "candidates_for", lambda dtype, major: cands)
    monkeypatch.setattr(tproj, "_TUNED", {})
    monkeypatch.setattr(tproj, "AUTOTUNE", True)
    times = iter([3.0, 1.0, 2.0])
    seen = []

    def fake_bench(fn):
        fn()
        seen.append(1)
        return next(times)

    G = rand(20, 24, device=DEVICE, gen=_gen(1))
    B = orthonormal(24, 5, dtype=torch.float32, device=DEVICE, gen=_gen(2))
    G0 = G.clone()
    best = tproj._pick_config([G], [B], [True], False, bench=fake_bench)
    assert best == cands[1] and len(seen) == 3
    assert torch.equal(G, G0)  # the candidates ran on scratch copies
    assert tproj._pick_config([G], [B], [True], False, bench=None) == cands[1]  # cached


# --------------------------------------------------------------------------- tilings

@interpreter_only
@pytest.mark.parametrize("major", [9, 8])
def test_gpu_tilings_in_interpreter(major, monkeypatch):
    """Every Hopper/Ampere candidate tiling gives the right answer (masks, block edges)."""
    gen = _gen(major)
    X = rand(150, 70, device=DEVICE, gen=gen)
    expected = X.double().mT @ X.double()
    for cfg in tacc.configs_for(major):
        monkeypatch.setattr(tacc.syrk_dense_kernel, "configs", [cfg])
        for split in (1, 2):
            S = torch.zeros(70, 70, device=DEVICE)
            tacc.syrk_(S, X, split, False)
            assert _upper_err(S, expected) <= REL_TOL[torch.float32], (cfg, split)
    x = rand(2, 6, 9, 8, device=DEVICE, gen=gen).to(memory_format=torch.channels_last)
    geom = ConvGeometry((3, 3), stride=(2, 1), pad=(1, 1, 1, 1), groups=2)
    expected = ref.accumulate_conv_(torch.zeros(2, 27, 27, dtype=torch.float64), x.double(),
                                    geom)
    for cfg in tacc.conv_configs_for(major):
        monkeypatch.setattr(tacc.syrk_conv_kernel, "configs", [cfg])
        S = torch.zeros(2, 27, 27, device=DEVICE)
        tacc.syrk_conv_(S, x, [3, 3], [2, 1], [1, 1], [1, 1], 2, 2, False)
        assert _upper_err(S, expected) <= REL_TOL[torch.float32], cfg
    for dtype in (torch.float16, torch.float32, torch.float64):
        G = rand(70, 150, dtype=dtype, device=DEVICE, gen=gen)
        B = orthonormal(150, 90, dtype=dtype, device=DEVICE, gen=gen)
        for cfg in tproj.candidates_for(dtype, major):
            out = G.clone()
            tproj.project_grouped([out], [B], [True], config=cfg)
            err = _proj_err(out, ref.project(G.double(), B.double(), True), G)
            assert err <= _proj_tol(dtype), (cfg, err)


# --------------------------------------------------------------------------- registration

def test_registered_devices():
    expected = ("cuda", "cpu") if INTERPRET else ("cuda",)
    for op in dispatch.OPS:
        assert dispatch._registry[(op, "triton")].devices == expected
    assert hasattr(torch.ops.unsc_fast_triton, "syrk_")
    assert hasattr(torch.ops.unsc_fast_triton, "syrk_conv_")
    assert hasattr(torch.ops.unsc_fast_triton, "project_")


def test_launches_under_the_tensors_device(monkeypatch):
    """Triton launches on the *current* GPU: each wrapper makes the tensors' GPU current first
    (checked with stand-ins, so that it runs without a second GPU)."""
    import contextlib
    from types import SimpleNamespace

    from unsc_fast.kernels import triton as tb

    events = []

    @contextlib.contextmanager
    def fake_device(dev):
        events.append(("enter", dev))
        yield
        events.append(("exit", dev))

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    record = (lambda name: lambda *a: events.append(name))  # noqa: E731
    monkeypatch.setattr(tb._acc, "syrk_", record("syrk_"))
    monkeypatch.setattr(tb._acc, "syrk_conv_", record("syrk_conv_"))
    monkeypatch.setattr(tb._proj, "project_", record("project_"))
    dev = torch.device("cuda", 1)
    t = SimpleNamespace(device=dev)
    tb.accumulate(t, t)
    tb.accumulate_conv(t, t, ConvGeometry((3, 3)))
    tb.project([t], [t], [True])
    assert events == [("enter", dev), "syrk_", ("exit", dev),
                      ("enter", dev), "syrk_conv_", ("exit", dev),
                      ("enter", dev), "project_", ("exit", dev)]
    events.clear()
    cpu = SimpleNamespace(device=torch.device("cpu"))
    tb.accumulate(cpu, cpu)
    assert events == ["syrk_"]


_TRACE_SCRIPT = """
import torch
from torch._dynamo.backends.common import aot_autograd
from unsc_fast.kernels import triton_accumulate, triton_project
graphs = []

def fw(gm, inputs):
    graphs.append(gm.code)
    def run(*args):
        raise SystemExit(0)  # no GPU: stop before anything launches
    return run

@torch.compile(backend=aot_autograd(fw_compiler=fw), fullgraph=True)
def step(S, X, x, S2, G, B):
    torch.ops.unsc_fast_triton.syrk_(S, X, 0, False)
    torch.ops.unsc_fast_triton.syrk_conv_(S2, x, [3, 3], [1, 1], [1, 1], [1, 1], 2, 0, False)
    torch.ops.unsc_fast_triton.project_([G], [B], [True])
    return S.sum()

try:
    step(torch.zeros(20, 20), torch.randn(50, 20), torch.randn(2, 4, 6, 6),
         torch.zeros(2, 18, 18), torch.randn(5, 20), torch.randn(20, 3))
except SystemExit:
    pass
print(graphs[0])
"""


@interpreter_only
def test_compile_traces_the_kernels():
    """torch.compile(fullgraph=True) sees the accumulate kernels themselves (triton_op) and
    keeps project_ as one op. Traced in a fresh process without the interpreter (the
    interpreter's kernels cannot be traced); the compiled graph is never run (no GPU)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    graph = out.stdout
    assert graph.count("triton_kernel_wrapper_functional(") == 2, graph
    assert "'S_ptr'" in graph and "'x_ptr'" in graph and "'X_ptr'" in graph
    assert "unsc_fast_triton.project_" in graph


_COMPILE_SCRIPT = """
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from unsc_fast.kernels import triton_accumulate as ta, triton_project as tp

def build(fn, sig, consts, cc, warps, stages):
    sig = dict(sig, **{k: "constexpr" for k in consts})
    triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", cc, 32),
                   options=dict(num_warps=warps, num_stages=stages))

conv_args = ["M", "d", "Cg", "H", "W", "OHW", "OW", "sxn", "sxc", "sxh", "sxw", "KHW", "KW",
             "conv_sh", "conv_sw", "pad_h", "pad_w", "dil_h", "dil_w", "m_bucket"]
for cc in (90, 80):
    c = ta.configs_for(cc // 10)[0]
    for s_ty, x_ty, comp in (("fp32", "bf16", ta.KEEP), ("fp64", "fp32", ta.TO_FP64)):
        consts = dict(COMPUTE=comp, DOT_PRECISION=ta.dot_precision(comp, False), **c.kwargs)
        build(ta._syrk_dense_kernel, {"S_ptr": "*" + s_ty, "X_ptr": "*" + x_ty, "n": "i32",
              "d": "i32", "stride_xn": "i32", "stride_xd": "i32", "n_bucket": "i32"},
              consts, cc, c.num_warps, c.num_stages)
    c = ta.conv_configs_for(cc // 10)[0]
    build(ta._syrk_conv_kernel, dict({"S_ptr": "*fp32", "x_ptr": "*fp16"},
          **{a: "i32" for a in conv_args}),
          dict(COMPUTE=ta.KEEP, DOT_PRECISION="tf32", **c.kwargs), cc, c.num_warps, c.num_stages)
    for dtype, ty in ((torch.bfloat16, "bf16"), (torch.float64, "fp64")):
        p = tp.candidates_for(dtype, cc // 10)[0]
        comp = tp._compute_mode(dtype)
        for ws in (False, True):
            build(tp.project_kernel, {"tab_ptr": "*i64", "work_ptr": "*i64", "n_work": "i32",
                  "ws_ptr": "*fp64" if ty == "fp64" else "*fp32", "witness_ptr": "*" + ty},
                  dict(NF=tp.NF, COMPUTE=comp, DOT_PRECISION=ta.dot_precision(comp, False),
                       WORKSPACE=ws, BLOCK_M=p.BLOCK_M, BLOCK_D=p.BLOCK_D, BLOCK_R=p.BLOCK_R),
                  cc, p.num_warps, p.num_stages)
print("compiled")
"""


@interpreter_only
def test_kernels_compile_for_hopper_and_ampere():
    """Without a GPU the interpreter never compiles the kernels: compile them here, to cubin
    for sm_90 and sm_80 (Triton's bundled ptxas), in a fresh process without the interpreter:
    dense (bf16 -> fp32 S, fp64 S), conv (fp16) and project (bf16, fp64; both paths)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------------- GPU, full size

@gpu_only
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_large_accumulate(x_dtype):
    gen = _gen(0)
    X = rand(8192, 1000, dtype=x_dtype, device=DEVICE, gen=gen)
    S = torch.zeros(1000, 1000, device=DEVICE)
    ops.accumulate_(S, X, backend="triton")
    ops.accumulate_(S, X[:3001], backend="triton")
    Xd = X.double()
    assert _upper_err(S, Xd.mT @ Xd + Xd[:3001].mT @ Xd[:3001]) <= _acc_tol(S.dtype, x_dtype)
    x = rand(16, 64, 28, 28, dtype=x_dtype, device=DEVICE, gen=gen)
    x = x.to(memory_format=torch.channels_last)
    geom = ConvGeometry((3, 3), stride=(2, 2), pad=(1, 1, 1, 1), groups=2)
    S = torch.zeros(2, 288, 288, device=DEVICE)
    ops.accumulate_conv_(S, x, geom, backend="triton")
    expected = ref.accumulate_conv_(torch.zeros(2, 288, 288, dtype=torch.float64,
                                                device=DEVICE), x.double(), geom)
    assert _upper_err(S, expected) <= _acc_tol(S.dtype, x_dtype)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_large_project(dtype):
    gen = _gen(1)
    shapes = [(512, 4608, 300), (512, 4608, 2000), (4096, 1024, 1), (3, 70, 70), (64, 512, 0)]
    grads = [rand(r, d, dtype=dtype, device=DEVICE, gen=gen) for r, d, _ in shapes]
    bases = [orthonormal(d, m, dtype=dtype, device=DEVICE, gen=gen) for _, d, m in shapes]
    modes = [True, False, True, False, True]
    originals = [G.clone() for G in grads]
    ops.project_grads_(grads, bases, modes, backend="triton")
    for G, G0, B, s in zip(grads, originals, bases, modes):
        err = _proj_err(G, ref.project(G0.double(), B.double(), s), G0)
        assert err <= _proj_tol(dtype), err


@gpu_only
def test_gpu_torch_compile():
    """The ops inside a compiled function: no graph break, same results."""
    X = rand(300, 96, device=DEVICE, gen=_gen(2))
    G = rand(40, 96, device=DEVICE, gen=_gen(3))
    B = orthonormal(96, 10, dtype=torch.float32, device=DEVICE, gen=_gen(4))

    @torch.compile(fullgraph=True)
    def step(S, X, G, B):
        torch.ops.unsc_fast_triton.syrk_(S, X, 0, False)
        torch.ops.unsc_fast_triton.project_([G], [B], [True])

    S = torch.zeros(96, 96, device=DEVICE)
    G0 = G.clone()
    step(S, X, G, B)
    assert _upper_err(S, X.double().mT @ X.double()) <= REL_TOL[torch.float32]
    assert _proj_err(G, ref.project(G0.double(), B.double(), True), G0) <= 1e-5


def test_opcheck():
    """Schemas declare exactly what is mutated; project_'s fake (compile) implementation agrees.

    (The accumulate ops' fake implementation is their own body, traced: checked by
    test_compile_traces_the_kernels, since interpreted kernels cannot run on fake tensors.)
    """
    X = rand(30, 12, device=DEVICE, gen=_gen(1))
    x = rand(2, 4, 6, 6, device=DEVICE, gen=_gen(2))
    torch.library.opcheck(torch.ops.unsc_fast_triton.syrk_.default,
                          (torch.zeros(12, 12, device=DEVICE), X, 0, False),
                          test_utils=("test_schema",))
    torch.library.opcheck(torch.ops.unsc_fast_triton.syrk_conv_.default,
                          (torch.zeros(2, 18, 18, device=DEVICE), x, [3, 3], [1, 1], [1, 1],
                           [1, 1], 2, 0, False), test_utils=("test_schema",))
    G = [rand(5, 12, device=DEVICE, gen=_gen(3)), rand(4, 7, device=DEVICE, gen=_gen(4))]
    B = [orthonormal(12, 3, dtype=torch.float32, device=DEVICE, gen=_gen(5)),
         orthonormal(7, 2, dtype=torch.float32, device=DEVICE, gen=_gen(6))]
    torch.library.opcheck(torch.ops.unsc_fast_triton.project_.default, (G, B, [True, False]),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
