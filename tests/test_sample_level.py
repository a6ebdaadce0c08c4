"""UNSC's sample-level mode (``unlearn(mode="sample", holdout=...)``): targets come from
held-out data only, each sample stops once it looks unseen, the paper's path is unchanged."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import unsc_fast as uf
from unsc_fast.lab import data as D
from unsc_fast.lab.scenarios import Scenario
from unsc_fast.calibration import LossCalibration, calibrated_loss

from toy_task import toy_task


def test_calibration_maps_forget_losses_onto_held_out_quantiles():
    f, fy = torch.tensor([0.1, 0.2, 0.3, 0.01, 0.02, 0.03]), torch.tensor([0, 0, 0, 1, 1, 1])
    h = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0] + [5.0] * 8)
    hy = torch.tensor([0, 0, 0, 1, 1, 1] + [2] * 8)
    cal = LossCalibration(f, fy, h, hy, min_per_class=3)
    assert torch.allclose(cal(f, fy), torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0],
                                                   dtype=f.dtype))
    # same distributions: the identity (nothing to do)
    assert torch.allclose(LossCalibration(f, fy, f, fy, 3)(f, fy), f)
    # monotone, and a class with too few held-out samples uses the pooled held-out losses
    pooled = LossCalibration(f, fy, h, hy, min_per_class=4)
    t = pooled(f, fy)
    assert (t[:3].diff() >= 0).all() and t.min() >= 1.0 and t.max() <= 30.0
    with pytest.raises(ValueError):
        LossCalibration(f, fy, h[:1], hy[:1])


def test_samples_already_as_unseen_get_no_gradient():
    """Per-sample stopping: only samples below their held-out target move. A mutation that
    always relabels (no mask) fails here."""
    _, model, forget, _ = toy_task()
    x, y = next(iter(D.loader(forget, 100)))
    with torch.no_grad():
        l0 = F.cross_entropy(model(x), y, reduction="none")
    # held-out losses far below D_f's: every sample already looks unseen
    low = LossCalibration(l0, y, l0 * 0.5, y, min_per_class=1)
    clone = copy.deepcopy(model)
    loss, n = calibrated_loss(model, clone, low, x, y)
    assert n == 0 and float(loss.detach()) == 0.0
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in clone.parameters())
    # held-out losses above D_f's: every sample moves
    high = LossCalibration(l0, y, l0 * 3 + 0.5, y, min_per_class=1)
    loss, n = calibrated_loss(model, clone, high, x, y)
    assert n == len(y) and float(loss) > 0


def test_held_out_data_like_the_forget_set_leaves_the_model_unchanged_and_stops():
    _, model, forget, retain = toy_task()
    dl = D.loader(forget, 12)
    res = uf.unlearn(model, dl, D.loader(retain, 64), mode="sample", holdout=D.loader(forget, 12),
                     calibration="class", lr=0.5, epochs=10, progress=False)
    assert res.report.active == [0.0] and len(res.report.epoch_loss) == 1   # stopped at once
    for a, b in zip(model.state_dict().values(), res.model.state_dict().values()):
        assert torch.equal(a, b)


def test_sample_mode_moves_forget_losses_to_held_out_not_off_the_label():
    split, model, forget, retain = toy_task()
    x, y = next(iter(D.loader(forget, 100)))
    xt, yt = next(iter(D.loader(split.test, 1000)))
    xr, _ = next(iter(D.loader(retain, 1000)))
    with torch.no_grad():
        l0 = F.cross_entropy(model(x), y, reduction="none")
        lt = F.cross_entropy(model(xt), yt, reduction="none")
    # an easy toy: make the held-out data "harder" so there is something to match
    hold = torch.utils.data.TensorDataset(xt * 0.6, yt)
    with torch.no_grad():
        lh = F.cross_entropy(model(xt * 0.6), yt, reduction="none")
    assert lh.mean() > l0.mean() and lt.numel() > 0
    kw = dict(lr=0.2, epochs=40, progress=False)
    res = uf.unlearn(model, D.loader(forget, 6, True), D.loader(retain, 64), mode="sample",
                     holdout=D.loader(hold, 64), **kw)
    paper = uf.unlearn(model, D.loader(forget, 6, True), D.loader(retain, 64), **kw)
    with torch.no_grad():
        l1 = F.cross_entropy(res.model(x), y, reduction="none")
        acc_sample = float((res.model(x).argmax(1) == y).float().mean())
        acc_paper = float((paper.model(x).argmax(1) == y).float().mean())
        keep = float((res.model(xr).argmax(1) == model(xr).argmax(1)).float().mean())
    # the D_f losses rose towards the held-out ones, without overshooting far past them
    # (the per-sample stop is one-sided: a step can carry a sample past its target)
    assert l1.mean() > 3 * l0.mean() and l1.median() > 3 * l0.median()
    assert l1.mean() < 3 * lh.mean()
    # calibrated: D_f accuracy near the held-out one, not pushed off the label like the paper
    acc_hold = float((model(xt * 0.6).argmax(1) == yt).float().mean())
    assert acc_sample >= acc_paper and abs(acc_sample - acc_hold) <= 0.35
    assert keep >= 0.95
    assert res.report.active[-1] <= res.report.active[0]


def test_sample_mode_needs_held_out_data_and_sample_level_forgetting():
    _, model, forget, retain = toy_task()
    dl, rl = D.loader(forget, 12), D.loader(retain, 64)
    with pytest.raises(ValueError, match="holdout"):
        uf.unlearn(model, dl, rl, mode="sample", progress=False)
    with pytest.raises(ValueError, match="sample"):
        uf.unlearn(model, dl, rl, mode="sample", holdout=dl, forget_classes=[0], progress=False)
    with pytest.raises(ValueError, match="mode"):
        uf.unlearn(model, dl, rl, mode="retrain", progress=False)


def test_lab_holdout_excludes_the_test_forget_part():
    data = D.make_synthetic(num_classes=4, per_class=30, size=6)
    split = Scenario.from_dict({"kind": "subclass", "classes": [1], "k": 2}).split(data)
    h = split.holdout(data.test, share=1.0)
    chosen = torch.zeros(len(data.test), dtype=torch.bool)
    chosen[h.indices] = True
    assert not (chosen & split.test_forget).any()
    assert int(chosen.sum()) == int((~split.test_forget).sum())
    half = split.holdout(data.test, share=0.5)
    assert len(half) == round(0.5 * len(h)) and set(half.indices) <= set(h.indices)
    assert math.isfinite(len(half))


def test_cli_compare_runs_the_sample_mode_and_rejects_it_for_classes(tmp_path):
    import json

    from unsc_fast.cli import main
    from unsc_fast.cli.config import ConfigError, build_config
    cfg = tmp_path / "job.toml"
    cfg.write_text('dataset = "synthetic"\nmodel = "mlp"\nwidth = 0.125\n'
                   '[scenario]\nkind = "random"\nfraction = 0.1\n'
                   '[train]\nepochs = 2\nlr = 3e-3\n[unlearn]\nepochs = 2\nmode = "sample"\n'
                   '[compare]\nmethods = ["retrain", "unsc"]\n')
    out = tmp_path / "out"
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--quiet",
                 "--no-figures"]) == 0
    r = json.loads((out / "report.json").read_text())
    run = next(x for x in r["runs"] if x["method"] == "unsc")
    assert run["info"]["mode"] == "sample" and run["info"]["n_holdout"] > 0
    assert r["summary"]["retrain"]["gap_sample"]["mean"] == 0.0
    assert "Sample-level gap" in (out / "results.md").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nkind = "class"\n[unlearn]\nmode = "sample"\n')
    with pytest.raises(ConfigError, match="sample"):
        build_config(bad)


def test_stopping_at_the_epoch_limit_short_of_the_targets_is_reported():
    """Samples still below their targets when the epochs run out keep more of their fit than
    unseen ones: said, with the share, never left silent; a run that got there says nothing."""
    split, model, forget, retain = toy_task()
    xt, yt = next(iter(D.loader(split.test, 1000)))
    hold = D.loader(torch.utils.data.TensorDataset(xt * 0.6, yt), 64)
    with pytest.warns(RuntimeWarning, match=r"epoch limit \(1\) with \d+\.\d % of D_f") as rec:
        res = uf.unlearn(model, D.loader(forget, 6, True), D.loader(retain, 64),
                         mode="sample", holdout=hold, lr=1e-4, epochs=1, progress=False)
    assert res.report.active[-1] > 0
    share = f"{100 * res.report.active[-1]:.1f} %"
    assert [w for w in res.report.warnings if "epoch limit" in w] == [str(rec[-1].message)]
    assert share in str(rec[-1].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = uf.unlearn(model, D.loader(forget, 12), D.loader(retain, 64), mode="sample",
                          holdout=D.loader(forget, 12), calibration="class", lr=0.5,
                          epochs=10, progress=False)
    assert done.report.active == [0.0] and not done.report.warnings
