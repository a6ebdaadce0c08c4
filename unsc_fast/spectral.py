"""Core bases at LLM width without a full float64 ``eigh``.

A float64 ``eigh`` of a d x d covariance costs about 4-5 d³ flops and runs far below the
machine's matmul rate; at d = 4096 it takes 13-20 s on 2 CPU cores, at d = 14336 minutes.
The rank rules need only the head of the spectrum (the core holds a share ε of the energy, or
the eigenvalues above t·λ_max, or a fixed k), and the trace gives the total energy for free.
So :func:`fast_core` finds the core by randomized subspace iteration (Halko, Martinsson and
Tropp 2011, Alg. 4.4) in float32, which is matmuls and thin QRs only, and grows the block
until the Ritz values reach the rule:

1. ``Y = C Ω`` for a Gaussian Ω of k + p columns, then ``q`` rounds of ``Q = qr(Y); Y = C Q``;
2. Rayleigh-Ritz: ``T = Qᵀ C Q`` (small), ``T = V Θ Vᵀ``; Ritz vectors ``U = Q V``;
3. the rule applied to the Ritz values and trace(C); not reached within k: double k.

Why the protection cannot be weaker than the exact rule's: Ritz values are Rayleigh
quotients of orthonormal vectors and interlace below the true eigenvalues (θ_i ≤ λ_i), so
the energy the first r Ritz vectors hold is at most that of the top r eigenvectors; the rank
picked from the Ritz values is therefore never below the exact rank, and the energy the
chosen core retains is then measured (float64 sums of its float32 Rayleigh quotients) and r
grown until it reaches ε. When the core would need more than a third of d, iteration no longer
pays and the method falls back to a float32 ``eigh`` with the same float64 energy check.
:func:`unsc_fast.reference.eigh_desc` (float64) stays the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .rules import EigenFloor, Energy, FixedRank, Rule, Threshold

__all__ = ["FastCore", "fast_core", "retained_energy"]

_POWER_ROUNDS = 3          # q: the subspace error shrinks like (λ_{k+p+1}/λ_r)^(2q+1)
_MAX_FRACTION = 1.0 / 3.0  # above this block size a float32 eigh is cheaper than iterating


@dataclass(frozen=True)
class FastCore:
    """The core basis of one covariance: U_r (d, r), its rank, retained energy and route."""

    basis: Tensor
    rank: int
    retained: float
    method: str  # "subspace" or "eigh32" (the fallback)


def retained_energy(C: Tensor, U: Tensor) -> float:
    """trace(Uᵀ C U) / trace(C) in float64: the share of C's energy inside span(U)."""
    C64 = C.double()
    total = float(torch.diagonal(C64).sum())
    if total <= 0:
        return 1.0
    U64 = U.double()
    return float((U64 * (C64 @ U64)).sum()) / total


def _rank_from_head(rule: Rule, theta: Tensor, total: float, d: int) -> int | None:
    """The rule's core rank from the leading Ritz values, or None if they do not settle it."""
    lam = theta.clamp_min(0)
    if isinstance(rule, FixedRank):
        return min(rule.k, d) if rule.k <= lam.numel() else None
    if lam.numel() == 0 or total <= 0:
        return 0
    if isinstance(rule, Energy):
        if rule.eps <= 0:
            return 0
        cum = torch.cumsum(lam.double(), 0)
        hit = (cum >= rule.eps * total).nonzero()
        return int(hit[0]) + 1 if hit.numel() else None
    if isinstance(rule, Threshold):
        count = int((lam > rule.t * lam[0]).sum())
        return count if count < lam.numel() else None
    raise TypeError(f"rule {rule!r} has no head-of-spectrum form")


def _share(energies: Tensor, r: int, total: float) -> float:
    """Share of the energy held by the first r vectors. Each term is a float32 Rayleigh
    quotient (relative error about sqrt(d)·2^-24), summed in float64."""
    return float(energies[:r].sum()) / total if total > 0 else 1.0


