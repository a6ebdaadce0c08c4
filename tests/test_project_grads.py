"""``project_grads_`` (``G ← G − (GB)Bᵀ`` or ``(GB)Bᵀ``, many layers in one call) on every
backend against float64.

The contract once for all backends (the ``backend`` fixture), then what only one backend has.
Tolerances (and why fp16/bf16 differ by backend): tests/kernel_helpers.py. The model-level
``unsc_fast.project_`` is tested in test_bases_projection.py.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases import IN_DTYPES, PROJECT_SHAPES, non_contiguous, orthonormal, rand
from kernel_helpers import (
    TF32_TOL, gen, ids, launch_events, params, proj_err, project_tol, raises_and_unchanged,
    run_in_fresh_process,
)
from unsc_fast import dispatch, ops
from unsc_fast import reference as ref


def _check(backend, grads, bases, modes, tol=None):
    originals = [G.clone() for G in grads]
    ops.project_grads_(grads, bases, modes, backend=backend.name)
    for i, (G, G0, B, s) in enumerate(zip(grads, originals, bases, modes)):
        err = proj_err(G, ref.project(G0.cpu().double(), B.cpu().double(), s), G0)
        assert err <= (tol or project_tol(backend, G.dtype)), (i, s, G.stride(), err)


# --------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("dtype", IN_DTYPES, ids=ids(IN_DTYPES))
@pytest.mark.parametrize("rows,d,m", PROJECT_SHAPES)
def test_project_grads(backend, rows, d, m, dtype):
    """Every shared shape (ranks 0, 1, d-1, d), both modes, contiguous and strided G, in one
    grouped call; rank 0 with subtract leaves G exactly as it was."""
    g = gen(rows * 100 + d * 10 + m)
    B = orthonormal(d, m, dtype=dtype, device=backend.device, gen=g)
    grads, modes = [], []
    for subtract in (True, False):
        for strided in (False, True):
            G = rand(rows, d, dtype=dtype, device=backend.device, gen=g)
            grads.append(non_contiguous(G) if strided else G)
            modes.append(subtract)
    before = [G.clone() for G in grads]
    _check(backend, grads, [B] * len(grads), modes)
    if m == 0:
        assert torch.equal(grads[0], before[0]) and torch.equal(grads[1], before[1])


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=st.lists(st.tuples(st.integers(1, 20), st.integers(1, 40), st.floats(0, 1),
                                 st.booleans()), min_size=1, max_size=4),
       dtype=st.sampled_from(IN_DTYPES), seed=st.integers(0, 2 ** 16))
def test_project_grads_random_layers(backend, shapes, dtype, seed):
    """Property: any list of layers (random rows, d, rank, mode) in one call matches the
    per-layer float64 projection."""
    g = gen(seed)
    grads = [rand(r, d, dtype=dtype, device=backend.device, gen=g) for r, d, _, _ in shapes]
    bases = [orthonormal(d, round(f * d), dtype=dtype, device=backend.device, gen=g)
             for _, d, f, _ in shapes]
    _check(backend, grads, bases, [s for *_, s in shapes])


def test_project_grads_grouped_one_call(backend):
    _grouped_one_call(backend)


def _grouped_one_call(backend):
    """Many layers in ONE call (more than one CUDA launch batch of 24): row blocks of a conv
    weight gradient (grouped conv), a strided view, a transposed view, several row tiles,
    fp64/fp16/bf16 layers, m = 0 both ways, a strided basis; memory outside the views must
    stay untouched."""
    dev, g = backend.device, gen(11)
    n_many = 6 if backend.interpreted else 26  # the interpreter is slow; cpp/cuda get > 24
    Wconv = rand(12, 4, 3, 3, device=dev, gen=g)             # conv weight grad, 3 groups
    flat = Wconv.view(12, -1)                                # (out, C/groups·kh·kw) = (12, 36)
    blocks = [flat[0:4], flat[4:8], flat[8:12]]
    wide = rand(40, 2 * 50, device=dev, gen=g)
    strided = wide[:, ::2]                                   # (40, 50), stride gap
    transposed = rand(30, 20, device=dev, gen=g).mT          # (20, 30), column major
    big = rand(300, 130, device=dev, gen=g)                  # several row tiles
    many = [rand(5 + i, 3 + 2 * i, device=dev, gen=g) for i in range(n_many)]
    G64 = rand(9, 17, dtype=torch.float64, device=dev, gen=g)
    G16 = rand(6, 10, dtype=torch.float16, device=dev, gen=g)
    Gbf = [rand(r, 64, dtype=torch.bfloat16, device=dev, gen=g) for r in (33, 70)]
    Gz1, Gz2 = rand(3, 5, device=dev, gen=g), rand(4, 6, device=dev, gen=g)
    grads = blocks + [strided, transposed, big] + many + [G64, G16] + Gbf + [Gz1, Gz2]
    ms = ([5, 36, 0, 20, 29, 100] + [max(1, (3 + 2 * i) // 2) for i in range(n_many)]
          + [8, 3, 60, 60, 0, 0])
    subtract = ([True, False, True, True, False, True] + [i % 2 == 0 for i in range(n_many)]
                + [True, False, True, True, True, False])
    bases = [orthonormal(G.shape[1], m, dtype=G.dtype, device=dev, gen=g)
             for G, m in zip(grads, ms)]
    bases[4] = non_contiguous(bases[4])
    before = [G.clone() for G in grads]
    wide_before = wide.clone()
    _check(backend, grads, bases, subtract)
    assert torch.equal(wide[:, 1::2], wide_before[:, 1::2])  # the gaps of the strided view
    assert torch.equal(flat[8:12], before[2])                # m=0, subtract: untouched
    assert torch.equal(grads[-1], torch.zeros_like(grads[-1]))  # m=0, onto span{}: zero


@pytest.mark.parametrize("backend", params("cuda", "triton"), indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=ids([torch.bfloat16,
                                                                            torch.float32]))
def test_project_grads_large_on_gpu(backend, dtype):
    if backend.device != "cuda":
        pytest.skip("needs a CUDA device (interpreter run)")
    g = gen(1)
    shapes = [(512, 4608, 300), (512, 4608, 2000), (4096, 1024, 1), (3, 70, 70), (64, 512, 0),
              (300, 200, 130)]
    grads = [rand(r, d, dtype=dtype, device="cuda", gen=g) for r, d, _ in shapes]
    bases = [orthonormal(d, m, dtype=dtype, device="cuda", gen=g) for _, d, m in shapes]
    _check(backend, grads, bases, [True, False, True, False, True, False])


# --------------------------------------------------------------------------- cpp / cuda

@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["threads1", "threads2"])
@pytest.mark.parametrize("backend", params("cpp"), indirect=True)
def test_project_grads_threads(backend, threads):
    """cpp: the grouped call with 1 and 2 threads."""
    _grouped_one_call(backend)


@pytest.mark.parametrize("backend", params("cpp", "cuda"), indirect=True)
def test_opcheck_project_grads(backend):
    g = gen(3)
    grads = [rand(4, 6, device=backend.device, gen=g), rand(3, 5, device=backend.device, gen=g)]
    bases = [orthonormal(6, 2, dtype=torch.float32, device=backend.device, gen=g),
             orthonormal(5, 5, dtype=torch.float32, device=backend.device, gen=g)]
    torch.library.opcheck(torch.ops.unsc_fast.project_grads_.default, (grads, bases, [True, False]))


@pytest.mark.parametrize("backend", params("cpp", "cuda"), indirect=True)
def test_torch_compile_fullgraph(backend):
    def step(G, B):
        torch.ops.unsc_fast.project_grads_([G], [B], [True])
        return G.sum()

    dev, g = backend.device, gen(4)
    G = rand(3, 5, device=dev, gen=g)
    B = orthonormal(5, 2, dtype=torch.float32, device=dev, gen=g)
    G2 = G.clone()
    kwargs = {"backend": "aot_eager"} if dev == "cpu" else {}
    out = torch.compile(step, fullgraph=True, **kwargs)(G, B)
    expected = step(G2, B)
    torch.testing.assert_close(G, G2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", params("cpp", "cuda"), indirect=True)
def test_project_bad_inputs_raise_before_writing(backend):
    dev, OPS, g = backend.device, torch.ops.unsc_fast, gen(5)
    G1, G2 = rand(4, 6, device=dev, gen=g), rand(3, 5, device=dev, gen=g)
    B2 = orthonormal(5, 2, dtype=torch.float32, device=dev, gen=g)
    empty1 = torch.empty(6, 0, device=dev)  # m = 0 onto span{}: would zero G1 if written
    cases = [
        (lambda: OPS.project_grads_([G1, G2], [empty1], [True, True]), "differ in length"),
        (lambda: OPS.project_grads_([G1, G2], [empty1, B2.double()], [False, True]),
         "convert the bases"),
        (lambda: OPS.project_grads_([G1, G2], [empty1, orthonormal(4, 2, dtype=torch.float32,
                                                             device=dev)],
                              [False, True]), "must be \\(rows, d\\)"),
        (lambda: OPS.project_grads_([G1, G2.to(torch.int32)], [empty1, B2.to(torch.int32)],
                              [False, True]), "unsupported dtype"),
        (lambda: OPS.project_grads_([G1, rand(1, 5, device=dev).expand(3, 5)], [empty1, B2],
                              [False, True]), "overlapping"),
    ]
    for fn, match in cases:
        raises_and_unchanged(fn, [G1, G2], match)


@pytest.mark.parametrize("backend", params("cuda"), indirect=True)
def test_mixed_devices_raise_before_writing(backend):
    G1, G2 = rand(4, 6, device="cuda"), rand(3, 5, device="cuda")
    empty1 = torch.empty(6, 0, device="cuda")
    B2 = orthonormal(5, 2, dtype=torch.float32, device="cuda")
    raises_and_unchanged(lambda: torch.ops.unsc_fast.project_grads_([G1, G2], [empty1, B2.cpu()],
                                                              [False, True]),
                         [G1, G2], "one device")


# --------------------------------------------------------------------------- triton

def _tproj():
    from unsc_fast.kernels.triton import project_grads
    return project_grads


def _forced():
    P = _tproj().ProjectConfig
    return {"onchip": P(16, 16, 64, 4, 1), "workspace": P(16, 16, 16, 4, 1)}


@pytest.mark.parametrize("path", ["onchip", "workspace"])
@pytest.mark.parametrize("dtype", IN_DTYPES, ids=ids(IN_DTYPES))
@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_project_grads_forced_tilings(backend, dtype, path):
    """Tilings that force d and m across several blocks: the on-chip path with several d
    chunks, the workspace path (m > BLOCK_R) with several m chunks; row-block views of one
    gradient, a column-strided view, a transposed-layout G, ranks 0, 1, d-1 and d."""
    dev, g = backend.device, gen(7)
    big = rand(50, 40, dtype=dtype, device=dev, gen=g)
    wide = rand(9, 70, dtype=dtype, device=dev, gen=g)
    colmajor = rand(33, 17, dtype=dtype, device=dev, gen=g).mT.contiguous().mT
    layers = [
        (big[0:20], 40, 39, True), (big[20:37], 40, 40, False), (big[37:50], 40, 1, True),
        (wide[:, ::2], 35, 12, True), (wide[:, 1::2], 35, 0, False),
        (colmajor, 17, 5, False), (rand(3, 20, dtype=dtype, device=dev, gen=g), 20, 0, True),
        (rand(1, 1, dtype=dtype, device=dev, gen=g), 1, 1, True),
    ]
    grads = [G for G, _, _, _ in layers]
    bases = [orthonormal(d, m, dtype=dtype, device=dev, gen=g) for _, d, m, _ in layers]
    modes = [s for _, _, _, s in layers]
    originals = [G.clone() for G in grads]
    _tproj().run_grouped(grads, bases, modes, config=_forced()[path])
    for i, (G, G0, B, s) in enumerate(zip(grads, originals, bases, modes)):
        err = proj_err(G, ref.project(G0.double(), B.double(), s), G0)
        assert err <= project_tol(backend, dtype), (i, err)


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_project_grads_mixed_dtypes_and_empty(backend):
    """The kernel-level call with fp32 and fp16 layers (one launch each), an empty G and a
    rank-0 null-mode layer (handled in run_grouped, without ops)."""
    dev, g = backend.device, gen(5)
    G32, G16 = rand(12, 20, device=dev, gen=g), rand(7, 9, dtype=torch.float16, device=dev, gen=g)
    Gnull, Gempty = rand(4, 6, device=dev, gen=g), rand(0, 8, device=dev, gen=g)
    B32 = orthonormal(20, 3, device=dev, gen=g, dtype=torch.float32)
    B16 = orthonormal(9, 4, device=dev, gen=g, dtype=torch.float16)
    B0, B8 = torch.empty(6, 0, device=dev), orthonormal(8, 2, device=dev, gen=g,
                                                         dtype=torch.float32)
    originals = [G32.clone(), G16.clone()]
    torch.ops.unsc_fast_triton.project_grads_([G32, G16, Gnull, Gempty], [B32, B16, B0, B8],
                                              [True, False, False, True])
    assert proj_err(G32, ref.project(originals[0].double(), B32.double(), True),
                    originals[0]) <= project_tol(backend, torch.float32)
    assert proj_err(G16, ref.project(originals[1].double(), B16.double(), False),
                    originals[1]) <= project_tol(backend, torch.float16)
    assert torch.all(Gnull == 0)


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_project_autotune_uses_scratch(backend, monkeypatch):
    """The tuner times every candidate on clones (the op is in place) and caches the best."""
    tp = _tproj()
    from unsc_fast.kernels.triton import common
    P = tp.ProjectConfig
    cands = [P(16, 16, 16, 4, 1), P(16, 32, 64, 4, 1), P(32, 16, 32, 4, 1)]
    monkeypatch.setattr(tp, "candidates_for", lambda dtype, major: cands)
    monkeypatch.setattr(tp, "TUNED", {})
    monkeypatch.setattr(common, "AUTOTUNE", True)
    times = iter([3.0, 1.0, 2.0])
    seen = []

    def fake_bench(fn):
        fn()
        seen.append(1)
        return next(times)

    G = rand(20, 24, device=backend.device, gen=gen(1))
    B = orthonormal(24, 5, dtype=torch.float32, device=backend.device, gen=gen(2))
    G0 = G.clone()
    best = tp.pick_config([G], [B], [True], False, bench=fake_bench)
    assert best == cands[1] and len(seen) == 3
    assert torch.equal(G, G0)  # the candidates ran on scratch copies
    assert tp.pick_config([G], [B], [True], False, bench=None) == cands[1]  # cached


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_tf32_follows_torch_setting(backend):
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        G = rand(10, 40, device=backend.device, gen=gen(10))
        B = orthonormal(40, 7, dtype=torch.float32, device=backend.device, gen=gen(11))
        _check(backend, [G], [B], [True], tol=TF32_TOL)
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.parametrize("major", [9, 8])
@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_gpu_tilings_in_interpreter(backend, major):
    """Every Hopper/Ampere candidate tiling gives the right answer (masks, block edges)."""
    if not backend.interpreted:
        pytest.skip("checks for the interpreter run")
    tp, g = _tproj(), gen(major)
    for dtype in (torch.float16, torch.float32, torch.float64):
        G = rand(70, 150, dtype=dtype, gen=g)
        B = orthonormal(150, 90, dtype=dtype, gen=g)
        for cfg in tp.candidates_for(dtype, major):
            out = G.clone()
            tp.run_grouped([out], [B], [True], config=cfg)
            err = proj_err(out, ref.project(G.double(), B.double(), True), G)
            assert err <= project_tol(backend, dtype), (cfg, err)


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_triton_registration(backend):
    from unsc_fast.kernels.triton import backend as tb
    assert dispatch._registry[("project_grads", "triton")].devices == tb.DEVICES
    assert hasattr(torch.ops.unsc_fast_triton, "project_grads_")
    assert not hasattr(torch.ops.unsc_fast_triton, "project_")  # one name per op


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_launches_under_the_tensors_device(backend, monkeypatch):
    from types import SimpleNamespace
    dev = torch.device("cuda", 1)
    t = SimpleNamespace(device=dev)
    _, fn = dispatch.resolve("project_grads", dev, ([t], [t], [True]), "triton")
    assert launch_events(monkeypatch, _tproj(), "project_grads_",
                         lambda: fn([t], [t], [True])) == [
        ("enter", dev), "project_grads_", ("exit", dev)]


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_opcheck_triton(backend):
    """The schema declares what is mutated; the fake (compile) implementation agrees."""
    dev = backend.device
    G = [rand(5, 12, device=dev, gen=gen(3)), rand(4, 7, device=dev, gen=gen(4))]
    B = [orthonormal(12, 3, dtype=torch.float32, device=dev, gen=gen(5)),
         orthonormal(7, 2, dtype=torch.float32, device=dev, gen=gen(6))]
    torch.library.opcheck(torch.ops.unsc_fast_triton.project_grads_.default,
                          (G, B, [True, False]),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


_TRACE_SCRIPT = """
import torch
from torch._dynamo.backends.common import aot_autograd
from unsc_fast.kernels.triton import project_grads
graphs = []

