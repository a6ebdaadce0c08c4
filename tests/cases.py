"""Shapes and inputs shared by the tests of every backend.

The shapes live in benchmarks/shapes.py (one home of shapes for tests and
benchmarks); the tolerance table is in tests/kernel_helpers.py.

Every backend is checked on the same cases against the float64 reference, so a newcomer reads
the coverage in one place: tiny, odd, tall, wide and square shapes; ranks 0, 1, d-1 and d;
contiguous and non-contiguous inputs; every input dtype.
"""
from __future__ import annotations

import torch

from unsc_fast.geometry import ConvGeometry

from benchmarks.shapes import CONV_SHAPES, DENSE_SHAPES, PROJECT_SHAPES  # noqa: E402

# (N, C, H, W, geometry)
CONV_CASES = [(N, C, H, W, ConvGeometry(**g)) for N, C, H, W, g in CONV_SHAPES]

IN_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    den = ref.norm().item()
    return (out - ref).norm().item() / (den if den > 0 else 1.0)


def rand(*shape: int, dtype=torch.float32, device="cpu", gen=None) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as t, laid out with a stride gap (every other element of a wider one)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous() or t.numel() <= 1
    return view


def orthonormal(d: int, m: int, dtype=torch.float64, device="cpu", gen=None) -> torch.Tensor:
    """A random (d, m) matrix with orthonormal columns (m may be 0 or d)."""
    if m == 0:
        return torch.empty(d, 0, dtype=dtype, device=device)
    q, _ = torch.linalg.qr(torch.randn(d, m, generator=gen, dtype=torch.float64))
    return q.to(device=device, dtype=dtype)
