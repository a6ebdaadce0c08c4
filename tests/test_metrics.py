"""Metrics on data where the answer is known, the full evaluation, and the report schema."""
import copy
import json

import numpy as np
import pytest
import torch

from unsc_fast.lab import data as D
from unsc_fast.lab import metrics as M
from unsc_fast.lab import report as R
from unsc_fast.lab.models import build_model
from unsc_fast.lab.scenarios import Scenario
from unsc_fast.lab.train import train


def test_loss_mia_separable_members_are_found():
    rng = np.random.default_rng(0)
    members = rng.uniform(1e-4, 1e-2, 300)       # trained on: tiny losses
    nonmembers = rng.uniform(0.5, 3.0, 300)      # unseen: large losses
    assert M.loss_mia(members, nonmembers) > 0.95


def test_loss_mia_identical_distributions_are_chance():
    rng = np.random.default_rng(1)
    a, b = rng.exponential(1.0, 600), rng.exponential(1.0, 600)
    assert abs(M.loss_mia(a, b) - 0.5) < 0.07


def test_loss_mia_balances_and_needs_samples():
    rng = np.random.default_rng(2)
    # 1000 members vs 50 non-members: balanced subsampling, still near chance when identical.
    assert abs(M.loss_mia(rng.exponential(1, 1000), rng.exponential(1, 50)) - 0.5) < 0.2
    with pytest.raises(ValueError, match="at least 2"):
        M.loss_mia(np.ones(1), np.ones(5))


def test_svc_mia_on_known_answers():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.97, 1.0, (400, 1))          # confident on training samples
    nonmembers = rng.uniform(0.0, 1.0, (400, 1))        # spread on unseen samples
    seen_like = rng.uniform(0.98, 1.0, (200, 1))
    forgotten = rng.uniform(0.0, 0.3, (200, 1))         # low confidence: looks unseen
    assert M.svc_mia(members, nonmembers, seen_like) < 0.2
    assert M.svc_mia(members, nonmembers, forgotten) > 0.95
    with pytest.raises(ValueError):
        M.svc_mia(members, nonmembers[:0], forgotten)


def test_mia_features():
    logits = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    conf = M.mia_features(logits, labels, "confidence")
    assert conf.shape == (2, 1) and conf[0, 0] > 0.99 and abs(conf[1, 0] - 0.5) < 1e-9
    both = M.mia_features(logits, labels, "both")
    assert both.shape == (2, 2) and abs(both[1, 1] - np.log(2)) < 1e-9
    with pytest.raises(ValueError, match="unknown MIA feature"):
        M.mia_features(logits, labels, "loss")


@pytest.fixture(scope="module")
def trained():
    split = D.make_synthetic(num_classes=4, per_class=40, size=4)
    torch.manual_seed(0)
    model = build_model("mlp", split.input_shape, split.num_classes, width=0.25)
    train(model, D.loader(split.train, 16, True), epochs=8, lr=1e-2, progress=False)
    return split, model


@pytest.mark.parametrize("spec", [{"kind": "class", "classes": [1]},
                                  {"kind": "subclass", "classes": [1], "k": 2},
                                  {"kind": "random", "count": 12}], ids=lambda s: s["kind"])
def test_evaluate_every_scenario(trained, spec):
    split, model = trained
    ss = Scenario.from_dict(spec).split(split)
    m = M.evaluate(model, ss, split.test)
    assert set(m) == {"acc_r", "acc_f", "acc_test", "acc_dr", "acc_df", "mia_efficacy",
                      "mia_loss_acc", "per_class", "time_eval"}
    for k in ("acc_r", "acc_test", "acc_dr", "acc_df", "mia_efficacy", "mia_loss_acc"):
        assert 0.0 <= m[k] <= 100.0, k
    assert (m["acc_f"] is None) == (spec["kind"] == "random")
    assert len(m["per_class"]) == 4 and m["acc_r"] > 80
    if spec["kind"] == "class":      # the old API agrees with the new one
        old = M.class_accuracies(model, D.loader(split.test), [1], 4)
        assert abs(100 * old["acc_f"] - m["acc_f"]) < 1e-9
        assert abs(100 * old["acc_r"] - m["acc_r"]) < 1e-9
    assert M.evaluate(model, ss, split.test, mia=False)["mia_efficacy"] is None