def fw(gm, inputs):
    graphs.append(gm.code)
    def run(*args):
        raise SystemExit(0)
    return run

@torch.compile(backend=aot_autograd(fw_compiler=fw), fullgraph=True)
def step(G, B):
    torch.ops.unsc_fast_triton.project_grads_([G], [B], [True])
    return G.sum()

try:
    step(torch.randn(5, 20), torch.randn(20, 3))
except SystemExit:
    pass
print(graphs[0])
"""


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_compile_keeps_the_op(backend):
    """torch.compile(fullgraph=True) keeps project_grads_ as one op (no graph break)."""
    if not backend.interpreted:
        pytest.skip("checks for the interpreter run")
    out = run_in_fresh_process(_TRACE_SCRIPT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "unsc_fast_triton.project_grads_" in out.stdout


_COMPILE_SCRIPT = """
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from unsc_fast.kernels.triton import common, project_grads as tp

for cc in (90, 80):
    for dtype, ty in ((torch.bfloat16, "bf16"), (torch.float64, "fp64")):
        p = tp.candidates_for(dtype, cc // 10)[0]
        comp = common.compute_mode(tp.accumulator_dtype(dtype), dtype)
        for ws in (False, True):
            consts = dict(NF=tp.NF, COMPUTE=comp, DOT_PRECISION=common.dot_precision(comp, False),
                          WORKSPACE=ws, BLOCK_M=p.BLOCK_M, BLOCK_D=p.BLOCK_D, BLOCK_R=p.BLOCK_R)
            sig = {"tab_ptr": "*i64", "work_ptr": "*i64", "n_work": "i32",
                   "ws_ptr": "*fp64" if ty == "fp64" else "*fp32", "witness_ptr": "*" + ty}
            sig.update({k: "constexpr" for k in consts})
            triton.compile(ASTSource(tp.project_grads_kernel, sig, consts),
                           target=GPUTarget("cuda", cc, 32),
                           options=dict(num_warps=p.num_warps, num_stages=p.num_stages))
print("compiled")
"""


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_kernel_compiles_for_hopper_and_ampere(backend):
    """The projection kernel (bf16, fp64; both paths) compiles for sm_90 and sm_80."""
    if not backend.interpreted:
        pytest.skip("checks for the interpreter run")
    out = run_in_fresh_process(_COMPILE_SCRIPT)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("backend", params("triton"), indirect=True)
def test_gpu_torch_compile(backend):
    if backend.device != "cuda":
        pytest.skip("needs a CUDA device (interpreter run)")
    G = rand(40, 96, device="cuda", gen=gen(3))
    B = orthonormal(96, 10, dtype=torch.float32, device="cuda", gen=gen(4))
    G0 = G.clone()

    @torch.compile(fullgraph=True)
    def step(G, B):
        torch.ops.unsc_fast_triton.project_grads_([G], [B], [True])

    step(G, B)
    assert proj_err(G, ref.project(G0.double(), B.double(), True), G0) <= 1e-5
