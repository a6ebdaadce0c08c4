"""The command line end to end on tiny data: every subcommand, config files, error paths."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unsc_fast import checkpoint as ck
from unsc_fast.cli import main
from unsc_fast.config import ConfigError, build_config
from unsc_fast.report import validate_report

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--model", "mlp", "--width", "0.125", "--quiet"]


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    d = tmp_path_factory.mktemp("orig")
    assert run("train", "--out", d / "orig.safetensors", *TINY, "--epochs", "3", "--lr",
               "3e-3") == 0
    return d / "orig.safetensors"


def _files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_train_writes_a_checkpoint_that_rebuilds(original, tmp_path):
    model, meta = ck.load_checkpoint(original)
    assert meta["model"] == "mlp" and meta["dataset"] == "synthetic"
    assert meta["method"] == "original" and meta["input_shape"] == [1, 8, 8]
    assert meta["fingerprint"] == ck.fingerprint(model)
    # deterministic with a seed, and torch format by extension
    assert run("train", "--out", tmp_path / "again.pt", *TINY, "--epochs", "3", "--lr",
               "3e-3") == 0
    assert ck.load_checkpoint(tmp_path / "again.pt")[1]["fingerprint"] == meta["fingerprint"]


def test_progress_bars_do_not_change_results(tmp_path):
    # AlexNet has dropout before BN: training ends with a BN recalibration pass over the
    # shuffled loader, whose order must not depend on whether a bar is drawn.
    args = ["--dataset", "mnist5k", "--model", "alexnet", "--width", "0.0625", "--epochs", "1"]
    assert run("train", "--out", tmp_path / "a.pt", *args, "--quiet") == 0
    assert run("train", "--out", tmp_path / "b.pt", *args) == 0
    fa = ck.load_checkpoint(tmp_path / "a.pt")[1]["fingerprint"]
    assert fa == ck.load_checkpoint(tmp_path / "b.pt")[1]["fingerprint"]


def test_retrain_baseline_via_exclude_classes(tmp_path, capsys):
    out = tmp_path / "retrain.pt"
    assert run("train", "--out", out, *TINY, "--epochs", "2", "--exclude-classes", "3") == 0
    meta = ck.load_checkpoint(out)[1]
    assert meta["method"] == "retrain" and meta["exclude_classes"] == [3]
    assert "left out" in capsys.readouterr().out


def test_stats_unlearn_evaluate_pipeline(original, tmp_path, capsys):
    st, bases = tmp_path / "stats.safetensors", tmp_path / "bases.pt"
    assert run("stats", "--checkpoint", original, "--out", st, "--bases-out", bases,
               "--forget", "3", "--quiet") == 0
    model, meta = ck.load_checkpoint(original)
    moments, job = ck.load_moments(st, model)
    assert job["checkpoint"] == meta["fingerprint"] and job["scenario"]["classes"] == [3]
    assert set(moments.moments) == {"net.1", "net.3", "net.5"}

    for src in (["--stats", st], ["--bases", bases], []):
        out = tmp_path / f"u{len(src)}{src[0][2] if src else ''}.safetensors"
        assert run("unlearn", "--checkpoint", original, "--out", out, *src, "--forget", "3",
                   "--epochs", "5", "--quiet") == 0
        assert ck.load_checkpoint(out)[1]["method"] == "unsc"
    rep = tmp_path / "unlearn.json"
    assert run("unlearn", "--checkpoint", original, "--out", tmp_path / "u.pt", "--stats", st,
               "--forget", "3", "--epochs", "5", "--report", rep, "--quiet") == 0
    r = json.loads(rep.read_text())
    validate_report(r)
    assert r["methods"] == ["original", "unsc"]
    after = r["runs"][1]["metrics"]
    assert after["acc_f"] < r["runs"][0]["metrics"]["acc_f"]

    ev = tmp_path / "eval.json"
    assert run("evaluate", "--checkpoint", original, tmp_path / "u.pt", "--out", ev,
               "--quiet") == 0          # the scenario comes from the unlearned checkpoint
    e = json.loads(ev.read_text())
    validate_report(e)
    assert e["scenario"]["forget_classes"] == [3] and e["methods"] == ["original", "unsc"]
    assert "| UNSC |" in capsys.readouterr().out


def test_unlearn_with_a_baseline_method(original, tmp_path):
    out = tmp_path / "ga.pt"
    assert run("unlearn", "--checkpoint", original, "--out", out, "--method", "salun",
               "--epochs", "2", "--forget", "1", "--quiet") == 0
    assert ck.load_checkpoint(out)[1]["method"] == "salun"


def test_compare_writes_report_table_and_figures(tmp_path):
    cfg = tmp_path / "job.toml"
    cfg.write_text('dataset = "synthetic"\nmodel = "mlp"\nwidth = 0.125\n'
                   '[scenario]\nkind = "subclass"\nclasses = [2]\nk = 2\n'
                   '[train]\nepochs = 2\nlr = 3e-3\n[unlearn]\nepochs = 3\n'
                   '[compare]\nmethods = ["retrain", "unsc", "finetune"]\n'
                   '[methods.finetune]\nepochs = 1\n')
    out = tmp_path / "deep" / "out"
    assert run("compare", "--config", cfg, "--seeds", "0", "1", "--out", out, "--quiet") == 0
    assert _files(out) == {"report.json", "results.md", "per_class.png", "methods.png"}
    r = json.loads((out / "report.json").read_text())
    validate_report(r)
    assert r["methods"] == ["original", "retrain", "unsc", "finetune"] and r["seeds"] == [0, 1]
    assert r["scenario"]["kind"] == "subclass" and r["scenario"]["forget_classes"] is None
    assert r["config"]["methods"]["finetune"] == {"epochs": 1}
    assert r["summary"]["retrain"]["gap_test"]["mean"] == 0.0
    assert "| UNSC |" in (out / "results.md").read_text()


def test_config_file_then_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('model = "alexnet"\nwidth = 0.5\n[unlearn]\nepochs = 7\nlr = 0.01\n'
                 '[scenario]\nclasses = [1, 2]\n')
    cfg = build_config(f, {"width": 0.25, "lr": None, "forget": None, "quiet": True})
    assert cfg["model"] == "alexnet" and cfg["width"] == 0.25          # flag wins
    assert cfg["unlearn.epochs"] == 7 and cfg["unlearn.lr"] == 0.01     # file kept
    assert cfg["scenario.classes"] == [1, 2] and cfg["train.epochs"] == 4  # default kept
    assert cfg.is_set("model") and not cfg.is_set("dataset") and cfg["quiet"] is True


@pytest.mark.parametrize("text,match", [
    ("modle = 'mlp'\n", "unknown config key 'modle'"),
    ("[unlearn]\nepoch = 3\n", "unknown config key 'unlearn.epoch'"),
    ("[unlearn]\nepochs = -1\n", "non-negative"),
    ("[methods.forget_all]\nlr = 1\n", "unknown method"),
    ("width = [\n", "not valid TOML"),
    ("[unlearn]\nrule = 'energy:2'\n", "eps"),
    ("[compare]\nseeds = []\n", "non-empty"),
])
def test_bad_config_files(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        build_config(f, {})


# -- error paths: exit status 1, one clear line on stderr, nothing left behind ------------------

def _fails(capsys, out_dir: Path, *args, match: str):
    before = _files(out_dir)
    assert run(*args) == 1
    err = capsys.readouterr().err
    assert "error:" in err and match in err, err
    assert _files(out_dir) == before, "a failed command left files behind"


def test_errors(original, tmp_path, capsys):
    o = tmp_path
    _fails(capsys, o, "evaluate", "--checkpoint", o / "missing.pt", "--quiet",
           match="not found")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "no" / "dir.pt",
           "--quiet", match="does not exist")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--forget",
           "12", "--quiet", match="unknown class [12]")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--scenario",
           "random", "--fraction", "0.0001", "--quiet", match="forget set is empty")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--model",
           "small_cnn", "--quiet", match="but the config asks for model='small_cnn'")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--dataset",
           "digits", "--quiet", match="dataset='digits'")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.txt", "--quiet",
           match="unknown file extension")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--method",
           "forget_harder", "--quiet", match="unknown unlearning method")
    _fails(capsys, o, "train", "--out", o / "m.pt", "--dataset", "imagenet", "--quiet",
           match="unknown dataset 'imagenet'")
    _fails(capsys, o, "train", "--out", o / "m.pt", "--dataset", "synthetic", "--model",
           "transformer", "--quiet", match="unknown model 'transformer'")
    _fails(capsys, o, "train", "--out", o / "m.pt", "--dataset", "cifar10", "--quiet",
           match="--data-root")
    _fails(capsys, o, "train", "--out", o / "m.pt", *TINY, "--exclude-classes", "10",
           match="unknown class [10]")
    _fails(capsys, o, "compare", "--out", o / "cmp", "--dataset", "synthetic", "--forget",
           "42", "--quiet", match="unknown class [42]")
    assert not (o / "cmp").exists()


def test_mismatched_or_corrupt_files(original, tmp_path, capsys):
    o = tmp_path
    (o / "junk.safetensors").write_bytes(b"\x00" * 64)
    _fails(capsys, o, "evaluate", "--checkpoint", o / "junk.safetensors", "--quiet",
           match="cannot be read")
    torch.save({"tensors": {}, "unsc_fast": {"format": "unsc_fast.checkpoint/1",
                                             "model": "mlp", "width": 0.5,
                                             "input_shape": [1, 8, 8], "num_classes": 10}},
               o / "wrong.pt")
    _fails(capsys, o, "evaluate", "--checkpoint", o / "wrong.pt", "--quiet",
           match="does not match model 'mlp'")
    # statistics computed for another checkpoint, or for another D_r
    other = o / "other.pt"
    assert run("train", "--out", other, *TINY, "--epochs", "1", "--seed", "5") == 0
    assert run("stats", "--checkpoint", other, "--out", o / "s.pt", "--quiet") == 0
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--stats",
           o / "s.pt", "--quiet", match="another checkpoint")
    assert run("stats", "--checkpoint", original, "--out", o / "s5.pt", "--forget", "5",
               "--quiet") == 0
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--stats",
           o / "s5.pt", "--forget", "3", "--quiet", match="a different D_r")


def test_demo_still_prints_its_table(capsys):
    assert run("demo", "--dataset", "synthetic", "--model", "mlp", "--train-epochs", "2",
               "--epochs", "3", "--quiet") == 0
    out = capsys.readouterr().out
    assert "| model | Acc_r test % | Acc_f test % | D_r train % | D_f train % | time s |" in out
    assert "| UNSC |" in out


def _subprocess(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "unsc_fast", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_exit_codes_of_a_real_process(tmp_path):
    p = _subprocess("evaluate", "--checkpoint", "missing.safetensors", "--quiet", cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip() == ("unsc-fast evaluate: error: checkpoint 'missing.safetensors'"
                                " not found")
    p = _subprocess("train", cwd=tmp_path)              # --out missing: a usage error
    assert p.returncode == 2 and "--out" in p.stderr
    p = _subprocess("--help", cwd=tmp_path)
    assert p.returncode == 0
    for sub in ("demo", "train", "stats", "unlearn", "evaluate", "compare"):
        assert sub in p.stdout
    assert list(tmp_path.iterdir()) == []