# -- report -----------------------------------------------------------------------------------

def _runs():
    def metrics(acc_r, acc_f, mia):
        return {"acc_r": acc_r, "acc_f": acc_f, "acc_test": acc_r, "acc_dr": acc_r + 1,
                "acc_df": acc_f, "mia_efficacy": mia, "mia_loss_acc": 50.0,
                "per_class": [acc_r, acc_f, None], "time_eval": 0.1}
    runs = []
    for seed in (0, 1):
        runs.append({"method": "original", "seed": seed, "metrics": metrics(90, 95, 2.0),
                     "times": {"train": 1.0, "total": 1.0}, "info": {}})
        runs.append({"method": "retrain", "seed": seed, "metrics": metrics(91, 0, 100.0),
                     "times": {"train": 1.0, "total": 1.0}, "info": {}})
        runs.append({"method": "unsc", "seed": seed, "metrics": metrics(90 + seed, 2, 99.0),
                     "times": {"unlearn": 0.5, "total": 0.7}, "info": {"ranks": {"a": [3]}}})
    return runs


def _report():
    return R.build_report(
        command="compare", config={"seed": 0},
        dataset={"name": "toy", "num_classes": 3, "input_shape": [1, 2, 2], "n_train": 10,
                 "n_test": 5},
        model={"name": "mlp", "width": 1.0, "parameters": 10},
        scenario={"kind": "class", "classes": [1], "description": "class [1]",
                  "forget_classes": [1], "n_forget": 3, "n_retain": 7, "n_test_forget": 2},
        runs=_runs())


def test_report_schema_summary_and_gaps():
    rep = _report()
    R.validate_report(json.loads(R.to_json(rep)))       # survives a JSON round trip
    assert rep["schema"] == "unsc_fast.report/1" and rep["reference"] == "retrain"
    assert rep["methods"] == ["original", "retrain", "unsc"] and rep["seeds"] == [0, 1]
    s = rep["summary"]["unsc"]
    assert s["acc_r"] == {"mean": 90.5, "std": pytest.approx(0.7071, abs=1e-4), "n": 2}
    assert s["gap_test"]["mean"] == pytest.approx(((1 + 2) / 2 + (0 + 2) / 2) / 2)
    assert rep["summary"]["retrain"]["gap_test"]["mean"] == 0.0
    assert s["time"]["mean"] == pytest.approx(0.7)


@pytest.mark.parametrize("breakage", [
    lambda r: r.pop("summary"),
    lambda r: r.update(schema="other/1"),
    lambda r: r["runs"][0]["metrics"].pop("acc_f"),
    lambda r: r["runs"][0]["metrics"].update(acc_r=float("nan")),
    lambda r: r["runs"][0].update(method="ghost"),
    lambda r: r["runs"][1]["times"].pop("total"),
    lambda r: r["scenario"].pop("n_forget"),
    lambda r: r["summary"]["unsc"]["acc_r"].pop("std"),
])
def test_report_schema_rejects_broken_reports(breakage):
    rep = copy.deepcopy(_report())
    breakage(rep)
    with pytest.raises(ValueError, match="report field"):
        R.validate_report(rep)


def test_markdown_and_figures():
    rep = _report()
    md = R.markdown(rep)
    assert "| UNSC | 90.50 ± 0.71 |" in md and "| retrain |" in md
    files = R.render(rep)
    assert set(files) == {"report.json", "results.md", "per_class.png", "methods.png"}
    for name in ("per_class.png", "methods.png"):
        assert files[name][:8] == b"\x89PNG\r\n\x1a\n" and len(files[name]) > 5000
