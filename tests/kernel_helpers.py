"""What the per-op kernel tests share: the backends, inputs, error measures and ONE tolerance
table (every entry with its reason).

Backends: every test taking the ``backend`` fixture (tests/conftest.py) runs once per backend
of :mod:`unsc_fast.dispatch`: ``reference`` and ``cpp`` on the CPU, ``cuda`` on a GPU, and
``triton`` on a GPU or, without one, on CPU tensors in Triton's interpreter. A backend that
cannot run here is skipped with the reason; with ``UNSC_FAST_REQUIRE_CUDA=1`` (set by
benchmarks/gpu.sh) a ``cuda`` case that cannot run is a failure instead. The ids are the
backend names, so ``-k cpp`` / ``-k "cuda or triton"`` select one side; CUDA cases carry the
``gpu`` marker.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from cases import rel_err

REQUIRE_CUDA = os.environ.get("UNSC_FAST_REQUIRE_CUDA") == "1"
HAS_CUDA = torch.cuda.is_available()
GPU = pytest.mark.gpu

NAMES = ("reference", "cpp", "cuda", "triton")
BACKEND_PARAMS = [
    pytest.param("reference", id="reference"),
    pytest.param("cpp", id="cpp"),
    pytest.param("cuda", id="cuda", marks=GPU),
    pytest.param("triton", id="triton", marks=[GPU] if HAS_CUDA else []),
]


def params(*names: str) -> list:
    """The backend params for ``names`` only (for backend-specific tests)."""
    return [p for p in BACKEND_PARAMS if p.values[0] in names]


@dataclass(frozen=True)
class Backend:
    name: str
    device: str

    @property
    def interpreted(self) -> bool:
        return self.name == "triton" and self.device == "cpu"


def device_of(name: str) -> str:
    return {"reference": "cpu", "cpp": "cpu", "cuda": "cuda",
            "triton": "cuda" if HAS_CUDA else "cpu"}[name]


def missing(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None."""
    from unsc_fast import dispatch
    if name == "cuda" and not HAS_CUDA:
        return "needs a CUDA device"
    state = dispatch.availability()[name]
    return None if state == "available" else f"backend {name!r} unavailable: {state}"


def gate(name: str) -> Backend:
    reason = missing(name)
    if reason is not None:
        if name == "cuda" and REQUIRE_CUDA:
            pytest.fail(f"{reason}, but UNSC_FAST_REQUIRE_CUDA=1 requires the CUDA tests to run",
                        pytrace=False)
        if name == "cuda":
            reason += " (set UNSC_FAST_REQUIRE_CUDA=1 to make this a failure)"
        pytest.skip(reason)
    return Backend(name, device_of(name))


def triton_tf32() -> bool:
    """Whether the Triton kernels use TF32 for fp32 inputs now (torch's matmul setting)."""
    from unsc_fast.kernels.triton import common
    return common.allow_tf32()


# ---- the tolerance table ---------------------------------------------------------------------
# Errors are relative Frobenius errors against float64 computed on the SAME rounded inputs, so
# they measure the kernel's arithmetic only.
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8,
                 torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}
TF32_TOL = 5e-3  # fp32 operands rounded to TF32 (10-bit mantissa, u = 2^-11 ≈ 4.9e-4): each
#                  product is off by ≤ 2u ≈ 1e-3; 5e-3 leaves room for cancellation. Only where
#                  the backend may use TF32 (Triton, following torch's fp32 matmul setting).
ACCUMULATE_TOL = {  # by S's dtype; on the upper triangle (the lower one is unspecified)
    # fp64 sums of inputs of ≤ 53 bits: error ~ n·eps64 ≈ 1e-16·n, n ≤ 10^4 here.
    torch.float64: 1e-12,
    # fp32 sums: fp16/bf16 products are exact in fp32 (11+11 / 8+8 significant bits ≤ 24),
    # fp32 products round once; sum error ~ √n·eps32 (6e-8) typical, n ≤ 10^4: 1e-5.
    torch.float32: 1e-5,
}
PROJECT_TOL = {  # relative to max(‖expected‖, ‖G‖): the output is ~0 when a full basis is removed
    torch.float64: 1e-12,  # two fp64 products of length d and m: (d + m)·eps64
    torch.float32: 1e-5,   # the same in fp32 ((d + m)·eps32 ≤ 1e-5 for d + m ≤ 160 worst case)
}
# fp16/bf16 projection: k·u + 1e-5, k = how many times the backend rounds to the gradient's
# dtype, each rounding adding ≤ u relative to max(‖G‖, ‖out‖) (B orthonormal: ‖T Bᵀ‖ ≤ ‖G‖):
# cpp/cuda compute T = G B and T Bᵀ in fp32 and round the result once (k = 1); Triton also
# rounds T to the dtype to feed tensor cores in the second product (k = 2); the reference
# multiplies in the dtype with torch (T, T Bᵀ and the difference each rounded: k = 3). 1e-5
# covers the fp32 sums. (The old files had u + 1e-5 for the compiled ops, right for them, and
# 8u for Triton, 4x looser than its two roundings need.)
ROUNDINGS_TO_DTYPE = {"reference": 3, "cpp": 1, "cuda": 1, "triton": 2}


