"""Core bases at LLM width without a full float64 ``eigh``.

A float64 ``eigh`` of a d x d covariance costs about 4-5 d³ flops and runs far below the
machine's matmul rate; at d = 4096 it takes 13-20 s on 2 CPU cores, at d = 14336 minutes.
The rank rules need only the head of the spectrum (the core holds a share ε of the energy, or
the eigenvalues above t·λ_max, or a fixed k), and the trace gives the total energy for free.
So :func:`fast_core` finds the core from a small subspace, in float32, with matmuls, thin
QRs and a small ``eigh`` only:

- energy rule: block Lanczos (block Krylov with full reorthogonalization, Rayleigh-Ritz).
  From a random block X of b columns it builds an orthonormal basis Q of span(X, CX, C²X,
  ...) and T = Qᵀ C Q a block at a time; the Ritz values (eigenvalues of T) give
  the rule. A Krylov space of k columns holds a polynomial of degree k/b in C, so it finds a
  wide core with far fewer columns than subspace iteration (at d = 4096, eigenvalues i^-1.5,
  ε = 0.99, the core of 1229 needs k ≈ 1.5 x 1229 with b = 64, against 4 passes of a block
  past d/3 for subspace iteration). Checks at growing k: while the rule is not reached, the
  Ritz values' power-law decay, summed up to d, extrapolates the core, and the space jumps to
  1.6 x that once two checks agree; once reached, the rank counts as settled when the Ritz
  pairs' residuals (free from the last block of T's eigenvectors) allow at most 1.5 % more
  rank than the exact one, else the space grows by k/8. Past d/2 columns the float32 eigh is
  cheaper and is used instead;
- threshold and fixed-rank rules: randomized subspace iteration (Halko, Martinsson and Tropp
  2011, Alg. 4.4), ``q`` rounds of ``Q = qr(C Q)``, Rayleigh-Ritz, the block doubled until
  the Ritz values settle the rule.

Why the protection cannot be weaker than the exact rule's: Ritz values are Rayleigh
quotients of orthonormal vectors and interlace below the true eigenvalues (θ_i ≤ λ_i), so
the energy the first r Ritz vectors hold is at most that of the top r eigenvectors; the rank
picked from the Ritz values is therefore never below the exact rank (and, the Krylov spaces
being nested, it only falls as the space grows). The energy the chosen core retains is the
float64 sum of its vectors' float32 Rayleigh quotients: on the Krylov route these are the
Ritz values themselves (θᵢ = sᵢᵀ T sᵢ), so the rank read from them already reaches ε and the
growth step below only guards a first guess read otherwise; the subspace route and the
fallback recompute the quotients uᵢᵀ C uᵢ and grow r until they reach ε. When the core needs
more than d/3 (subspace) or the Krylov space more than d/2, the method falls back to a float32
``eigh``.
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
_KRYLOV_MAX = 0.5          # a Krylov space past d/2: the float32 eigh is cheaper
_KRYLOV_SLACK = 1.6        # the Krylov space to grow to: 1.6 x the extrapolated core
_LEAK = 1e-5               # a new Krylov block this far from orthogonal to the others is redone
_SETTLED = 0.015           # settled: the residuals allow at most 1.5 % more rank than exact


@dataclass(frozen=True)
class FastCore:
    """The core basis of one covariance: U_r (d, r), its rank, retained energy and route."""

    basis: Tensor
    rank: int
    retained: float
    method: str  # "krylov" (energy rule), "subspace" (others) or "eigh32" (the fallback)


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


def _core_estimate(eps: float, theta: Tensor, total: float, d: int) -> int:
    """The energy rule's rank if the spectrum went on as the power law λ_i ∝ i^-a that the
    first quarter of the m Ritz values shows (fitted on [m/8, m/4]: at d = 4096 a Krylov Ritz
    value at m/2 was still 26 % low, at m/4 0.3 %), summed up to d: a spectrum ends at d, and a
    power law without that end puts a flat spectrum's core past d."""
    m = theta.numel()
    h, lo = m // 4, m // 8
    lam = theta[:h].clamp_min(0).double()
    cum = float(lam.sum())
    if cum >= eps * total:
        return int((torch.cumsum(lam, 0) < eps * total).sum()) + 1
    if lo < 2 or float(lam[lo]) <= 0 or float(lam[-1]) <= 0:
        return d
    a = math.log(float(lam[lo]) / float(lam[-1])) / math.log(h / (lo + 1))
    i = torch.arange(h + 1, d + 1, dtype=torch.float64)
    tail = cum + torch.cumsum(float(lam[-1]) * (i / h) ** -a, 0)
    return h + int((tail < eps * total).sum()) + 1


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


