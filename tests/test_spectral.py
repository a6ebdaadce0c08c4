"""The fast basis method (unsc_fast.spectral) against the float64 eigh reference.

Contract: the core it returns is orthonormal, keeps at least the exact rule's energy (Energy),
and its rank is never below the exact one and at most 2 % (or 1) above it.
"""
from __future__ import annotations

import math

import pytest
import torch

import unsc_fast as uf
from unsc_fast import reference as ref
from unsc_fast import spectral
from unsc_fast.rules import EigenFloor, Energy, FixedRank, Threshold


def power_law(d: int, alpha: float, seed: int = 0) -> torch.Tensor:
    """A PSD matrix with eigenvalues i^-alpha in a random basis (activation-like decay)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (Q * torch.arange(1, d + 1, dtype=torch.float64) ** -alpha) @ Q.T


CASES = [(48, 2.0), (200, 1.2), (200, 2.0), (700, 2.0), (700, 3.0), (700, 1.5)]
RULES = [Energy(0.9), Energy(0.99), Threshold(0.01), FixedRank(5)]


@pytest.mark.parametrize("d,alpha", CASES)
@pytest.mark.parametrize("rule", RULES, ids=str)
def test_fast_core_keeps_the_exact_rules_energy_and_rank(d, alpha, rule):
    C = power_law(d, alpha)
    evals, _ = ref.eigh_desc(C)
    exact = rule.rank(evals)
    core = spectral.fast_core(C, rule)
    U = core.basis.double()
    torch.testing.assert_close(U.mT @ U, torch.eye(core.rank, dtype=torch.float64),
                               atol=1e-5, rtol=0)  # float32 vectors: orthonormal to ~1e-6
    assert exact <= core.rank <= max(exact + 1, math.ceil(1.02 * exact)), (exact, core.rank)
    measured = spectral.retained_energy(C, core.basis)
    assert abs(measured - core.retained) < 1e-5  # the reported share is the real one
    if isinstance(rule, Energy):
        assert measured >= rule.eps - 1e-6


def test_krylov_subspace_and_fallback_routes_are_all_taken():
    assert spectral.fast_core(power_law(700, 2.0), Energy(0.99)).method == "krylov"
    assert spectral.fast_core(power_law(700, 2.0), Threshold(0.01)).method == "subspace"
    assert spectral.fast_core(power_law(200, 1.2), Energy(0.99)).method == "eigh32"


def spectrum(evals: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A PSD matrix with the given eigenvalues in a random basis."""
    d = evals.numel()
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (Q * evals.double()) @ Q.T


def _i(n: int) -> torch.Tensor:
    return torch.arange(1, n + 1, dtype=torch.float64)


# spectra whose energy core is at most d/4, so the block Krylov route is the one taken
KRYLOV_SPECTRA = {
    "alpha1.0": (_i(600) ** -1.0, 0.7),
    "alpha1.5": (_i(512) ** -1.5, 0.95),
    "alpha2.0": (_i(400) ** -2.0, 0.99),
    "alpha1.5-rank-deficient": (torch.cat([_i(60) ** -1.5, torch.zeros(340)]), 0.99),
    "rank-deficient-eps1": (torch.cat([_i(60) ** -1.0, torch.zeros(340)]), 1.0),
    # two flat clusters of 30 (more than the block of 16) over a slow tail
    "clustered": (torch.cat([torch.ones(30), 0.3 * torch.ones(30), 1e-3 * _i(340) ** -0.5]),
                  0.95),
}


