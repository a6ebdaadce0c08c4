"""Memory estimates and bases built a group of layers at a time (unsc_fast.budget)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import unsc_fast as uf
from unsc_fast import budget


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 4))


def test_estimate_counts_every_layer_in_bytes():
    est = budget.estimate(mlp(), dtype=torch.float64)
    assert [(e.name, e.d, e.stats_bytes) for e in est] == [
        ("0", 24, 24 * 24 * 8), ("2", 32, 32 * 32 * 8), ("4", 16, 16 * 16 * 8)]
    with torch.device("meta"):  # shapes only: no memory for a large model
        big = nn.Linear(14336, 4096)
    assert budget.estimate(big)[0].stats_bytes == 14336 ** 2 * 4


@pytest.mark.parametrize("budget_mb", [0.003, 0.005, 10.0])  # one layer a group .. all at once
def test_groups_give_the_same_bases_as_all_layers_at_once(budget_mb):
    model = mlp()
    data = [torch.randn(64, 24) for _ in range(3)]
    whole = uf.NullSpace.from_moments(
        uf.SecondMoments(model).collect(data, progress=False), "energy:0.95")
    with pytest.warns(UserWarning, match="over the budget") if budget_mb < 0.004 else \
            _no_warning():
        grouped = budget.bases_in_groups(model, data, "energy:0.95", budget_mb=budget_mb)
    assert list(grouped) == list(whole)
    for name in whole:
        assert grouped[name].ranks == whole[name].ranks
        torch.testing.assert_close(grouped[name].bases[0], whole[name].bases[0])


def test_groups_refuse_one_shot_data_and_bad_budgets():
    with pytest.raises(TypeError, match="re-iterable"):
        budget.bases_in_groups(mlp(), iter([torch.randn(4, 24)]), budget_mb=1)
    with pytest.raises(ValueError, match="budget_mb"):
        budget.bases_in_groups(mlp(), [torch.randn(4, 24)], budget_mb=0)


class _no_warning:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
