"""``unsc-fast lm ...`` end to end at the tiny size (seconds): train, stats, unlearn, evaluate,
compare, demo, the user's own JSONL data, and the all-or-nothing outputs."""
import json

import pytest
import torch

pytest.importorskip("transformers")

from cli_helpers import run  # noqa: E402
from unsc_fast.lab.lm.compare import LMSetup, build_task  # noqa: E402

TINY = ["--size", "tiny", "--forget-fraction", "0.2", "--epochs", "1", "--quiet",
        "--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    assert run("lm", "train", "--out", d / "orig", *TINY) == 0
    assert run("lm", "train", "--out", d / "retrain", "--retain-only", *TINY) == 0
    return d


def _files(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def test_train_writes_a_hugging_face_model_directory(models):
    made = json.loads((models / "orig" / "made.json").read_text())
    assert made["made_by"] == "unsc-fast lm train" and made["retain_only"] is False
    assert made["train_accuracy"] > 0.9
    assert (models / "orig" / "config.json").is_file()
    assert json.loads((models / "retrain" / "made.json").read_text())["retain_only"] is True


def test_stats_unlearn_evaluate_chain(models, tmp_path, capsys):
    bases = tmp_path / "b.safetensors"
    assert run("lm", "stats", "--model", models / "orig", "--out", bases, *TINY) == 0
    out, rep = tmp_path / "unlearned", tmp_path / "r.json"
    assert run("lm", "unlearn", "--model", models / "orig", "--out", out, "--bases", bases,
               "--report", rep, "--retrain", models / "retrain", "--lr", "0.5", *TINY) == 0
    r = json.loads(rep.read_text())
    assert r["job"]["method"] == "unsc" and r["job"]["hyperparameters"] == {"lr": 0.5}
    assert r["before"]["forget_quality"] is not None
    assert r["after"]["forget_prob"] < r["before"]["forget_prob"]     # it did forget
    m = tmp_path / "m.json"
    assert run("lm", "evaluate", "--model", out, "--retrain", models / "retrain", "--out", m,
               *TINY) == 0
    assert json.loads(m.read_text())["metrics"]["forget_prob"] == pytest.approx(
        r["after"]["forget_prob"], rel=1e-4)
    assert "forget_quality" in capsys.readouterr().out


def test_compare_writes_both_files(models, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("lm", "compare", "--out", out, "--seeds", "0", "--methods", "original",
               "retrain", "unsc", "grad_ascent", "--cache-dir", tmp_path / "cache", *TINY) == 0
    assert _files(out) == ["report.json", "results.md"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["methods"] == ["original", "retrain", "unsc", "grad_ascent"]
    assert rep["seeds"][0]["metrics"]["retrain"]["forget_quality"] == 1.0
    assert str(tmp_path) not in (out / "report.json").read_text()   # no cache path recorded
    assert "| unsc |" in (out / "results.md").read_text()


def test_demo_prints_the_table(capsys):
    assert run("lm", "demo", "--methods", "original", "unsc", *TINY) == 0
    out = capsys.readouterr().out
    assert "| unsc |" in out and "forget quality" in out


def test_the_users_own_jsonl_data(models, tmp_path):
    task, _ = build_task(LMSetup(size="tiny", forget_fraction=0.2))

    def write(name, pairs):
        p = tmp_path / name
        p.write_text("".join(json.dumps({"question": q.question, "answer": q.answer}) + "\n"
                             for q in pairs))
        return p
    files = ["--forget-file", write("f.jsonl", task.forget),
             "--retain-file", write("r.jsonl", task.retain)]
    m = tmp_path / "m.json"
    assert run("lm", "evaluate", "--model", models / "orig", "--out", m, *files, *TINY) == 0
    metrics = json.loads(m.read_text())["metrics"]
    assert metrics["forget_acc"] > 0.9 and metrics["mia_loss_auc"] is None   # no holdout


@pytest.mark.parametrize("bad, match", [
    (["--method", "retrain"], "--method must be one of"),
    (["--method", "grad_ascent", "--bases", "b.safetensors"], "--bases is for unsc"),
    (["--bases", "missing.safetensors"], "missing.safetensors"),
    (["--retrain", "nowhere"], "nowhere"),
    (["--rule", "energy:2"], "rule"),
    (["--size", "huge"], "size must be one of"),
    (["--forget-file", "f.jsonl"], "--retain-file"),
])
def test_bad_requests_fail_before_any_output(models, tmp_path, capsys, bad, match):
    out = tmp_path / "u"
    assert run("lm", "unlearn", "--model", models / "orig", "--out", out, *TINY, *bad) == 1
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == []


def test_bad_config_keys_are_refused(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    for text, match in (("sise = 'tiny'\n", "unknown config key 'sise'"),
                        ("[methods.unsc]\nlearning_rate = 1\n", "unknown hyperparameter"),
                        ("[methods.salun]\n", "unknown LM method"),
                        ("[compare]\nseeds = [0, 0]\n", "twice")):
        cfg.write_text(text)
        assert run("lm", "compare", "--config", cfg, "--out", tmp_path / "o") == 1
        assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, match", [
    ("[methods.unsc]\nlr = 'fast'\n", "[methods.unsc] lr must be a finite number"),
    ("[methods.grad_ascent]\nlr = -0.1\n", "[methods.grad_ascent] lr must be a positive"),
    ("[methods.npo]\nbeta = 0\n", "[methods.npo] beta must be a positive number"),
    ("[methods.unsc]\nepochs = 2.5\n", "[methods.unsc] epochs must be an integer"),
    ("[methods.unsc]\nmax_steps = 0\n", "[methods.unsc] max_steps must be a positive"),
    ("[methods.unsc]\nhead = 1\n", "[methods.unsc] head must be true or false"),
    ("[methods.unsc]\nlayers = 'model.*'\n", "layers must be a list of strings"),
    ("[methods.unsc]\nmode = 'fast'\n", "mode must be 'sample' or 'token'"),
    ("[methods.unsc]\npseudo_min_prob = 2\n", "pseudo_min_prob must be a number in [0, 1]"),
    ("[methods.idk]\nretain_weight = -1\n", "retain_weight must be a number >= 0"),
    ("[methods.unsc]\nretain_weight = -0.5\n", "[methods.unsc] retain_weight must be a number"
     " >= 0"),
    ("quiet = 'yes'\n", "quiet must be true or false"),
    ("cache_dir = 3\n", "cache_dir must be a directory path"),
    ("device = 0\n", "device must be cpu, cuda or cuda:N"),
    ("size = ['tiny']\n", "size must be one of"),
    ("forget_fraction = nan\n", "forget_fraction must be a number in (0, 1)"),
    ("epochs = '2'\n", "epochs must be an integer >= 1"),
    ("[compare]\nmethods = [['unsc']]\n", "compare.methods must be a non-empty list"),
])
def test_bad_config_values_are_one_line_errors_before_any_work(tmp_path, capsys, text, match):
    """Wrong types and out-of-range values in an LM TOML, hyperparameters included, are
    refused by the config check (one line, nothing written, no model trained)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    assert run("lm", "compare", "--config", cfg, "--out", tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_an_existing_output_survives_a_failed_unlearn(models, tmp_path, monkeypatch):
    out = tmp_path / "u"
    out.mkdir()
    (out / "keep").write_text("old")
    import unsc_fast.lab.lm.methods as M

    def broken(task, **hp):
        raise FloatingPointError("the loss became nan")
    monkeypatch.setitem(M.METHODS, "unsc", broken)
    assert run("lm", "unlearn", "--model", models / "orig", "--out", out, *TINY) == 1
    assert _files(tmp_path) == ["u/keep"]


def test_every_method_sees_the_same_batch_order(monkeypatch, tmp_path):
    """compare gives each method the forget batches in the same order (one shared seeded
    loader would hand the second method the next epoch's order)."""
    import unsc_fast.lab.lm.compare as C
    seen = {}

    def spy(name, task, **hp):
        seen[name] = [b["input_ids"].tolist() for b in task.forget]
        from unsc_fast.lab.baselines import MethodResult
        return MethodResult(task.model)
    monkeypatch.setattr(C, "run_method", spy)
    setup = C.LMSetup(size="tiny", forget_fraction=0.2, batch_size=2, cache_dir=str(tmp_path))
    C.run_seed(setup, 0, ["original", "grad_ascent", "npo"], progress=False)
    assert seen["original"] == seen["grad_ascent"] == seen["npo"]
