"""The JSON report of a job, its markdown table and its figures.

Schema ``unsc_fast.report/1`` (every accuracy and MIA number in percent, times in seconds,
``null`` where a metric is undefined, e.g. Acc_f on test for random-sample forgetting)::

    {
      "schema": "unsc_fast.report/1",
      "version": str,                 # unsc_fast version
      "command": str,                 # train | unlearn | evaluate | compare
      "config": {...},                # the resolved configuration
      "dataset": {"name", "num_classes", "input_shape", "n_train", "n_test"},
      "model": {"name", "width", "parameters"},
      "scenario": {"kind", "classes", "description", "forget_classes", "n_forget",
                   "n_retain", "n_test_forget", ...},
      "seeds": [int],
      "methods": [str],               # in table order
      "reference": "retrain" | null,  # what the gaps are measured against
      "runs": [{
          "method": str, "seed": int,
          "metrics": {"acc_r", "acc_f", "acc_test", "acc_dr", "acc_df", "mia_efficacy",
                      "mia_loss_acc", "gap_test", "avg_gap", "gap_sample": float | null,
                      "per_class": [float | null], "time_eval": float},
          "times": {phase: float, ..., "total": float},
          "info": {...}               # method extras (ranks, losses, ...)
      }],
      "summary": {method: {metric: {"mean": float | null, "std": float | null, "n": int}}}
    }

``gap_test`` is the mean absolute difference to the retrained model of the same seed over
test Acc_r and Acc_f; ``avg_gap`` (SalUn's "average gap") over D_r and D_f train accuracy,
test Acc_r and Acc_f and MIA-efficacy; ``gap_sample`` (the sample-level target) over test
Acc_r and Acc_f, D_f train accuracy and both MIAs. ``summary`` metrics: those of ``metrics`` (without
``per_class``) plus ``time`` (the method's total seconds).
"""
from __future__ import annotations

import io
import json
import math

SCHEMA = "unsc_fast.report/1"
METRICS = ("acc_r", "acc_f", "acc_test", "acc_dr", "acc_df", "mia_efficacy", "mia_loss_acc",
           "gap_test", "avg_gap", "gap_sample")
SUMMARY_METRICS = METRICS + ("time",)
GAP_TEST = ("acc_r", "acc_f")
GAP_ALL = ("acc_dr", "acc_df", "acc_r", "acc_f", "mia_efficacy")
GAP_SAMPLE = ("acc_r", "acc_f", "acc_df", "mia_efficacy", "mia_loss_acc")
LABELS = {"original": "original", "retrain": "retrain",
          "retrain_reseeded": "retrain, other seed", "unsc": "UNSC",
          "finetune": "fine-tune", "grad_ascent": "gradient ascent",
          "random_labels": "random labels", "random_labels_proj": "random labels + proj.",
          "boundary_shrink": "boundary shrink", "salun": "SalUn"}


def _gap(run: dict, ref: dict, keys) -> float | None:
    d = [abs(run[k] - ref[k]) for k in keys if run.get(k) is not None and ref.get(k) is not None]
    return sum(d) / len(d) if d else None


def add_gaps(runs: list[dict], reference: str = "retrain") -> str | None:
    """Fill ``gap_test`` / ``avg_gap`` of every run against the reference of its seed."""
    refs = {r["seed"]: r["metrics"] for r in runs if r["method"] == reference}
    for r in runs:
        ref = refs.get(r["seed"])
        r["metrics"]["gap_test"] = _gap(r["metrics"], ref, GAP_TEST) if ref else None
        r["metrics"]["avg_gap"] = _gap(r["metrics"], ref, GAP_ALL) if ref else None
        r["metrics"]["gap_sample"] = _gap(r["metrics"], ref, GAP_SAMPLE) if ref else None
    return reference if refs else None


def _stats(values: list) -> dict:
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": m, "std": s, "n": len(v)}


def summarize(runs: list[dict], methods: list[str]) -> dict:
    out = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        out[m] = {k: _stats([r["metrics"].get(k) for r in rs]) for k in METRICS}
        out[m]["time"] = _stats([r["times"].get("total") for r in rs])
    return out


def build_report(*, command: str, config: dict, dataset: dict, model: dict, scenario: dict,
                 runs: list[dict], methods: list[str] | None = None) -> dict:
    """Assemble (and validate) a report from runs of ``{"method", "seed", "metrics",
    "times", "info"}``."""
    from .. import __version__
    methods = methods or list(dict.fromkeys(r["method"] for r in runs))
    reference = add_gaps(runs)
    report = {
        "schema": SCHEMA, "version": __version__, "command": command, "config": config,
        "dataset": dataset, "model": model, "scenario": scenario,
        "seeds": sorted({r["seed"] for r in runs}), "methods": methods,
        "reference": reference, "runs": runs, "summary": summarize(runs, methods),
    }
    validate_report(report)
    return report


