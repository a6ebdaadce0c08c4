"""The benchmark suite runs: smallest shapes, one repetition, into a temporary folder.

Checks the JSON schema of ``results.json`` (what README tables and plots are built from), not
any timing. Runs ``benchmarks.run.main`` in-process with one thread and one memory-worker
process for all cases (about 15 s on a busy 2-core machine).
"""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "benchmarks" / "run.py").is_file():  # an installed package without a checkout
    pytest.skip("benchmarks/ is not next to the tests", allow_module_level=True)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402

CASE_KEYS = {
    "op": str, "shape_set": str, "label": str, "params": dict, "dtype": str, "backend": str,
    "impl": str, "status": str, "median_s": float, "q1_s": float, "q3_s": float,
    "iqr_s": float, "min_s": float, "max_s": float, "reps": int, "inner": int,
    "flops": float, "bytes": float, "input_bytes": int, "GBps": float, "TFLOPs": float,
}
NULLABLE = ("ratio_vs_reference", "ratio_vs_torch", "pct_roofline", "pct_bw",
            "pct_peak_flops", "peak_mem_bytes", "max_rel_err")


def test_run_smoke_writes_the_schema(tmp_path):
    threads = torch.get_num_threads()
    try:
        rc = run.main(["--device", "cpu", "--preset", "smoke", "--reps", "1", "--threads", "1",
                       "--memory", "shared", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["schema"] == run.SCHEMA
    meta = res["meta"]
    for k in ("date", "device", "cpu_model", "torch", "preset", "backend_availability"):
        assert k in meta, k
    assert meta["backend_availability"]["reference"] == "available"
    roof = res["roofline"]
    assert roof["copy_GBps"] > 0 and roof["matmul_TFLOPs"]["float32"] > 0

    ok = [c for c in res["cases"] if c["status"] == "ok"]
    assert {c["op"] for c in ok} == {"accumulate", "accumulate_conv", "project_grads", "eigh"}
    for c in ok:
        for k, t in CASE_KEYS.items():
            assert isinstance(c[k], t) or (t is float and isinstance(c[k], int)), (k, c[k])
        for k in NULLABLE:
            assert k in c and (c[k] is None or isinstance(c[k], (int, float))), k
        assert c["median_s"] > 0 and c["min_s"] <= c["median_s"] <= c["max_s"]
    # every op with backends has the reference, the torch primitive, and their ratios
    for op in ("accumulate", "accumulate_conv", "project_grads"):
        impls = {c["backend"]: c for c in ok if c["op"] == op}
        assert {"reference", "torch"} <= set(impls), (op, set(impls))
        assert impls["reference"]["ratio_vs_reference"] == pytest.approx(1.0)
        assert impls["torch"]["max_rel_err"] < 1e-4
        assert impls["reference"]["peak_mem_bytes"] is not None
    # Triton's interpreter is never timed on CPU
    assert "triton" not in {c["backend"] for c in ok}

    e2e = res["e2e"]
    names = [r["pipeline"] for r in e2e["rows"]]
    assert any(n.startswith("unsc_fast[reference]") for n in names)
    assert any(n.startswith("authors-style") for n in names)
    assert any(n.startswith("retrain") for n in names)
    for r in e2e["rows"]:
        assert r["time_total_s"] > 0 and 0 <= r["acc_r"] <= 100

    for name in ("summary.md", "table.md"):
        assert (tmp_path / name).read_text().strip()


def test_distributed_benchmark_smoke(tmp_path):
    """benchmarks.distributed on 2 gloo ranks, one tiny layer set, one repetition (~8 s)."""
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not built")
    from benchmarks import distributed
    distributed.main(["--model", "resnet18", "--layers", "2", "--world", "2", "--reps", "1",
                      "--out", str(tmp_path)])
    res = json.loads((tmp_path / "distributed.json").read_text())
    assert res["world"] == 2 and res["layers"] == 2 and res["d_max"] == 576
    steps = res["results"]
    full, packed = steps["all_reduce"].values()
    assert packed["bytes"] < full["bytes"]  # only the upper block rows travel
    for impls in steps.values():
        for v in impls.values():
            assert v["median_s"] > 0
    assert (tmp_path / "distributed.md").read_text().startswith("### unsc_fast distributed")


def test_step_benchmark_smoke(tmp_path):
    """benchmarks.step on the small CNN, one repetition: every way of projecting is timed."""
    from benchmarks import step
    assert step.main(["--models", "small_cnn", "--reps", "1", "--batch", "8",
                      "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "step.json").read_text())
    impls = {r["impl"] for r in res["rows"]}
    assert {"no projection", "project_[reference]", "projected_backward[reference]"} <= impls
    assert all(r["median_ms"] > 0 for r in res["rows"])
    assert (tmp_path / "step.md").read_text().startswith("### One UNSC step")


def test_per_seed_goal_check_keeps_the_noise_floor_out_of_the_baselines():
    from benchmarks import per_seed

    def run(method, seed, gap, acc_r=97.0):
        m = {k: 50.0 for k in per_seed.COLUMNS}
        m.update(acc_r=acc_r, acc_f=None, gap_sample=gap)
        return {"method": method, "seed": seed, "metrics": m}
    report = {"dataset": {"name": "d"}, "model": {"name": "m", "width": 1.0},
              "scenario": {"kind": "random", "fraction": 0.1, "count": None},
              "runs": [run("original", 0, 1.0), run("retrain", 0, 0.0), run("unsc", 0, 0.5),
                       run("finetune", 0, 0.6), run("retrain_reseeded", 0, 0.4),
                       run("original", 1, 1.0), run("retrain", 1, 0.0),
                       run("unsc", 1, 0.7, acc_r=96.4), run("finetune", 1, 0.6),
                       run("retrain_reseeded", 1, 0.8)]}
    lines = [x for x in per_seed.table(report).splitlines() if x.startswith("- seed")]
    assert lines[0].startswith("- seed 0: UNSC gap 0.50, best baseline fine-tune 0.60 (holds)")
    assert "noise floor (a second retrained model) 0.40, which would hold too" in lines[0]
    assert "(FAILS); Acc_r -0.60 (FAILS)" in lines[1]
    assert "0.80, which would FAIL too" in lines[1]


def test_sample_grid_chooses_per_method_by_one_rule(tmp_path):
    from benchmarks import sample_grid
    cfg = tmp_path / "c.toml"
    cfg.write_text('dataset = "synthetic"\nmodel = "mlp"\nwidth = 0.25\n'
                   '[scenario]\nkind = "random"\ncount = 8\n'
                   '[train]\nepochs = 2\nlr = 0.01\nbatch_size = 32\n'
                   '[unlearn]\nmode = "sample"\nepochs = 2\nlr = 0.01\nbatch_size = 16\n')
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({"finetune": [{"lr": 0.01, "epochs": 1}, {"lr": 0.0, "epochs": 1}],
                                "unsc": [{"lr": 0.01}]}))
    rc = sample_grid.main(["--config", str(cfg), "--seeds", "0", "1", "--grid", str(grid),
                           "--out", str(tmp_path / "out")])
    assert rc == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "runs.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [0, 1]
    names = set(rows[0]["metrics"])
    assert names == {"original", "retrain", "retrain_reseeded", "finetune lr=0.01 epochs=1",
                     "finetune lr=0 epochs=1", "unsc lr=0.01"}
    # lr 0 leaves the original as it is: its gap must equal the original's, seed by seed
    for r in rows:
        m, ref = r["metrics"], r["metrics"]["retrain"]
        assert sample_grid.gap(m["finetune lr=0 epochs=1"], ref) == sample_grid.gap(
            m["original"], ref)
    table = (tmp_path / "out" / "grid.md").read_text()
    _, chosen = sample_grid.choose(rows, json.loads(grid.read_text()), 0.5)
    assert set(chosen) == {"finetune", "unsc"} and "; ".join(chosen.values()) in table
    # the same table again from the rows alone, without training
    assert sample_grid.main(["--config", str(cfg), "--rows", str(tmp_path / "out" / "runs.jsonl"),
                             "--grid", str(grid), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "grid.md").read_text() == table


def test_sample_grid_rule_skips_settings_that_cost_acc_r():
    from benchmarks import sample_grid

    def m(acc_r, df):
        return {"acc_r": acc_r, "acc_f": None, "acc_df": df, "mia_efficacy": 1.0,
                "mia_loss_acc": 50.0}
    grid = {"finetune": [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}], "unsc": [{"lr": 1.0}]}
    rows = [{"seed": s, "metrics": {
        "original": m(97.0, 100.0), "retrain": m(97.0, 98.0), "retrain_reseeded": m(97.0, 99.0),
        "finetune lr=0.1": m(96.0, 98.0),            # closest, but Acc_r -1 on both seeds
        "finetune lr=0.2": m(97.0, 99.0 + s),        # mean gap (0.25 + 0.5) / 2
        "finetune lr=0.3": m(97.0, 99.4),            # 0.35 on both
        "unsc lr=1": m(95.0, 98.0)}} for s in (0, 1)]  # alone, so chosen though it drops
    lines, chosen = sample_grid.choose(rows, grid, 0.5)
    assert chosen == {"finetune": "finetune lr=0.3", "unsc": "unsc lr=1"}
    assert any(x.startswith("| finetune lr=0.3 | 0.35 |") and "**yes**" in x for x in lines)
    assert not any(x.startswith("| retrain |") for x in lines)          # the reference
    assert sample_grid.choose(rows, grid, 1.5)[1]["finetune"] == "finetune lr=0.1"
