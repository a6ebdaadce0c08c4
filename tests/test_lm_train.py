"""Training the LM task's model (unsc_fast.lab.lm.train): a tiny model memorises a tiny corpus
in seconds, the cache round-trips and is written all or nothing, evaluate_lm's keys."""
import math

import pytest
import torch

pytest.importorskip("transformers")

from unsc_fast.lab.lm import train as T  # noqa: E402
from unsc_fast.lab.lm.data import load_hf_model, make_task  # noqa: E402
from unsc_fast.lab.lm.metrics import (METRIC_KEYS, answer_accuracy, evaluate_lm,  # noqa: E402
                                      forget_truth_ratios)
from unsc_fast.lab.lm.model import build_model  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and on a busy CPU 2 threads were
    measured 100x slower per step (each op waits for the other thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def task():
    return make_task("tiny", forget_fraction=0.2, n_holdout=1, seed=0)


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
    cache = tmp_path_factory.mktemp("lmcache")
    model, info = T.trained_lm(task, "tiny", cache_dir=cache, progress=False)
    return model, info, cache


def test_tiny_model_memorises_tiny_corpus(task, trained):
    model, info, _ = trained
    assert info["train_accuracy"] >= 0.95
    assert answer_accuracy(model, task.loader("forget")) >= 0.95
    untrained = build_model(task.tokenizer, "tiny", seed=0)
    assert answer_accuracy(untrained, task.loader("train")) < 0.2


def test_cache_round_trips_without_retraining(task, trained, monkeypatch):
    model, info, cache = trained
    monkeypatch.setattr(T, "train_lm", lambda *a, **k: pytest.fail("retrained"))
    again, info2 = T.trained_lm(task, "tiny", cache_dir=cache, progress=False)
    assert info2 == info and info["corpus"]["n_entities"] == 6
    b = next(iter(task.loader("forget", batch_size=4)))
    with torch.no_grad():
        x = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        assert torch.equal(again(**x).logits, model(**x).logits)
    # the user-model path reads the same directory
    user, tok = load_hf_model(cache / "lm-tiny-original-s0")
    assert tok("Question:").input_ids == task.tokenizer("Question:").input_ids
    assert info["versions"]["transformers"] and info["params"] > 0
    # another recipe is another model: not taken from the cache
    with pytest.raises(pytest.fail.Exception, match="retrained"):
        T.trained_lm(task, "tiny", cache_dir=cache, progress=False, recipe={"epochs": 1})


def test_save_is_all_or_nothing(task, tmp_path):
    model = build_model(task.tokenizer, "tiny", seed=1)
    target = tmp_path / "m"
    T.save_lm(target, model, task.tokenizer, {"n": 1})
    T.save_lm(target, model, task.tokenizer, {"n": 2})            # replaces
    assert T.load_lm(target)[2] == {"n": 2}

    class Broken:
        def save_pretrained(self, d):
            raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        T.save_lm(target, model, Broken(), {"n": 3})
    assert T.load_lm(target)[2] == {"n": 2}                       # old one intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]    # no temporary left


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no cached LM"):
        T.load_lm(tmp_path)


def test_lr_schedule():
    assert T.lr_schedule(0, 100, 10) == pytest.approx(0.1)
    assert T.lr_schedule(9, 100, 10) == pytest.approx(1.0)
    assert T.lr_schedule(10, 100, 10) == pytest.approx(1.0)
    assert T.lr_schedule(55, 100, 10) == pytest.approx(0.5)
    assert T.lr_schedule(100, 100, 10) == pytest.approx(0.0)


def test_evaluate_lm_keys_and_sanity(task, trained):
    model, _, _ = trained
    tr = forget_truth_ratios(model, task)
    out = evaluate_lm(model, task, retrain_truth_ratios=tr, max_new_tokens=12)
    assert tuple(out) == METRIC_KEYS
    assert all(isinstance(v, float) for v in out.values())
    assert out["forget_quality"] == pytest.approx(1.0)            # same model as reference
    assert out["forget_acc"] >= 0.95 and out["forget_prob"] > 0.8
    assert out["forget_rouge"] > 0.9 and out["retain_rouge"] > 0.9
    assert out["mia_loss_auc"] > 0.9                              # trained vs never seen
    assert out["holdout_ppl"] > 1.5
    assert 0 <= out["model_utility"] <= 1 and 0 <= out["gen_repeat_rate"] <= 1
    no_ref = evaluate_lm(model, task, max_new_tokens=4)
    assert math.isnan(no_ref["forget_quality"])


def test_user_jsonl_and_model_directory_path(task, trained, tmp_path):
    """A user's JSONL files + a local model directory give the metrics of the built-in path."""
    import json
    model, _, cache = trained
    for split in ("forget", "retain", "holdout"):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for p in getattr(task, split):
                f.write(json.dumps({"question": p.question, "answer": p.answer,
                                    "paraphrased_answer": p.paraphrased_answer,
                                    "perturbed_answers": list(p.perturbed_answers)}) + "\n")
    user_model, tok = load_hf_model(cache / "lm-tiny-original-s0")
    from unsc_fast.lab.lm.data import task_from_jsonl
    user = task_from_jsonl(tok, tmp_path / "forget.jsonl", tmp_path / "retain.jsonl",
                           tmp_path / "holdout.jsonl")
    a = evaluate_lm(user_model, user, max_new_tokens=4)
    b = evaluate_lm(model, task, max_new_tokens=4)
    for key in ("forget_prob", "forget_acc", "forget_truth_ratio", "retain_prob",
                "holdout_ppl", "mia_loss_auc"):
        assert a[key] == pytest.approx(b[key], rel=1e-5), key
