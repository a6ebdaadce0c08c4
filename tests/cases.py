"""Shapes, inputs and tolerances shared by the tests of every backend.

Every backend is checked on the same cases against the float64 reference, so a newcomer reads
the coverage in one place: tiny, odd, tall, wide and square shapes; ranks 0, 1, d-1 and d;
contiguous and non-contiguous inputs; every input dtype.
"""
from __future__ import annotations

import torch

from unsc_fast.geometry import ConvGeometry

# (n, d) for S += XᵀX
DENSE_SHAPES = [(1, 1), (7, 3), (5, 17), (64, 33), (200, 64), (3, 130), (129, 31)]

# (N, C, H, W, geometry)
CONV_CASES = [
    (2, 3, 5, 5, ConvGeometry((3, 3))),
    (2, 3, 7, 6, ConvGeometry((3, 3), stride=(2, 2), pad=(1, 1, 1, 1))),
    (1, 4, 9, 9, ConvGeometry((3, 2), stride=(1, 2), pad=(0, 0, 2, 2), dilation=(2, 1))),
    (3, 4, 6, 6, ConvGeometry((3, 3), pad=(1, 1, 1, 1), groups=2)),
    (2, 6, 5, 7, ConvGeometry((3, 3), pad=(1, 1, 1, 1), groups=6)),  # depthwise
    (2, 5, 4, 4, ConvGeometry((1, 1))),
    (1, 2, 8, 8, ConvGeometry((5, 5), stride=(3, 3), pad=(2, 2, 2, 2))),
]

# (rows, d, m) for G ← G − (G B)Bᵀ; m covers ranks 0, 1, d-1 and d
PROJECT_SHAPES = [(1, 1, 0), (1, 1, 1), (5, 3, 1), (7, 9, 8), (16, 33, 0), (16, 33, 33),
                  (33, 17, 5), (64, 40, 39), (3, 70, 12)]

IN_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# Relative Frobenius error against the float64 reference on the same (rounded) inputs.
REL_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
# Looser where the backend may use tensor-core/TF32 products on fp32 inputs.
REL_TOL_TF32 = 5e-3


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
