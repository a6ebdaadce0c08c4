"""Per-seed tables of sample-level comparisons, from the ``report.json`` files that
``unsc-fast compare`` writes, with the goal of the sample-level issue checked per seed:

    python -m benchmarks.per_seed DIR [DIR ...] > per_seed.md

Columns: Acc_r, Acc_f, D_f train accuracy, MIA-efficacy, loss-MIA accuracy (%), the
sample-level gap to retrain (mean |Δ| over those five, points), Acc_r minus the original's.
Below each table: per seed, whether UNSC's gap is the smallest of every method but retrain
and the original, and whether its Acc_r is within 0.5 of the original's. When the report
holds ``retrain_reseeded`` (a second retrained model, another seed), its gap is the noise
floor: how far two models that never saw D_f lie apart by chance. It is shown per seed and
is not counted as a baseline.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from unsc_fast.lab.report import GAP_SAMPLE as COLUMNS
from unsc_fast.lab.report import LABELS as NAMES

NOT_BASELINES = ("unsc", "retrain", "original", "retrain_reseeded")
FLOOR = "retrain_reseeded"


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def table(report: dict) -> str:
    runs = report["runs"]
    orig = {r["seed"]: r["metrics"]["acc_r"] for r in runs if r["method"] == "original"}
    sc = report["scenario"]
    what = sc["description"] if sc["kind"] == "subclass" else \
        f"{100 * (sc['fraction'] or 0):g}% random samples" if sc["fraction"] else \
        f"{sc['count']} random samples"
    m = report["model"]
    out = [f"### {report['dataset']['name']} / {m['name']} (width {m['width']:g}): {what}", "",
           "| method | seed | Acc_r | Acc_f | D_f train | MIA-eff. | loss-MIA | sample gap"
           " | Acc_r − original |", "|---|---|---|---|---|---|---|---|---|"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    for name in methods:
        for r in sorted((r for r in runs if r["method"] == name), key=lambda r: r["seed"]):
            mt = r["metrics"]
            cells = [_fmt(mt[c]) for c in COLUMNS] + [_fmt(mt["gap_sample"]),
                                                      f"{mt['acc_r'] - orig[r['seed']]:+.2f}"]
            out.append(f"| {NAMES.get(name, name)} | {r['seed']} | " + " | ".join(cells) + " |")
    out += ["", "Goal per seed (UNSC's gap the smallest of the baselines; Acc_r ≥ original − 0.5):",
            ""]
    gaps = {name: [] for name in methods}
    for seed in sorted(orig):
        at = {r["method"]: r["metrics"] for r in runs if r["seed"] == seed}
        if "unsc" not in at:
            continue
        u = at["unsc"]["gap_sample"]
        best = min((mt["gap_sample"], n) for n, mt in at.items() if n not in NOT_BASELINES)
        drop = at["unsc"]["acc_r"] - orig[seed]
        floor = ""
        if FLOOR in at:
            f = at[FLOOR]["gap_sample"]
            floor = (f"; noise floor (a second retrained model) {f:.2f}, which would"
                     f" {'hold' if f < best[0] else 'FAIL'} too")
        out.append(f"- seed {seed}: UNSC gap {u:.2f}, best baseline {NAMES.get(best[1])}"
                   f" {best[0]:.2f} ({'holds' if u < best[0] else 'FAILS'}); Acc_r"
                   f" {drop:+.2f} ({'holds' if drop >= -0.5 else 'FAILS'}){floor}")
        for n, mt in at.items():
            gaps[n].append(mt["gap_sample"])
    means = ", ".join(f"{NAMES.get(n, n)} {statistics.mean(g):.2f}" for n, g in gaps.items()
                      if g and n != "retrain")
    out += [f"- mean gap over seeds: {means}", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="directories holding report.json")
    args = ap.parse_args(argv)
    print("\n".join(table(json.loads((d / "report.json").read_text())) for d in args.dirs))


if __name__ == "__main__":
    main()