class _BlockLanczos:
    """An orthonormal basis Q of the block Krylov space span(X, CX, C²X, ...) of a random
    block X, with the projected matrix T = Qᵀ C Q (upper triangle), grown a
    block at a time. Spaces are nested, so T[:k, :k] is the projection for any k blocks."""

    def __init__(self, A: Tensor, b: int, cap: int, gen: torch.Generator):
        d = A.shape[0]
        self.A, self.b, self.k = A, b, 0
        self.Q = A.new_empty(d, cap)
        self.T = A.new_zeros(cap, cap)
        X = torch.randn(d, b, generator=gen, dtype=A.dtype).to(A.device)
        self.V = torch.linalg.qr(X)[0]  # no C·X first: the Krylov space takes C X next anyway
        self.R = A.new_zeros(b, b)

    def grow(self, k_to: int) -> None:
        b = self.b
        while self.k < k_to:
            k = self.k
            self.Q[:, k:k + b] = self.V
            Q = self.Q[:, :k + b]
            W = self.A @ self.V
            # block Lanczos: C Q_j lies in span(Q_{j-1}, Q_j, Q_{j+1}), so subtracting the last
            # two blocks removes nearly all of W's projection; one pass against all blocks then
            # removes what float32 round-off lets back in
            lo = max(0, k - b)
            H = Q[:, lo:].mT @ W
            Z = W - Q[:, lo:] @ H
            size = float(Z.norm(dim=0).max())
            H2 = Q.mT @ Z
            Z -= Q @ H2
            H2[lo:] += H
            self.T[:k + b, k:k + b] = H2  # column block j of Qᵀ C Q, rows up to j
            V, R = torch.linalg.qr(Z)
            self.R = R  # C Q = Q T + V R E_lastᵀ: the Ritz pairs' residuals are R s_last
            # a nearly dependent Z (the space has caught C's numerical range) gives a V whose
            # leak into Q is about the pass's round-off (2^-24 |Z|) times |R⁻¹|; where that
            # bound (2-3x above the leak measured at d = 4096) comes near the tolerance, the
            # leak is measured (one more GEMM) and removed once more if seen
            eye = torch.eye(b, dtype=R.dtype, device=R.device)
            r_inv = float(torch.linalg.solve_triangular(R, eye, upper=True).norm())
            if not math.isfinite(r_inv) or 2.0 ** -24 * size * r_inv > _LEAK / 4:
                G = Q.mT @ V
                if float(G.abs().max()) > _LEAK:
                    V = torch.linalg.qr(V - Q @ G)[0]
            self.V = V
            self.k += b

    def rank_at(self, rule: Rule, total: float, k: int) -> int | None:
        theta = torch.linalg.eigvalsh(self.T[:k, :k], UPLO="U").flip(0)
        return _rank_from_head(rule, theta, total, self.A.shape[0])


def _krylov(A: Tensor, rule: Energy, total: float, gen: torch.Generator
            ) -> FastCore | None:
    """The energy core from block Lanczos with Rayleigh-Ritz, or None when the Krylov space
    would pass d/2 (the float32 eigh is cheaper there)."""
    d = A.shape[0]
    b = max(16, min(64, d // 64))
    cap = max(b, int(_KRYLOV_MAX * d) // b * b)
    lz = _BlockLanczos(A, b, cap, gen)
    k, need = min(cap, 4 * b), None
    while True:
        lz.grow(k)
        theta, S = torch.linalg.eigh(lz.T[:k, :k], UPLO="U")
        theta, S = theta.flip(0), S.flip(1)
        r = _rank_from_head(rule, theta, total, d)
        step = max(2 * b, k // 8 // b * b)
        if r is not None:
            # residual test: a Ritz pair (θᵢ, uᵢ) with residual ρᵢ = |C uᵢ − θᵢ uᵢ| lies
            # within ρᵢ of an eigenvalue, so the top r Ritz values miss at most Σ ρᵢ of the
            # energy and the rank they give exceeds the exact one by about Σ ρᵢ / θ_r vectors
            # (at d = 4096, k = 1600-1984, that estimate was 1.25-5x the real excess)
            rho = (lz.R @ S[k - lz.b:k, :r]).norm(dim=0)
            excess = float(rho.double().sum()) / max(float(theta[r - 1]), 1e-300)
            if excess <= _SETTLED * r:
                # each Ritz value is its vector's energy, θᵢ = sᵢᵀ T sᵢ = uᵢᵀ C uᵢ; a float32
                # eigenvalue carries the same round-off as that quotient recomputed (at d =
                # 4096 both were within 1e-7 of the float64 uᵀCu), so no k x r product for it
                energies = theta.clamp_min(0).double()
                rr = _grow_to_energy(rule, r, energies, total)
                U = lz.Q[:, :k] @ S[:, :rr]
                return FastCore(U, rr, _share(energies, rr, total), "krylov")
            k_next = k + step
        else:
            # jump to the extrapolated core once two checks agree on it, else double
            need, est = _core_estimate(rule.eps, theta, total, d), need
            goal = math.ceil(_KRYLOV_SLACK * need / b) * b
            agree = est is not None and abs(need - est) <= 0.1 * need
            k_next = max(k + step, goal if agree else min(2 * k, goal))
        if k_next > cap:
            return None
        k = k_next


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
    A = torch.add(A, A.mT).mul_(0.5)  # one d x d temporary (plus the cast if C is not fp32)
    total = float(torch.diagonal(C).double().sum())  # the trace alone, not a copy of C
    gen = torch.Generator().manual_seed(seed)
    if isinstance(rule, Energy):
        core = _krylov(A, rule, total, gen)
        if core is not None:
            return core
    else:
        k = max(32, math.ceil(d / 32))
        if isinstance(rule, FixedRank):
            k = max(k, rule.k + 8)
        while k <= _MAX_FRACTION * d:
            theta, U, CU = _ritz(A, k, gen)
            head = k - max(8, k // 8)  # the last Ritz pairs converge slowest: not trusted
            r = _rank_from_head(rule, theta[:head], total, d)
            if r is not None:
                energies = (U.double() * CU.double()).sum(0)
                return FastCore(U[:, :r], r, _share(energies, r, total), "subspace")
            k *= 2
    evals, evecs = torch.linalg.eigh(A)
    evals, evecs = evals.flip(0), evecs.flip(1)
    r = _rank_from_head(rule, evals, total, d)
    r = d if r is None else r
    energies = (evecs * (A @ evecs)).double().sum(0)
    r = _grow_to_energy(rule, r, energies, total)
    return FastCore(evecs[:, :r], r, _share(energies, r, total), "eigh32")