@pytest.mark.parametrize("name", KRYLOV_SPECTRA)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_krylov_route_keeps_energy_rank_and_orthonormality(name, dtype):
    evals, eps = KRYLOV_SPECTRA[name]
    C = spectrum(evals)
    rule = Energy(eps)
    exact = rule.rank(ref.eigh_desc(C)[0])
    core = spectral.fast_core(C.to(dtype), rule)
    assert core.method == "krylov"
    # never below the exact rank (the core's energy is measured); at most 2 % above, or 1
    assert exact <= core.rank <= max(exact + 1, math.ceil(1.02 * exact)), (exact, core.rank)
    U = core.basis.double()
    torch.testing.assert_close(U.mT @ U, torch.eye(core.rank, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    measured = spectral.retained_energy(C, core.basis)
    assert abs(measured - core.retained) < 1e-5
    assert measured >= eps - 1e-6


def test_krylov_route_takes_a_non_contiguous_input_and_is_deterministic_per_seed():
    C = spectrum(_i(500) ** -1.5)
    big = torch.zeros(600, 600, dtype=torch.float64)
    big[50:550, 50:550] = C
    view = big[50:550, 50:550]
    assert not view.is_contiguous()
    a, b = spectral.fast_core(view, Energy(0.95)), spectral.fast_core(C, Energy(0.95))
    assert a.method == "krylov" and a.rank == b.rank
    assert torch.equal(a.basis, b.basis)
    c = spectral.fast_core(C, Energy(0.95), seed=1)
    assert c.rank >= a.rank - 1 and not torch.equal(c.basis[:, :3], a.basis[:, :3])


def test_krylov_ranks_settle_from_above():
    """Ritz values of nested Krylov spaces only grow (interlacing): the energy rank read from
    them never rises as the space grows and never falls below the exact rank."""
    C = spectrum(_i(600) ** -1.5)
    rule = Energy(0.95)
    exact = rule.rank(ref.eigh_desc(C)[0])
    total = float(torch.diagonal(C).sum())
    lz = spectral._BlockLanczos(C.float(), 16, 288, torch.Generator().manual_seed(0))
    lz.grow(288)
    ranks = [lz.rank_at(rule, total, k) for k in range(64, 289, 32)]
    ranks = [r if r is not None else 601 for r in ranks]
    assert ranks == sorted(ranks, reverse=True) and ranks[-1] >= exact, (ranks, exact)
    Q = lz.Q[:, :288].double()
    torch.testing.assert_close(Q.mT @ Q, torch.eye(288, dtype=torch.float64), atol=1e-5, rtol=0)
    T = torch.triu(lz.T[:288, :288]).double()
    torch.testing.assert_close(T, torch.triu(Q.mT @ C @ Q), atol=1e-5, rtol=0)
    # the block Lanczos relation C Q = Q T + V R E_lastᵀ, whose last term gives the Ritz
    # pairs' residuals (the settling test): C u - θ u = V R s_last for u = Q s
    full = T + torch.triu(T, 1).mT
    V, R = lz.V.double(), lz.R.double()
    gap = C @ Q - Q @ full
    torch.testing.assert_close(gap[:, :-16], torch.zeros(600, 272, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert float((gap[:, -16:] - V @ R).norm()) < 1e-2 * float(R.norm())   # |R| ~ 4e-4 here


def test_floor_rule_is_refused():
    with pytest.raises(ValueError, match="floor"):
        spectral.fast_core(power_law(40, 2.0), EigenFloor(10))


def test_nullspace_fast_method_projects_like_eigh():
    """A spectrum with a clear gap: both methods find the same core, so the same projection."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 16))
    basis = torch.randn(300, 40)
    data = [torch.randn(256, 40) @ basis.T + 1e-3 * torch.randn(256, 300) for _ in range(4)]
    moments = uf.SecondMoments(model).collect(data, progress=False)
    exact = uf.NullSpace.from_moments(moments, "energy:0.999")
    fast = uf.NullSpace.from_moments(moments, "energy:0.999", method="fast")
    assert fast["0"].ranks == exact["0"].ranks == [40]
    G1 = torch.randn(16, 300)
    G2 = G1.clone()
    uf.ops.project_grads_([G1], exact["0"].bases, exact["0"].subtract)
    uf.ops.project_grads_([G2], fast["0"].bases, fast["0"].subtract)
    torch.testing.assert_close(G2, G1, atol=1e-4, rtol=1e-4)


def test_nullspace_rejects_an_unknown_method_before_any_work():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    moments = uf.SecondMoments(model).collect([torch.randn(8, 4)], progress=False)
    with pytest.raises(ValueError, match="method"):
        uf.NullSpace.from_moments(moments, method="svd")
    with pytest.raises(ValueError, match="floor"):
        uf.NullSpace.from_moments(moments, "floor:10", method="fast")


def test_basis_benchmark_smoke():
    from benchmarks.basis import covariance, markdown, run
    C = covariance(64, 2.0)
    torch.testing.assert_close(C, C.mT)
    assert torch.linalg.eigvalsh(C).min() > 0
    rows = run([64], [2.0], 0.99, reps=2)
    assert len(rows[0]["speedup_vs_eigh64_per_round"]) == 2
    assert rows[0]["rank_fast"] >= rows[0]["rank_exact"]
    assert "| 64 | 2.0 |" in markdown(rows, {"torch_threads": 1, "cpu_model": "x", "torch": "t",
                                             "git_commit": "0" * 10})


def test_krylov_core_grows_until_its_measured_energy_reaches_eps(monkeypatch):
    """The growth step guards the first guess: a rank read too low from the Ritz values (here
    forced 3 below) is grown back until the core's energy reaches ε."""
    rank_from_head = spectral._rank_from_head

    def too_low(*args):
        r = rank_from_head(*args)
        return None if r is None else max(0, r - 3)

    monkeypatch.setattr(spectral, "_rank_from_head", too_low)
    C = spectrum(_i(400) ** -2.0)
    core = spectral.fast_core(C, Energy(0.99))
    assert core.method == "krylov"
    assert core.rank == Energy(0.99).rank(ref.eigh_desc(C)[0])
    assert spectral.retained_energy(C, core.basis) >= 0.99 - 1e-6
