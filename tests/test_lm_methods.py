"""The LM unlearning methods of ``unsc_fast.lab.lm.methods`` on a tiny random task (seconds)."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from unsc_fast.lab.lm import methods as M  # noqa: E402

from lm_helpers import EOS, PAD, batches, collate, llama, qa, random_seqs  # noqa: E402

IDK = [[40, 41], [42, 43, 44]]


@pytest.fixture(scope="module")
def task():
    model = llama()
    return M.LMTask(model=model, forget=batches(random_seqs(4, 2), 2),
                    retain=batches(random_seqs(6, 1), 3), holdout=batches(random_seqs(6, 3), 3),
                    idk_answers=IDK, eos_id=EOS, pad_id=PAD, epochs=2,
                    retrain=lambda: llama(seed=1))


def _forget_nll(model, task):
    with torch.no_grad():
        return sum(M.answer_loss(model, b).item() for b in task.forget) / len(task.forget)


@pytest.mark.parametrize("name", sorted(M.METHODS))
def test_every_method_returns_a_finite_model(task, name):
    state = {k: v.clone() for k, v in task.model.state_dict().items()}
    res = M.run_method(name, task)
    b = task.forget[0]
    with torch.no_grad():
        out = res.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert torch.isfinite(out).all()
    assert "total" in res.times
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, state[k]), f"{name} changed the original ({k})"
    if name not in ("original", "retrain"):
        assert res.model is not task.model
        assert 0 < res.info["steps"] <= task.epochs * len(task.forget)


def test_same_budget_cap(task):
    for name in ("grad_ascent", "npo", "idk", "idk_proj", "unsc"):
        assert M.run_method(name, task, max_steps=3).info["steps"] <= 3


def test_npo_loss_by_hand():
    logp = torch.tensor([-2.0, -0.5, -7.0])
    ref = torch.tensor([-1.0, -3.0, -7.0])
    beta = 0.1
    want = sum(2 / beta * math.log(1 + math.exp(beta * (a - r)))
               for a, r in zip(logp.tolist(), ref.tolist())) / 3
    assert M.npo_loss(logp, ref, beta).item() == pytest.approx(want, rel=1e-6)
    # its gradient pushes the model's likelihood down: d loss / d logp > 0
    x = logp.clone().requires_grad_(True)
    M.npo_loss(x, ref, beta).backward()
    assert (x.grad > 0).all()


def test_sequence_logprob_sums_the_answer_tokens():
    model = llama()
    b = collate([qa([5, 6, 7], [8, 9]), qa([10, 11], [12])])
    with torch.no_grad():
        lp = M.sequence_logprob(model, b)
        logp = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits \
            .log_softmax(-1)
    want0 = logp[0, 2, 8] + logp[0, 3, 9] + logp[0, 4, EOS]
    want1 = logp[1, 1, 12] + logp[1, 2, EOS]
    assert torch.allclose(lp, torch.stack([want0, want1]))


def test_grad_ascent_raises_the_forget_loss(task):
    res = M.run_method("grad_ascent", task)
    assert _forget_nll(res.model, task) > _forget_nll(task.model, task) + 0.1


def test_idk_batch_keeps_the_question_and_replaces_the_answer():
    b = collate([qa([5, 6, 7], [8, 9]), qa([10, 11], [12, 13, 14, 15])])
    g = torch.Generator().manual_seed(0)
    out = M.idk_batch(b, [[40, 41]], EOS, PAD, g)
    assert out["input_ids"].tolist() == [[5, 6, 7, 40, 41, EOS], [10, 11, 40, 41, EOS, PAD]]
    assert out["labels"].tolist() == [[-100, -100, -100, 40, 41, EOS],
                                      [-100, -100, 40, 41, EOS, -100]]
    assert out["attention_mask"].tolist() == [[1] * 6, [1] * 5 + [0]]
    out = M.idk_batch(b, IDK, EOS, PAD, g)          # each answer one of the IDK answers
    for r, q in enumerate(([5, 6, 7], [10, 11])):
        ids = out["input_ids"][r][out["attention_mask"][r].bool()].tolist()
        assert ids[:len(q)] == q and ids[len(q):-1] in IDK and ids[-1] == EOS


def test_idk_teaches_the_idk_answer(task):
    res = M.run_method("idk", task, epochs=3)
    g = torch.Generator().manual_seed(0)
    new = [M.idk_batch(b, IDK[:1], EOS, PAD, g) for b in task.forget]
    with torch.no_grad():
        before = sum(M.answer_loss(task.model, b).item() for b in new)
        after = sum(M.answer_loss(res.model, b).item() for b in new)
    assert after < before


def test_unknown_method_or_hyperparameter(task):
    with pytest.raises(ValueError, match="unknown method"):
        M.run_method("rmu", task)
    with pytest.raises(ValueError, match="hyperparameter"):
        M.run_method("npo", task, gamma=2.0)


def test_retrain_needs_the_builder(task):
    import dataclasses
    with pytest.raises(ValueError, match="task.retrain"):
        M.run_method("retrain", dataclasses.replace(task, retrain=None))


def test_head_adds_the_output_head_to_the_bases(task):
    head = task.model.get_output_embeddings()
    name = next(n for n, m in task.model.named_modules() if m is head)
    for method in ("unsc", "idk_proj"):
        res = M.run_method(method, task, head=True, max_steps=2)
        assert name in res.bases
        moved = res.model.get_output_embeddings().weight
        assert not torch.equal(moved, head.weight), f"{method} left the head frozen"
    assert name not in M.run_method("unsc", task, head=False, max_steps=2).bases
    assert name in M.run_method("unsc", task, max_steps=2).bases          # the default


def test_bases_given_by_the_caller_are_used_as_they_are(task):
    import dataclasses
    from unsc_fast.unlearn_lm import lm_bases
    given = lm_bases(task.model, task.retain, "energy:0.9", progress=False)
    mine = dataclasses.replace(task, bases=given)
    res = M.run_method("unsc", mine, max_steps=2)                    # head=True by default
    assert res.bases is given
    assert torch.equal(res.model.get_output_embeddings().weight,
                       task.model.get_output_embeddings().weight)


def test_layers_choose_the_covered_modules(task):
    head = next(n for n, m in task.model.named_modules()
                if m is task.model.get_output_embeddings())
    for method in ("unsc", "idk_proj"):
        res = M.run_method(method, task, layers=["model.layers.1.*"], head=True, max_steps=2)
        assert set(res.bases) == {n for n in res.bases if n.startswith("model.layers.1.")} | {head}
        assert not any(n.startswith("model.layers.0.") for n in res.bases)
        before = dict(task.model.named_parameters())
        for n, p in res.model.named_parameters():
            if n.startswith("model.layers.0."):
                assert torch.equal(p, before[n]), f"{method} moved {n}"


def test_unsc_retain_weight_reaches_unlearn_lm(task):
    off = M.run_method("unsc", task)
    on = M.run_method("unsc", task, retain_weight=2.0)
    assert off.info["retain_weight"] == 0.0 and off.info["retain_loss"] == []
    assert on.info["retain_weight"] == 2.0
    assert len(on.info["retain_loss"]) == len(on.info["epoch_loss"]) >= 1
    assert any(not torch.equal(a, b) for a, b in zip(on.model.state_dict().values(),
                                                       off.model.state_dict().values()))


@pytest.mark.parametrize("method", ["grad_diff", "npo", "idk", "idk_proj"])
@pytest.mark.parametrize("weight", [-1.0, float("nan"), True, "1"])
def test_a_bad_retain_weight_is_refused_before_any_work(task, method, weight, monkeypatch):
    monkeypatch.setattr(M, "_bases", lambda *a: pytest.fail("bases built before the check"))
    with pytest.raises(ValueError, match="retain_weight"):
        M.run_method(method, task, retain_weight=weight)


def test_idk_proj_retain_term_moves_the_model_and_is_reported(task):
    off = M.run_method("idk_proj", task)
    on = M.run_method("idk_proj", task, retain_weight=2.0)
    assert off.info["retain_weight"] == 0.0 and on.info["retain_weight"] == 2.0
    assert any(not torch.equal(a, b) for a, b in zip(on.model.state_dict().values(),
                                                       off.model.state_dict().values()))
