"""The command line end to end on tiny data: every subcommand, config files, error paths."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unsc_fast.cli import checkpoint as ck
from unsc_fast.cli import main
from unsc_fast.cli.config import ConfigError, build_config
from unsc_fast.lab.report import validate_report

from cli_helpers import ROOT, TINY, run  # noqa: E402


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
    ("[unlearn]\nepochs = -1\n", "must be a positive integer"),
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


# -- bad input found in review: each is one line on stderr, exit 1, nothing written -------------

def _one_line_error(capsys, *args, match: str) -> str:
    assert run(*args) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and match in lines[0], err
    return lines[0]


@pytest.mark.parametrize("args,match", [
    (["--dataset", "nope"], "unsc-fast demo: error: unknown dataset 'nope'"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--epochs", "-1"], "unlearn.epochs (--epochs) must be a positive integer"),
    (["--lr", "nan"], "unlearn.lr (--lr) must be a positive (finite) number"),
    (["--batch-size", "0"], "must be a positive integer"),
    (["--rule", "energy:5"], "energy eps"),
    (["--forget", "3", "3"], "more than once"),
    (["--forget", "12"], "unknown class [12]"),
    (["--forget", *map(str, range(10))], "every class would be forgotten"),
])
def test_demo_bad_input_is_one_line_before_any_training(capsys, args, match):
    # --train-epochs 50 would take long: every check must come before the training
    _one_line_error(capsys, "demo", "--dataset", "synthetic", "--model", "mlp",
                    "--train-epochs", "50", "--quiet", *args, match=match)


@pytest.mark.parametrize("text,match", [
    ("quiet = 'yes'\n", "quiet (--quiet) must be true or false"),
    ("[evaluate]\nmia = 'no'\n", "evaluate.mia (--no-mia) must be true or false"),
    ("[unlearn]\ninclude_bias = 'no'\n", "must be true or false"),
    ("data_root = 5\n", "data_root (--data-root) must be a string"),
    ("[unlearn]\nlr = inf\n", "must be a positive (finite) number"),
    ("[unlearn]\nepochs = 0\n", "must be a positive integer"),
    ("[train]\nepochs = 0\n", "must be a positive integer"),
    ("[train]\nmomentum = 1.5\n", "train.momentum must be a number in [0, 1)"),
    ("[unlearn]\nmax_retain_samples = -5\n", "must be a positive integer"),
    ("[scenario]\nkind = 'random'\nfraction = '0.1'\n", "must be a number in (0, 1)"),
    ("[scenario]\nkind = 'random'\ncount = 2.5\n", "must be a positive integer"),
    ("[scenario]\nkind = 'random'\ncount = 5\nfraction = 0.1\n", "not both"),
    ("[scenario]\nclasses = [3, 3]\n", "more than once"),
    ("[scenario]\nk = 1\n", "scenario.k"),
    ("[scenario]\nkind = 'all'\n", "scenario.kind (--scenario) must be one of"),
    ("[methods.finetune]\nlr = 'fast'\n", "[methods.finetune] lr must be a finite number"),
    ("[methods.finetune]\nlrr = 0.1\n", "unknown hyperparameter(s) ['lrr']"),
    ("[methods.salun]\nsparsity = 1.5\n", "sparsity must be a number in [0, 1)"),
    ("[methods.unsc]\ndropout = 1\n", "dropout must be true or false"),
    ("[methods.unsc]\nrule = 'x'\n", "bad rank rule"),
    ("backend = 'nope'\n", "unknown backend 'nope'"),
])
def test_config_types_and_ranges(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        build_config(f, {})
    assert match in str(exc.value)


def test_scenario_flags_that_conflict(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        build_config(None, {"scenario": "random", "count": 5, "fraction": 0.1})
    with pytest.raises(ConfigError, match="--count does not apply to the 'class' scenario"):
        build_config(None, {"count": 5})
    with pytest.raises(ConfigError, match="--forget does not apply to the 'random'"):
        build_config(None, {"scenario": "random", "fraction": 0.1, "forget": [3]})
    with pytest.raises(ConfigError, match="--subclass-k does not apply"):
        build_config(None, {"subclass_k": 4})
    f = tmp_path / "r.toml"
    f.write_text("[scenario]\nkind = 'random'\ncount = 5\n")
    cfg = build_config(f, {"fraction": 0.1})                  # the flag replaces the file's
    assert cfg["scenario.fraction"] == 0.1 and cfg["scenario.count"] is None
    assert build_config(None, {"forget": [5, 2]})["scenario.classes"] == [2, 5]  # one spelling


@pytest.fixture(scope="module")
def files(original, tmp_path_factory):
    """Statistics, bases and two unlearned checkpoints (different classes) of `original`."""
    d = tmp_path_factory.mktemp("files")
    assert run("stats", "--checkpoint", original, "--out", d / "st.pt", "--bases-out",
               d / "b.safetensors", "--quiet") == 0
    for c in (3, 5):
        assert run("unlearn", "--checkpoint", original, "--out", d / f"u{c}.pt", "--forget",
                   c, "--epochs", "1", "--quiet") == 0
    return d


def test_an_output_never_overwrites_an_input(original, files, tmp_path, capsys):
    o = tmp_path
    before = original.read_bytes()
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", original, "--quiet",
           match="is also the input --checkpoint")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt",
           "--bases-out", o / "u.pt", "--quiet", match="are the same file")
    _fails(capsys, o, "stats", "--checkpoint", original, "--out", o / "s.pt", "--bases-out",
           o / "." / "s.pt", "--quiet", match="are the same file")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", files / "st.pt", "--stats",
           files / "st.pt", "--quiet", match="is also the input --stats")
    assert original.read_bytes() == before


def test_saved_statistics_and_bases_must_fit_the_job(original, files, tmp_path, capsys):
    o = tmp_path
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--stats",
           files / "st.pt", "--include-bias", "--quiet", match="include_bias=False")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--stats",
           files / "st.pt", "--max-retain-samples", "10", "--quiet",
           match="max_retain_samples=None")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--bases",
           files / "b.safetensors", "--rule", "rank:2", "--quiet", match="rule='energy:0.99'")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--stats",
           files / "st.pt", "--method", "finetune", "--quiet", match="uses no statistics")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--method",
           "random_labels_proj", "--bases-out", o / "b.pt", "--quiet", match="saves no bases")
    # a file of the wrong kind says what it is and where it goes
    _fails(capsys, o, "unlearn", "--checkpoint", files / "st.pt", "--out", o / "u.pt",
           "--quiet", match="holds second moments from `stats` (pass it as --stats)")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--bases",
           original, "--quiet", match="holds a model checkpoint (pass it as --checkpoint)")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--stats",
           files / "b.safetensors", "--quiet", match="holds bases (from --bases-out)")
    _fails(capsys, o, "unlearn", "--checkpoint", original, "--out", o / "u.pt", "--bases",
           o / "missing.pt", "--quiet", match="bases file")
    (o / "junk.pt").write_bytes(b"junk\n")
    _fails(capsys, o, "evaluate", "--checkpoint", o / "junk.pt", "--quiet",
           match="cannot be read as a torch file (corrupt or not written by unsc-fast?)")


def test_evaluate_checkpoints_that_forgot_different_things(original, files, tmp_path, capsys):
    o = tmp_path
    _fails(capsys, o, "evaluate", "--checkpoint", original, files / "u3.pt", files / "u5.pt",
           "--no-mia", "--quiet", match="forgot different things (class [3] vs class [5])")
    ev = o / "ev.json"
    assert run("evaluate", "--checkpoint", original, files / "u3.pt", files / "u5.pt",
               "--forget", "5", "--no-mia", "--out", ev, "--quiet") == 0
    r = json.loads(ev.read_text())
    assert r["scenario"]["forget_classes"] == [5] and r["model"]["name"] == "mlp"
    assert [x["info"]["model"] for x in r["runs"]] == ["mlp"] * 3


def test_a_diverged_model_is_not_saved(original, tmp_path, capsys):
    _fails(capsys, tmp_path, "unlearn", "--checkpoint", original, "--out", tmp_path / "u.pt",
           "--lr", "1e30", "--epochs", "2", "--report", tmp_path / "r.json", "--quiet",
           match="unlearning loss became nan")
    _fails(capsys, tmp_path, "train", "--out", tmp_path / "m.pt", *TINY, "--epochs", "1",
           "--lr", "1e30", match="training diverged")


def test_json_safe_records():
    from unsc_fast.cli.jobs import _run_record
    r = _run_record("unsc", 0, {"acc_r": float("nan")}, {"total": 1.0},
                    {"epoch_loss": [1.0, float("inf")]})
    assert r["metrics"]["acc_r"] is None and r["info"]["epoch_loss"] == [1.0, None]


def test_an_unexpected_exception_is_one_line(monkeypatch, tmp_path, capsys):
    import unsc_fast.cli.jobs as jobs

    def boom(*a, **k):
        raise TypeError("something\nbroke")
    monkeypatch.setattr(jobs, "train_job", boom)
    line = _one_line_error(capsys, "train", "--out", tmp_path / "m.pt", *TINY,
                           match="TypeError: something broke")
    assert "UNSC_FAST_DEBUG=1" in line


def test_a_forced_backend_that_cannot_load(tmp_path, capsys):
    from unsc_fast.dispatch import availability
    if availability()["cuda"] == "available":
        pytest.skip("the cuda backend loads here")
    _fails(capsys, tmp_path, "train", "--out", tmp_path / "m.pt", *TINY, "--backend", "cuda",
           match="--backend cuda is not available here")


def test_which_settings_reach_a_baseline_on_unlearn(original, tmp_path, monkeypatch):
    import unsc_fast.cli.jobs as jobs
    from unsc_fast.lab.baselines import MethodResult
    seen = {}

    def fake(name, task, **hp):
        seen[name] = hp
        return MethodResult(task.model, {"total": 0.0}, {})
    monkeypatch.setattr(jobs, "run_method", fake)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[unlearn]\nlr = 0.04\nepochs = 20\n[methods.finetune]\nlr = 0.02\n")
    base = ["unlearn", "--config", cfg, "--checkpoint", original, "--quiet"]
    assert run(*base, "--out", tmp_path / "r.pt", "--method", "retrain") == 0
    assert seen["retrain"] == {}       # [unlearn] (UNSC's settings) does not reach retrain
    assert run(*base, "--out", tmp_path / "f.pt", "--method", "finetune", "--lr", "0.5") == 0
    assert seen["finetune"] == {"lr": 0.5}                  # the flag beats [methods.finetune]
    assert run(*base, "--out", tmp_path / "g.pt", "--method", "finetune") == 0
    assert seen["finetune"] == {"lr": 0.02}


def test_output_under_a_file(original, tmp_path, capsys):
    _fails(capsys, tmp_path, "unlearn", "--checkpoint", original, "--out",
           tmp_path / "x" / "u.pt", "--quiet", match="does not exist")
    (tmp_path / "f").write_text("")
    _fails(capsys, tmp_path, "unlearn", "--checkpoint", original, "--out",
           tmp_path / "f" / "u.pt", "--quiet", match="is a file, not a directory")


def test_version(capsys):
    import unsc_fast
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == \
        f"unsc-fast {unsc_fast.__version__}"


def test_stats_dtype_is_a_checked_setting():
    from unsc_fast.cli.config import ConfigError, build_config
    assert build_config(None, {"stats_dtype": "float64"})["unlearn.stats_dtype"] == "float64"
    assert build_config(None, {})["unlearn.stats_dtype"] == "float32"
    with pytest.raises(ConfigError, match="stats_dtype"):
        build_config(None, {"stats_dtype": "float16"})
