"""Sample-level targets (unsc_fast.calibration): class- and proximity-matched held-out losses,
the distance to D_r, and the layer whose inputs are the features."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import unsc_fast as uf
from unsc_fast.calibration import (LossCalibration, Proximity, ProximityCalibration,
                                   head_layer, losses_and_distances)
from unsc_fast.lab import data as D

from toy_task import toy_task

D64 = torch.float64


def _prox(bank=None):
    return Proximity(torch.zeros(1, 1) if bank is None else bank)


def _cal(fl, fd, hl, hd, **kw):
    return ProximityCalibration(torch.as_tensor(fl, dtype=D64), torch.as_tensor(fd, dtype=D64),
                                torch.as_tensor(hl, dtype=D64), torch.as_tensor(hd, dtype=D64),
                                proximity=_prox(), head="x", **kw)


def test_proximity_is_the_mean_distance_to_the_k_nearest_retained_rows():
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(37, 5, generator=g), torch.randn(11, 5, generator=g)
    want = torch.cdist(q.double(), bank.double()).sort(1).values[:, :4].mean(1)
    for chunk in (1, 3, 1024):                   # chunking changes nothing
        got = Proximity(bank, k=4, chunk=chunk)(q)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # non-contiguous queries, and k above the bank size clamps to it
    torch.testing.assert_close(Proximity(bank, k=4)(q.t().contiguous().t()), want,
                               rtol=1e-5, atol=1e-5)
    assert Proximity(bank[:2], k=5).k == 2
    with pytest.raises(ValueError, match="width"):
        Proximity(bank)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="non-empty"):
        Proximity(torch.zeros(0, 5))


def test_far_forget_samples_get_the_targets_of_far_held_out_samples():
    """Held-out samples near D_r have low losses, far ones high losses; a forget sample is
    matched by its own distance. Ignoring the distance (a mutation) mixes the groups."""
    hl = [0.01] * 20 + [2.0] * 20
    hd = [1.0] * 20 + [9.0] * 20
    cal = _cal([1e-4, 1e-4], [1.0, 9.0], hl, hd, neighbours=20)
    t = cal(torch.tensor([1e-4, 1e-4], dtype=D64), torch.tensor([1.0, 9.0], dtype=D64))
    torch.testing.assert_close(t, torch.tensor([0.01, 2.0], dtype=D64))


def test_the_rank_is_taken_among_forget_samples_at_the_same_distance():
    """Far forget samples have higher original losses than near ones. Ranked among all of
    D_f they would land in the top quantiles of the far held-out losses (the distance
    counted twice); ranked among their distance peers each group spans its reference."""
    near, far = [0.001 * (i + 1) for i in range(10)], [0.1 * (i + 1) for i in range(10)]
    hl = [float(i) for i in range(10)] * 2            # each group: 0..9
    hd = [1.0] * 10 + [9.0] * 10
    cal = _cal(near + far, [1.0] * 10 + [9.0] * 10, hl, hd, neighbours=10)
    t = cal(torch.tensor(near + far, dtype=D64), torch.tensor([1.0] * 10 + [9.0] * 10,
                                                              dtype=D64))
    want = torch.arange(10, dtype=D64)
    torch.testing.assert_close(t[:10], want)
    torch.testing.assert_close(t[10:], want)


def test_one_distance_for_all_reduces_to_the_pooled_quantile_map():
    g = torch.Generator().manual_seed(1)
    fl, hl = torch.rand(8, generator=g, dtype=D64), torch.rand(30, generator=g, dtype=D64) + 1
    cal = _cal(fl, torch.ones(8), hl, torch.ones(30), neighbours=30)
    pooled = LossCalibration(fl, torch.zeros(8), hl, torch.zeros(30), min_per_class=10**6)
    torch.testing.assert_close(cal(fl, torch.ones(8, dtype=D64)), pooled(fl, torch.zeros(8)))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.integers(2, 60), st.integers(0, 2**31 - 1))
def test_targets_are_monotone_in_the_loss_and_inside_the_held_out_range(nf, nh, seed):
    g = torch.Generator().manual_seed(seed)
    fl, fd = torch.rand(nf, generator=g, dtype=D64), torch.rand(nf, generator=g, dtype=D64)
    hl, hd = torch.rand(nh, generator=g, dtype=D64), torch.rand(nh, generator=g, dtype=D64)
    cal = _cal(fl, fd, hl, hd)
    v = torch.linspace(0, 1, 17, dtype=D64)
    t = cal(v, torch.full((17,), float(fd[0]), dtype=D64))   # one distance, rising losses
    assert (t.diff() >= -1e-12).all()
    assert t.min() >= hl.min() - 1e-12 and t.max() <= hl.max() + 1e-12
    with pytest.raises(ValueError):
        _cal(fl, fd, hl[:1], hd[:1])


class _Late(nn.Module):
    """Registers its head first but runs it last: the head is found by running."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.body = nn.Linear(4, 6)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_the_head_is_the_last_layer_that_runs_and_its_inputs_are_the_features():
    m = _Late()
    x = torch.randn(5, 4)
    assert head_layer(m, x) == "head"
    bank = torch.relu(m.body(x)).detach()
    prox = Proximity.from_data(m, "head", [(x, torch.zeros(5))], "cpu")
    torch.testing.assert_close(prox.bank, bank)
    loss, y, dist = losses_and_distances(m, [(x, torch.zeros(5, dtype=torch.long))], "cpu",
                                         "head", prox)
    assert loss.shape == y.shape == dist.shape == (5,)
    torch.testing.assert_close(dist, prox(bank))
    with pytest.raises(ValueError, match="Linear or Conv"):
        head_layer(nn.ReLU(), x)


def test_unlearn_checks_the_calibration_before_touching_anything():
    _, model, forget, retain = toy_task()
    dl, rl = D.loader(forget, 12), D.loader(retain, 64)
    with pytest.raises(ValueError, match="calibration"):
        uf.unlearn(model, dl, rl, mode="sample", holdout=dl, calibration="nearest",
                   progress=False)
    bases = uf.unlearn(model, dl, rl, epochs=0, progress=False).bases
    with pytest.raises(ValueError, match="retain"):
        uf.unlearn(model, dl, None, bases=bases, mode="sample", holdout=dl, progress=False)
    with pytest.raises(TypeError, match="re-iterable"):
        uf.unlearn(model, dl, iter(list(rl)), mode="sample", holdout=dl, progress=False)
    # with class matching the retain data is not needed
    res = uf.unlearn(model, dl, None, bases=bases, mode="sample", holdout=dl,
                     calibration="class", epochs=1, progress=False)
    assert res.report.active == [0.0]


def test_proximity_mode_moves_a_far_cluster_more_than_near_samples():
    """End to end on the toy: D_f's targets come from held-out samples as far from D_r as
    each forget sample, so the forgotten samples' losses rise and the model stays finite."""
    split, model, forget, retain = toy_task()
    res = uf.unlearn(model, D.loader(forget, 6, True), D.loader(retain, 64), mode="sample",
                     holdout=D.loader(split.test, 64), lr=0.2, epochs=10, progress=False)
    assert res.report.active and res.report.active[-1] <= res.report.active[0]
    x, y = next(iter(D.loader(forget, 100)))
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(model(x), y)
        after = torch.nn.functional.cross_entropy(res.model(x), y)
    assert torch.isfinite(after) and after >= before