def accumulate_tol(backend: Backend | str, s_dtype: torch.dtype, x_dtype: torch.dtype) -> float:
    name = backend if isinstance(backend, str) else backend.name
    if name == "triton" and s_dtype == x_dtype == torch.float32 and triton_tf32():
        return TF32_TOL
    return ACCUMULATE_TOL[s_dtype]


def project_tol(backend: Backend | str, dtype: torch.dtype) -> float:
    name = backend if isinstance(backend, str) else backend.name
    if dtype in (torch.float16, torch.bfloat16):
        return ROUNDINGS_TO_DTYPE[name] * UNIT_ROUNDOFF[dtype] + 1e-5
    if name == "triton" and dtype == torch.float32 and triton_tf32():
        return TF32_TOL
    return PROJECT_TOL[dtype]


# ---- inputs and error measures --------------------------------------------------------------

def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ids(seq) -> list[str]:
    return [str(s).replace("torch.", "") for s in seq]


def upper_err(S: torch.Tensor, expected: torch.Tensor) -> float:
    """Error on the upper triangles only: the lower one is undefined after a fast kernel."""
    return rel_err(torch.triu(S.cpu()), torch.triu(expected.cpu()))


def proj_err(out: torch.Tensor, expected: torch.Tensor, G0: torch.Tensor) -> float:
    out, expected, G0 = out.cpu().double(), expected.cpu().double(), G0.cpu().double()
    scale = max(expected.norm().item(), G0.norm().item(), 1e-300)
    return (out - expected).norm().item() / scale


def random_sym(shape: tuple, dtype: torch.dtype, device: str, seed: int = 7) -> torch.Tensor:
    """A random symmetric S (or stack of them) to accumulate into: the op must add."""
    from cases import rand
    A = rand(*shape, dtype=torch.float64, gen=gen(seed))
    return (A + A.mT).to(dtype=dtype, device=device)


def raises_and_unchanged(fn, tensors, match, exc=RuntimeError):
    """fn raises ``exc`` matching ``match`` and writes none of ``tensors``."""
    before = [t.clone() for t in tensors]
    with pytest.raises(exc, match=match):
        fn()
    if any(t.is_cuda for t in tensors):
        torch.cuda.synchronize()
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)


def run_in_fresh_process(script: str, timeout: int = 600):
    """Run ``script`` in a new Python without the Triton interpreter (compile checks)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=timeout)


def raw(backend: Backend, op: str):
    """The backend's kernel-level entry for ``op``, bypassing :mod:`unsc_fast.ops` (so its
    own checks and no-op paths are exercised): the reference function, the compiled torch op,
    or the Triton torch op with automatic splits and TF32 off."""
    from unsc_fast import reference as ref
    if backend.name == "reference":
        return getattr(ref, op + "_")
    if backend.name in ("cpp", "cuda"):
        return {"accumulate": torch.ops.unsc_fast.accumulate_,
                "accumulate_conv": torch.ops.unsc_fast.accumulate_conv_,
                "project_grads": torch.ops.unsc_fast.project_grads_}[op]
    t = torch.ops.unsc_fast_triton
    if op == "accumulate":
        return lambda S, X: t.accumulate_(S, X, 0, False)
    if op == "project_grads":
        return t.project_grads_
    raise ValueError(op)


def launch_events(monkeypatch, module, op_name: str, call) -> list:
    """Triton launches on the *current* GPU: check that the registered wrapper makes the
    tensors' GPU current around the op (stand-ins, so it runs without a second GPU)."""
    import contextlib
    events: list = []

    @contextlib.contextmanager
    def fake_device(dev):
        events.append(("enter", dev))
        yield
        events.append(("exit", dev))

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(module, op_name, lambda *a: events.append(op_name))
    call()
    return events
