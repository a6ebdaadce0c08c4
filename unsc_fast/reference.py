"""Plain-PyTorch reference of UNSC (Chen, Zhu, Yu, Zhou, IJCAI 2024).

This module is the specification every fast path is tested against. It is kept short so it
can be read beside the paper; each function is one step of the method:

1. layer-input second moments ``S += XᵀX`` (conv: of receptive-field patches, exact geometry);
2. core subspace of ``C = S / n`` by ``eigh`` and one of the rank rules;
3. projection of a weight gradient onto the complement of the core subspace;
4. pseudo-labels: the most likely class that is not being forgotten.

Accumulators hold the *upper triangle* of S: fast kernels compute only that, so callers read
S through :func:`symmetric`. The reference fills the whole matrix, which is a valid superset.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import ConvGeometry

__all__ = [
    "ConvGeometry", "conv_patches", "accumulate_", "accumulate_conv_", "symmetric",
    "eigh_desc", "energy_rank", "floor_rank", "threshold_rank", "project", "project_grads_",
    "pseudo_labels",
]


def conv_patches(x: Tensor, geom: ConvGeometry) -> Tensor:
    """Receptive-field patches of ``x`` (N, C, H, W) as (groups, N·L, C/groups·kh·kw).

    Columns follow ``weight.view(out, -1)``: (C_in/groups, kh, kw) order.
    """
    if any(geom.pad):
        mode = "constant" if geom.padding_mode == "zeros" else geom.padding_mode
        x = F.pad(x, geom.pad, mode=mode)
    cols = F.unfold(x, geom.kernel_size, dilation=geom.dilation, stride=geom.stride)
    n, _, length = cols.shape
    g = geom.groups
    return cols.view(n, g, -1, length).permute(1, 0, 3, 2).reshape(g, n * length, -1)


def accumulate_(S: Tensor, X: Tensor) -> Tensor:
    """``S += XᵀX`` for X (n, d), computed in S's dtype (fp32 or fp64)."""
    X = X.to(S.dtype)
    return S.addmm_(X.mT, X)


def accumulate_conv_(S: Tensor, x: Tensor, geom: ConvGeometry) -> Tensor:
    """``S[g] += P_gᵀ P_g`` for the patches P_g of each group; S is (groups, d, d)."""
    P = conv_patches(x.to(S.dtype), geom)
    return S.baddbmm_(P.mT, P)


def symmetric(S: Tensor) -> Tensor:
    """The full symmetric matrix from the upper triangle of S (the lower one is not read)."""
    upper = torch.triu(S)
    return upper + torch.triu(S, 1).mT


def eigh_desc(C: Tensor, *, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors of a symmetric PSD matrix.

    Decomposes in ``dtype``; if LAPACK/cuSOLVER fails to converge, retries with a growing
    diagonal jitter and raises a clear error if that fails too: never a silent wrong basis.
    """
    C = C.to(dtype)
    scale = float(torch.diagonal(C).abs().mean()) or 1.0
    eye = torch.eye(C.shape[-1], dtype=dtype, device=C.device)
    for jitter in (0.0, 1e-12, 1e-9, 1e-6):
        try:
            evals, evecs = torch.linalg.eigh(C + (jitter * scale) * eye)
            return evals.flip(-1), evecs.flip(-1)
        except torch.linalg.LinAlgError:
            continue
    raise torch.linalg.LinAlgError(
        f"eigh failed on a {tuple(C.shape)} covariance even with jitter 1e-6·mean(diag);"
        " the statistics are probably corrupt")


def _clean(evals: Tensor) -> Tensor:
    """Eigenvalues with round-off noise (|λ| below d·eps·λ_max) set to exactly zero."""
    tol = evals.shape[-1] * torch.finfo(evals.dtype).eps * evals[..., :1].abs().clamp_min(0)
    return torch.where(evals > tol, evals, torch.zeros_like(evals))


def energy_rank(evals: Tensor, eps: float) -> int:
    """Smallest k with Σ_{i≤k} λ_i / Σ λ_i ≥ eps (paper's rule). 0 if eps ≤ 0 or C = 0."""
    lam = _clean(evals)
    cum = torch.cumsum(lam, 0)
    total = cum[-1]
    if eps <= 0 or total <= 0:
        return 0
    return min(int((cum < eps * total).sum()) + 1, lam.numel())


def floor_rank(evals: Tensor, a: float) -> int:
    """Adam-NSCL rule: eigenvalues ≤ a·λ_min span the null space; the rest are core."""
    lam = _clean(evals)
    lam_min = lam[-1] if lam[-1] > 0 else lam.new_tensor(0.0)
    return int((lam > a * lam_min).sum())


def threshold_rank(evals: Tensor, t: float) -> int:
    """AlphaEdit-style rule: core where λ / λ_max > t."""
    lam = _clean(evals)
    if lam[0] <= 0:
        return 0
    return int((lam / lam[0] > t).sum())


def project(G: Tensor, B: Tensor, subtract: bool) -> Tensor:
    """Project the rows of G (rows, d) off span(B) (``subtract``) or onto it.

    B (d, m) is orthonormal: the core basis U_r when ``subtract``, else the null basis U_0.
    """
    GB = G @ B
    return G - GB @ B.mT if subtract else GB @ B.mT


def project_grads_(grads: list[Tensor], bases: list[Tensor], subtract: list[bool]) -> None:
    """:func:`project` for many gradients at once, each written back in place."""
    for G, B, sub in zip(grads, bases, subtract):
        G.copy_(project(G, B, sub))


def pseudo_labels(logits: Tensor, labels: Tensor | None = None,
                  forget_classes: Tensor | list[int] | None = None) -> Tensor:
    """The class the original model scores highest among those the sample may take.

    Class forgetting (``forget_classes`` given): mask every forgotten class. Sample-level
    forgetting (only ``labels``): mask the sample's own label.
    """
    masked = logits.detach().clone()
    if forget_classes is not None:
        idx = torch.as_tensor(forget_classes, device=logits.device, dtype=torch.long)
        masked[:, idx] = float("-inf")
    elif labels is not None:
        masked.scatter_(1, labels.view(-1, 1).long(), float("-inf"))
    else:
        raise ValueError("pseudo_labels needs forget_classes or labels")
    return masked.argmax(1)