def _num_or_none(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)
                         and math.isfinite(x))


def validate_report(r: dict) -> None:
    """Raise ``ValueError`` naming the first field that breaks schema ``unsc_fast.report/1``."""
    def need(cond, where):
        if not cond:
            raise ValueError(f"report field {where!r} does not follow {SCHEMA}")
    need(isinstance(r, dict), "$")
    need(r.get("schema") == SCHEMA, "schema")
    for key, typ in (("version", str), ("command", str), ("config", dict), ("dataset", dict),
                     ("model", dict), ("scenario", dict), ("seeds", list), ("methods", list),
                     ("runs", list), ("summary", dict)):
        need(isinstance(r.get(key), typ), key)
    need(r.get("reference") in (None, "retrain"), "reference")
    for key in ("name", "num_classes", "input_shape", "n_train", "n_test"):
        need(key in r["dataset"], f"dataset.{key}")
    for key in ("name", "width", "parameters"):
        need(key in r["model"], f"model.{key}")
    for key in ("kind", "description", "forget_classes", "n_forget", "n_retain",
                "n_test_forget"):
        need(key in r["scenario"], f"scenario.{key}")
    need(all(isinstance(s, int) for s in r["seeds"]), "seeds")
    need(len(r["runs"]) > 0, "runs")
    for i, run in enumerate(r["runs"]):
        need(isinstance(run, dict), f"runs[{i}]")
        need(run.get("method") in r["methods"], f"runs[{i}].method")
        need(isinstance(run.get("seed"), int), f"runs[{i}].seed")
        m = run.get("metrics")
        need(isinstance(m, dict), f"runs[{i}].metrics")
        for k in METRICS:
            need(k in m and _num_or_none(m[k]), f"runs[{i}].metrics.{k}")
        need(isinstance(m.get("per_class"), list)
             and all(_num_or_none(v) for v in m["per_class"]), f"runs[{i}].metrics.per_class")
        need(_num_or_none(m.get("time_eval")), f"runs[{i}].metrics.time_eval")
        t = run.get("times")
        need(isinstance(t, dict) and "total" in t and all(_num_or_none(v) for v in t.values()),
             f"runs[{i}].times")
        need(isinstance(run.get("info"), dict), f"runs[{i}].info")
    for m in r["methods"]:
        s = r["summary"].get(m)
        need(isinstance(s, dict), f"summary.{m}")
        for k in SUMMARY_METRICS:
            need(isinstance(s.get(k), dict) and {"mean", "std", "n"} <= set(s[k])
                 and _num_or_none(s[k]["mean"]) and _num_or_none(s[k]["std"]),
                 f"summary.{m}.{k}")
    json.dumps(r, allow_nan=False)          # serialisable, no NaN/Inf