def _grow_to_energy(rule: Rule, r: int, energies: Tensor, total: float) -> int:
    """Grow r until the measured energy of the first r vectors reaches ε (Energy rule only)."""
    if not isinstance(rule, Energy) or total <= 0:
        return r
    cum = torch.cumsum(energies, 0)
    while r < energies.numel() and (r == 0 or float(cum[r - 1]) < rule.eps * total):
        r += 1
    return r


def _next_block(rule: Rule, theta: Tensor, total: float, k: int) -> int:
    """The next block size: twice k, or for the energy rule a power-law extrapolation of the
    missing energy (``total - Σθ_{≤m}`` ∝ m^-β, fitted at m and m/2), so a core far past the
    block jumps there at once, or past d/3 straight to the fallback, without the doublings."""
    m = theta.numel()
    if not isinstance(rule, Energy) or m < 16 or total <= 0:
        return 2 * k
    cum = torch.cumsum(theta.clamp_min(0).double(), 0)
    miss_half, miss = total - float(cum[m // 2 - 1]), total - float(cum[-1])
    goal = (1.0 - rule.eps) * total
    if miss <= 0 or miss_half <= miss or goal <= 0:
        return 2 * k
    beta = math.log(miss_half / miss) / math.log(m / (m // 2))
    need = m * (miss / goal) ** (1.0 / beta)
    return max(2 * k, math.ceil(1.25 * need) + (k - m))


def _ritz(A: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Ritz values (descending), vectors and C·vectors of a k-column subspace iteration."""
    d = A.shape[0]
    Y = A @ torch.randn(d, k, generator=gen, dtype=A.dtype).to(A.device)
    for _ in range(_POWER_ROUNDS):
        Q, _ = torch.linalg.qr(Y)
        Y = A @ Q
    Q, _ = torch.linalg.qr(Y)
    W = A @ Q
    T = Q.mT @ W
    theta, V = torch.linalg.eigh(((T + T.mT) / 2).double())
    theta, V = theta.flip(0), V.flip(1).to(A.dtype)
    return theta, Q @ V, W @ V


def fast_core(C: Tensor, rule: Rule, *, seed: int = 0) -> FastCore:
    """The core basis U_r of a symmetric PSD ``C`` under ``rule``, without a float64 eigh.

    Supports :class:`Energy`, :class:`Threshold` and :class:`FixedRank`; :class:`EigenFloor`
    needs the smallest eigenvalue and is refused (use the reference ``eigh``). Deterministic
    for a given ``seed``.
    """
    if isinstance(rule, EigenFloor):
        raise ValueError("the fast basis method needs a head-of-spectrum rule (energy,"
                         " threshold, rank); the floor rule needs λ_min: use method='eigh'")
    d = C.shape[-1]
    A = C.float()
    A = (A + A.mT) / 2
    total = float(torch.diagonal(C).double().sum())  # the trace alone, not a copy of C
    gen = torch.Generator().manual_seed(seed)
    k = max(32, math.ceil(d / 32))
    if isinstance(rule, FixedRank):
        k = max(k, rule.k + 8)
    while k <= _MAX_FRACTION * d:
        theta, U, CU = _ritz(A, k, gen)
        head = k - max(8, k // 8)  # the last Ritz pairs converge slowest: not trusted
        r = _rank_from_head(rule, theta[:head], total, d)
        if r is not None:
            energies = (U.double() * CU.double()).sum(0)
            r = _grow_to_energy(rule, r, energies, total)
            if r <= k:
                return FastCore(U[:, :r], r, _share(energies, r, total), "subspace")
        k = _next_block(rule, theta[:head], total, k)
    evals, evecs = torch.linalg.eigh(A)
    evals, evecs = evals.flip(0), evecs.flip(1)
    r = _rank_from_head(rule, evals, total, d)
    r = d if r is None else r
    energies = (evecs * (A @ evecs)).double().sum(0)
    r = _grow_to_energy(rule, r, energies, total)
    return FastCore(evecs[:, :r], r, _share(energies, r, total), "eigh32")
