"""Settings of every method for sample-level forgetting, chosen on validation seeds.

Each seed draws its own forget set (``unsc-fast compare`` keeps the one of ``data_seed``), so
the choice is not fitted to the forget set of the reported runs. For each seed: the original
model, the retrained one and a reseeded retrain (the noise floor) are trained once, then every (method, settings) of the grid runs on that original and is
scored by its sample-level gap to retrain (mean |Δ| over Acc_r, Acc_f, D_f train accuracy
and both MIAs, points; as ``unsc-fast compare`` reports it). The rule, the same for every
method: the smallest mean gap over the seeds among the settings whose Acc_r stays within
``--acc-drop`` of the original's on every seed (if none does, the smallest mean gap).

    python -m benchmarks.sample_grid --config examples/mnist5k_alexnet_random.toml \\
        --seeds 8 9 10 11 12 13 --grid GRID.json --out DIR

``GRID.json``: ``{"method": [{hyperparameters}, ...], ...}``. Writes ``runs.jsonl`` (one
line per seed and run, all metrics) and ``grid.md`` (the table, the choice per method).
Use seeds that no reported result uses. Seeds run one after another; to use more cores, run
disjoint seed lists into separate folders, then ``--rows A/runs.jsonl B/runs.jsonl`` builds
the one table from them (no training).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from unsc_fast.cli.config import build_config
from unsc_fast.cli.jobs import load_data
from unsc_fast.lab.baselines import Task, run_method
from unsc_fast.lab.metrics import evaluate
from unsc_fast.lab.report import GAP_SAMPLE
from unsc_fast.lab.scenarios import Scenario
from unsc_fast.lab.train import train_from_scratch


def gap(run: dict, ref: dict) -> float:
    d = [abs(run[k] - ref[k]) for k in GAP_SAMPLE if ref.get(k) is not None
         and run.get(k) is not None]
    return sum(d) / len(d)


def label(method: str, hp: dict) -> str:
    return method + "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
                            for k, v in hp.items())


def run_seed(cfg, data, grid: dict, seed: int) -> dict[str, dict]:
    """Metrics of the original, retrain, the reseeded retrain and every grid entry."""
    split = Scenario.from_dict(cfg["scenario"]).split(data, seed=seed)
    original, _ = train_from_scratch(cfg["model"], data.input_shape, data.num_classes,
                                     cfg["width"], data.train, cfg["train"], seed)
    holdout = split.holdout(data.test, cfg["unlearn.holdout_share"], cfg["data_seed"])
    task = Task(model=original, split=split, model_name=cfg["model"], width=cfg["width"],
                input_shape=tuple(data.input_shape), train=dict(cfg["train"]),
                unlearn=dict(cfg["unlearn"]), seed=seed, progress=False, holdout=holdout)

    def score(model):
        m = evaluate(model, split, data.test, seed=seed)
        m.pop("per_class", None)
        return m
    out = {"original": score(original)}
    for name in ("retrain", "retrain_reseeded"):
        out[name] = score(run_method(name, task).model)
    for method, settings in grid.items():
        for hp in settings:
            out[label(method, hp)] = score(run_method(method, task, **hp).model)
    return out


def choose(rows: list[dict], grid: dict, acc_drop: float) -> tuple[list[str], dict[str, str]]:
    """The table's lines and the chosen label per method."""
    seeds = [r["seed"] for r in rows]
    lines = [f"Seeds {seeds}. Gap: mean |Δ| to retrain over {', '.join(GAP_SAMPLE)}"
             " (points); ΔAcc_r: Acc_r − original's.", "",
             "| run | mean gap | gap per seed | worst ΔAcc_r | chosen |", "|---|---|---|---|---|"]
    stats = {}
    for name in rows[0]["metrics"]:
        if name == "retrain":
            continue
        gaps = [gap(r["metrics"][name], r["metrics"]["retrain"]) for r in rows]
        drop = min(r["metrics"][name]["acc_r"] - r["metrics"]["original"]["acc_r"] for r in rows)
        stats[name] = (statistics.mean(gaps), gaps, drop)
    chosen = {}
    for method, settings in grid.items():
        names = [label(method, hp) for hp in settings]
        ok = [n for n in names if stats[n][2] >= -acc_drop] or names
        chosen[method] = min(ok, key=lambda n: stats[n][0])
    for name, (mean, gaps, drop) in stats.items():
        mark = "**yes**" if name in chosen.values() else ""
        lines.append(f"| {name} | {mean:.2f} | {' '.join(f'{g:.2f}' for g in gaps)} |"
                     f" {drop:+.2f} | {mark} |")
    return lines, chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a compare config (data, model, scenario,"
                    " training and [unlearn] settings)")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds to run")
    ap.add_argument("--rows", type=Path, nargs="+", help="runs.jsonl files to tabulate instead")
    ap.add_argument("--grid", type=Path, required=True, help="JSON: method -> [settings]")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--acc-drop", type=float, default=0.5)
    args = ap.parse_args(argv)
    grid = json.loads(args.grid.read_text())
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        ap.error("--grid must map each method to a non-empty list of settings")
    if bool(args.seeds) == bool(args.rows):
        ap.error("give --seeds (run them) or --rows (tabulate earlier runs), not both")
    cfg = build_config(args.config)
    if cfg["scenario.kind"] not in ("subclass", "random"):
        ap.error("the grid is for sample-level scenarios (subclass, random)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.rows:
        rows = sorted((json.loads(line) for p in args.rows
                       for line in p.read_text().splitlines() if line.strip()),
                      key=lambda r: r["seed"])
    else:
        data = load_data(cfg)
        rows = []
        with open(args.out / "runs.jsonl", "w") as f:
            for seed in args.seeds:
                rows.append({"seed": seed, "metrics": run_seed(cfg, data, grid, seed)})
                f.write(json.dumps(rows[-1]) + "\n")
                f.flush()
                print(f"seed {seed} done", file=sys.stderr)
    lines, chosen = choose(rows, grid, args.acc_drop)
    lines += ["", "Chosen (smallest mean gap with ΔAcc_r ≥ "
              f"−{args.acc_drop:g} on every seed): " + "; ".join(chosen.values()), ""]
    (args.out / "grid.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