def json_safe(x):
    """A strict-JSON copy: NaN and ±inf (a diverged loss, say) as None; tensors and numpy
    values through their ``tolist()``; tuples as lists."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "tolist"):                 # torch.Tensor, numpy array or scalar
        return json_safe(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def to_json(report: dict) -> bytes:
    return (json.dumps(report, indent=1, allow_nan=False) + "\n").encode()


# -- markdown ----------------------------------------------------------------------------------

def _fmt(s: dict, digits: int = 2) -> str:
    if s["mean"] is None:
        return "–"
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def markdown(report: dict) -> str:
    """A markdown summary: one row per method, mean ± std over seeds."""
    d, sc, mo = report["dataset"], report["scenario"], report["model"]
    seeds = report["seeds"]
    lines = [f"**{d['name']}** ({d['n_train']} train / {d['n_test']} test), model"
             f" **{mo['name']}** (width {mo['width']:g}, {mo['parameters']:,} parameters),"
             f" forgetting {sc['description']} ({sc['n_forget']} training samples);"
             f" {len(seeds)} seed{'s' if len(seeds) > 1 else ''} {seeds}"
             f"{', mean ± std' if len(seeds) > 1 else ''}.", "",
             "| method | Acc_r test % | Acc_f test % | D_r train % | D_f train % |"
             " MIA-efficacy % | loss-MIA acc % | gap to retrain | time s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in report["methods"]:
        s = report["summary"][m]
        lines.append(f"| {LABELS.get(m, m)} | {_fmt(s['acc_r'])} | {_fmt(s['acc_f'])} |"
                     f" {_fmt(s['acc_dr'])} | {_fmt(s['acc_df'])} | {_fmt(s['mia_efficacy'])} |"
                     f" {_fmt(s['mia_loss_acc'])} | {_fmt(s['gap_test'])} |"
                     f" {_fmt(s['time'], 1)} |")
    if sc.get("forget_classes") is None and report.get("reference"):
        lines += ["", "Sample-level gap to retrain (mean |Δ| of Acc_r, Acc_f, D_f train,"
                  " MIA-efficacy and loss-MIA; points): " + ", ".join(
                      f"{LABELS.get(m, m)} {_fmt(report['summary'][m]['gap_sample'])}"
                      for m in report["methods"]) + "."]
    lines += ["", "Acc_r / Acc_f: mean per-class test accuracy over the remaining / forgotten"
              " part. MIA-efficacy: share of D_f an SVC calls non-member (SalUn; retrain-like"
              " is the goal). loss-MIA: attack accuracy D_f vs. unseen test samples of the"
              " same population (50 = chance). gap to retrain: mean |Δ| of Acc_r and Acc_f"
              " to the retrained model of the same seed (percentage points)."]
    return "\n".join(lines) + "\n"


# -- figures -----------------------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _per_class_mean(report: dict, method: str) -> list[float]:
    rows = [r["metrics"]["per_class"] for r in report["runs"] if r["method"] == method]
    out = []
    for vals in zip(*rows):
        v = [x for x in vals if x is not None]
        out.append(sum(v) / len(v) if v else float("nan"))
    return out


def per_class_png(report: dict, methods: list[str] | None = None) -> bytes:
    """Grouped bars: test accuracy per class, before (original) and after unlearning."""
    import numpy as np
    methods = methods or [m for m in ("original", "retrain", "unsc") if m in report["methods"]]
    methods = methods or report["methods"][:3]
    k = report["dataset"]["num_classes"]
    fig = _figure(max(6.0, 0.6 * k + 2), 3.6)
    ax = fig.add_subplot()
    w = 0.8 / len(methods)
    x = np.arange(k)
    for i, m in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * w, _per_class_mean(report, m), w,
               label=LABELS.get(m, m))
    for c in report["scenario"].get("forget_classes") or []:
        ax.axvspan(c - 0.45, c + 0.45, color="0.85", zorder=0)
    ax.set_xticks(x)
    ax.set_xlabel("class (shaded: forgotten)")
    ax.set_ylabel("test accuracy %")
    ax.set_ylim(0, 105)
    ax.set_title(f"Per-class test accuracy: {report['dataset']['name']},"
                 f" {report['scenario']['description']}")
    ax.legend(fontsize=8, ncols=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return _png(fig)


def methods_png(report: dict) -> bytes:
    """Bars per method: Acc_r, Acc_f and MIA-efficacy (mean, std error bars over seeds)."""
    import numpy as np
    methods = report["methods"]
    keys = [("acc_r", "Acc_r test"), ("acc_f", "Acc_f test"), ("mia_efficacy", "MIA-efficacy")]
    fig = _figure(max(7.0, 0.9 * len(methods) + 2), 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(methods))
    w = 0.8 / len(keys)
    for i, (k, label) in enumerate(keys):
        s = [report["summary"][m][k] for m in methods]
        mean = [v["mean"] if v["mean"] is not None else 0.0 for v in s]
        std = [v["std"] if v["std"] is not None else 0.0 for v in s]
        lo = [min(s_, m_) for s_, m_ in zip(std, mean)]          # bars stay within 0..100
        hi = [min(s_, 100.0 - m_) for s_, m_ in zip(std, mean)]
        ax.bar(x + (i - 1) * w, mean, w, yerr=[lo, hi], capsize=2, label=label)
    ax.set_xticks(x, [LABELS.get(m, m) for m in methods], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(f"Methods: {report['dataset']['name']} / {report['model']['name']},"
                 f" {report['scenario']['description']}")
    ax.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return _png(fig)


def render(report: dict, figures: bool = True) -> dict[str, bytes]:
    """Every output file of a report by name: report.json, results.md, and the PNGs."""
    files = {"report.json": to_json(report), "results.md": markdown(report).encode()}
    if figures:
        files["per_class.png"] = per_class_png(report)
        files["methods.png"] = methods_png(report)
    return files
