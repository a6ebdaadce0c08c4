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


def test_subspace_and_fallback_routes_are_both_taken():
    assert spectral.fast_core(power_law(700, 2.0), Energy(0.99)).method == "subspace"
    assert spectral.fast_core(power_law(200, 1.2), Energy(0.99)).method == "eigh32"


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
    rows = run([64], [2.0], 0.99)
    assert rows[0]["rank_fast"] >= rows[0]["rank_exact"]
    assert "| 64 | 2.0 |" in markdown(rows, {"torch_threads": 1, "cpu_model": "x", "torch": "t",
                                             "git_commit": "0" * 10})
