"""``unsc_fast.unlearn_lm``: UNSC for causal LMs (tiny random LLaMA / GPT-2, CPU, seconds).

The retained data has fewer tokens (21) than any layer has input features (32), so
``energy:1`` leaves a real null space and a projected step must leave the logits on the
retained sequences unchanged (float64), where an unprojected one moves them."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

import unsc_fast  # noqa: E402
from unsc_fast.unlearn import ProjectedSGD, freeze_for_unlearning  # noqa: E402
from unsc_fast.unlearn_lm import (_sequence_loss, answer_nll, lm_layers,  # noqa: E402
                                  lm_pseudo_labels)

from lm_helpers import (EOS, batches, collate, gpt2, llama, logits, qa,  # noqa: E402
                        random_seqs, rel_change)

EXACT = dict(rule="energy:1", method="eigh", mode="token", lr=1.0, epochs=1, max_steps=1,
             stats_dtype=torch.float64, progress=False)


@pytest.fixture(scope="module")
def data():
    retain = batches(random_seqs(3, 1, q=(3, 3), a=(3, 3)), 3)   # 3 x 7 = 21 tokens < 32
    forget = batches(random_seqs(4, 2), 2)
    holdout = batches(random_seqs(6, 3), 3)
    return retain, forget, holdout


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_pseudo_labels_on_constructed_logits():
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 2, 2, -100, -100]])
    logits = torch.zeros(2, 5, 6)
    logits[0, 1, 3] = 5.0; logits[0, 1, 1] = 4.0      # argmax is the true token 3: next is 1
    logits[0, 2, 2] = 5.0                               # argmax 2 is not the true token 4
    logits[1, 0, 2] = 5.0; logits[1, 0, 5] = 1.0        # true 2 is argmax: next is 5
    logits[1, 1, 0] = 9.0                               # argmax 0, true 2
    logits[0, 3] = 100.0; logits[1, 3, 4] = 100.0       # non-answer positions: ignored
    out = lm_pseudo_labels(logits, labels)
    assert out.tolist() == [[-100, -100, 1, 2, -100], [-100, 5, 0, -100, -100]]
    g = torch.Generator().manual_seed(0)                # random: never the true token, else
    logits = torch.randn(4, 9, 7, generator=g)          # the argmax
    labels = torch.randint(0, 7, (4, 9), generator=g)
    labels[:, :3] = -100
    out = lm_pseudo_labels(logits, labels)
    pos = labels[:, 1:] != -100
    got, true, lg = out[:, 1:][pos], labels[:, 1:][pos], logits[:, :-1][pos]
    assert (got != true).all() and (out[:, 1:][~pos] == -100).all() and (out[:, 0] == -100).all()
    top2 = lg.topk(2, dim=1).indices
    assert torch.equal(got, torch.where(top2[:, 0] == true, top2[:, 1], top2[:, 0]))


def test_projected_step_keeps_retained_logits(data):
    retain, forget, _ = data
    model = llama(torch.float64)
    before = [logits(model, b) for b in retain]
    res = unsc_fast.unlearn_lm(model, forget, retain, **EXACT)
    assert res.report.steps == 1
    assert all(lb.d - lb.ranks[0] > 0 for lb in res.bases.values())
    assert max(rel_change(b, logits(res.model, r)) for b, r in zip(before, retain)) < 1e-5
    assert rel_change(logits(model, forget[0]), logits(res.model, forget[0])) > 1e-3

    # the same step without projection moves the retained logits
    free = llama(torch.float64)
    params = freeze_for_unlearning(free, res.bases)
    b = forget[0]
    pseudo = lm_pseudo_labels(free(input_ids=b["input_ids"]).logits, b["labels"]).detach()
    with ProjectedSGD(free, params, None, 1.0) as opt:
        out = free(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        opt.step(_sequence_loss(out, b["labels"], pseudo, None, "token", "pseudo")[0], 0)
    assert rel_change(before[0], logits(free, retain[0])) > 1e-3


def test_default_layers_are_the_projections():
    names = lm_layers(llama())
    assert len(names) == 14 and "lm_head" not in names
    assert all(".self_attn." in n or ".mlp." in n for n in names)
    names = lm_layers(gpt2())
    assert len(names) == 8 and all(".attn." in n or ".mlp." in n for n in names)


def test_padding_does_not_enter_the_statistics(data):
    retain, forget, _ = data
    seqs = random_seqs(3, 1, q=(3, 3), a=(3, 3))
    padded = collate(seqs, length=11)
    padded["input_ids"][:, 7:] = torch.tensor([5, 9, 33, 60])   # junk under the mask
    model = llama(torch.float64)
    a = unsc_fast.unlearn_lm(model, forget, [padded], **EXACT)
    b = unsc_fast.unlearn_lm(model, forget, [collate([s]) for s in seqs], **EXACT)
    assert a.report.ranks == b.report.ranks
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=1e-10), n


def test_a_sequence_at_its_target_gets_no_gradient():
    logits = torch.randn(2, 6, 10, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 4, 1, -100], [-100, -100, 5, 6, 7, 1]])
    pseudo = lm_pseudo_labels(logits.detach(), labels)
    true = answer_nll(logits.detach(), labels)
    target = torch.stack([true[0] + 1.0, true[1]])     # row 1 already at its target
    for loss in ("pseudo", "ascent"):
        value, active = _sequence_loss(logits, labels, pseudo, target, "sample", loss)
        grad, = torch.autograd.grad(value, logits)
        assert active == 1
        assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0, loss


def test_sample_mode_stops_when_every_sequence_looks_unseen(data):
    """Held-out data equal to the forget set: every target is the sequence's own loss, so no
    sequence moves, the run stops after one epoch and the weights stay."""
    retain, forget, _ = data
    model = llama(torch.float64)
    res = unsc_fast.unlearn_lm(model, forget, retain, holdout=forget, lr=1.0, epochs=5,
                               progress=False)
    assert res.report.active == [0.0] and len(res.report.epoch_loss) == 1
    for p, q in zip(res.model.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_sample_mode_raises_the_forget_loss_and_stops(data):
    retain, forget, holdout = data
    model = llama()
    res = unsc_fast.unlearn_lm(model, forget, retain, holdout=holdout, lr=0.5, epochs=30,
                               progress=False)
    r = res.report
    assert r.mode == "sample" and r.forget_samples == 4 and r.forget_tokens > 0
    assert len(r.active) == len(r.epoch_loss) and r.active[0] > 0
    before = torch.cat([answer_nll(model(**_inputs(b)).logits, b["labels"]) for b in forget])
    after = torch.cat([answer_nll(res.model(**_inputs(b)).logits, b["labels"]) for b in forget])
    assert after.mean() > before.mean()
    assert r.time_labels > 0 and r.time_stats > 0 and r.time_unlearn > 0


def _inputs(b):
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}


def test_input_model_is_unchanged(data):
    retain, forget, holdout = data
    model = llama()
    model.train()
    state = _state(model)
    res = unsc_fast.unlearn_lm(model, forget, retain, holdout=holdout, epochs=2, progress=False)
    assert model.training and res.model is not model and not res.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.requires_grad for p in model.parameters())


class _Watched(list):
    """A list of batches that records whether a batch was read."""
    read = False

    def __iter__(self):
        for b in super().__iter__():
            self.read = True
            yield b


def _bad_cases(forget):
    good = forget[0]
    no_answer = dict(good, labels=torch.full_like(good["labels"], -100))
    shifted = dict(good, labels=torch.roll(good["labels"], -1, dims=1))
    out_of_vocab = dict(good, input_ids=good["input_ids"].clone())
    out_of_vocab["input_ids"][0, 0] = 64
    missing = {k: v for k, v in good.items() if k != "labels"}
    return [
        (dict(forget=[]), "empty"),
        (dict(forget=[missing]), "lacks"),
        (dict(forget=[no_answer]), "no answer token"),
        (dict(forget=[shifted]), "differ from input_ids"),
        (dict(forget=[out_of_vocab]), "vocabulary"),
        (dict(forget=[(good["input_ids"], good["labels"])]), "expected a dict"),
        (dict(rule="energy:2"), "nergy"),
        (dict(lr=-1.0), "lr"),
        (dict(epochs=1.5), "epochs"),
        (dict(mode="class"), "mode"),
        (dict(loss="kl"), "loss"),
        (dict(holdout=None), "holdout"),
        (dict(method="svd"), "method"),
        (dict(forget=iter(forget)), "re-iterable"),
        (dict(layers=["model.nothing"]), "nothing"),
        (dict(retain_weight=-1.0), "retain_weight"),
        (dict(retain_weight=float("nan")), "retain_weight"),
        (dict(retain_weight=True), "retain_weight"),
        (dict(retain_weight="1"), "retain_weight"),
    ]


@pytest.mark.parametrize("case", range(19))
def test_bad_input_raises_before_any_state_change(data, case):
    retain, forget, holdout = data
    kwargs, match = _bad_cases(forget)[case]
    model = llama()
    state = _state(model)
    watched = _Watched(retain)
    args = dict(forget=forget, retain=watched, holdout=holdout, progress=False) | kwargs
    with pytest.raises((ValueError, TypeError, KeyError), match=match):
        unsc_fast.unlearn_lm(model, **args)
    assert not watched.read, "the statistics were started before the error"
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_bases_of_another_model_refused(data):
    retain, forget, _ = data
    bases = unsc_fast.unlearn_lm(llama(), forget, retain, **EXACT).bases
    with pytest.raises((KeyError, ValueError, TypeError)):
        unsc_fast.unlearn_lm(gpt2(), forget, bases=bases, **{k: v for k, v in EXACT.items()
                                                          if k not in ("rule", "method")})


def test_gpt2_conv1d(data):
    retain, forget, _ = data
    model = gpt2(torch.float64)
    before = logits(model, retain[0])
    res = unsc_fast.unlearn_lm(model, forget, retain, **EXACT)
    assert rel_change(before, logits(res.model, retain[0])) < 1e-5
    assert not torch.equal(res.model.transformer.h[0].mlp.c_fc.weight,
                           model.transformer.h[0].mlp.c_fc.weight)


def test_qa_helper_obeys_the_contract():
    ids, lab = qa([5, 6], [7])
    assert ids == [5, 6, 7, EOS] and lab == [-100, -100, 7, EOS]


def test_pseudo_min_prob_keeps_one_token_per_sequence(data):
    retain, forget, holdout = data
    model = llama()
    n_seq = sum(len(b["input_ids"]) for b in forget)
    full = unsc_fast.unlearn_lm(model, forget, retain, **EXACT)
    assert full.report.pushed_tokens == full.report.forget_tokens   # default: every token
    one = unsc_fast.unlearn_lm(model, forget, retain, pseudo_min_prob=1.0, **EXACT)
    assert one.report.pushed_tokens == n_seq < one.report.forget_tokens
    part = unsc_fast.unlearn_lm(model, forget, retain, pseudo_min_prob=1.0, holdout=holdout,
                                **{**EXACT, "mode": "sample", "epochs": 2, "max_steps": 3})
    assert all(math.isfinite(x) for x in part.report.epoch_loss)
    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="pseudo_min_prob"):
            unsc_fast.unlearn_lm(model, forget, retain, pseudo_min_prob=bad, **EXACT)


def test_retain_weight_without_retain_data_is_refused_even_with_bases(data):
    retain, forget, _ = data
    model = llama()
    bases = unsc_fast.unlearn_lm(model, forget, retain, **EXACT).bases
    with pytest.raises(ValueError, match="retain_weight > 0 needs retain data"):
        unsc_fast.unlearn_lm(model, forget, bases=bases, retain_weight=1.0,
                             **{k: v for k, v in EXACT.items() if k not in ("rule", "method")})


def test_retain_term_needs_labelled_retain_batches_before_any_work(data):
    retain, forget, _ = data
    model = llama()
    state = _state(model)
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in retain]
    unsc_fast.unlearn_lm(model, forget, unlabelled, **EXACT)      # fine without the term
    watched = _Watched(forget)
    with pytest.raises(ValueError, match="retain batch 0 lacks"):
        unsc_fast.unlearn_lm(model, watched, unlabelled, retain_weight=1.0, **EXACT)
    assert not watched.read, "the forget data was read before the retain batches' check"
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def _rows(batch):
    """One batch per sequence of ``batch``."""
    return [{k: v[i:i + 1] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]


def test_retain_term_steps_by_hand(data):
    """Two steps with ``retain_weight`` w are the projected SGD steps on (pseudo-label CE of
    forget batch t + w x the mean answer NLL of retain batch t), t = 0, 1, with the run's own
    bases: the retain batches are read in order, one per step. At ``energy:0.9`` the retain
    inputs keep a residual outside the kept span, so the term moves the weights (at
    ``energy:1`` its projected gradient would be 0)."""
    import copy

    import torch.nn.functional as F

    from unsc_fast.unlearn_lm import answer_mask
    retain, forget, _ = data
    retain = _rows(retain[0])                     # 3 batches of one sequence
    model = llama(torch.float64)
    w, lr = 3.0, 0.5
    kw = dict(EXACT, rule="energy:0.9", lr=lr, max_steps=2, epochs=1)
    res = unsc_fast.unlearn_lm(model, forget, retain, retain_weight=w, **kw)
    plain = unsc_fast.unlearn_lm(model, forget, retain, **kw)
    assert res.report.steps == 2

    def ce(m, b, targets):
        out = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        pos = answer_mask(b["labels"])
        return F.cross_entropy(out[:, :-1][pos], targets[:, 1:][pos])

    ref = copy.deepcopy(model)
    params = freeze_for_unlearning(ref, res.bases)
    r_losses = []
    with ProjectedSGD(ref, params, res.bases, lr) as opt:
        for f, r in zip(forget[:2], retain[:2]):
            with torch.no_grad():
                pseudo = lm_pseudo_labels(model(input_ids=f["input_ids"],
                                                attention_mask=f["attention_mask"]).logits,
                                          f["labels"])
            r_loss = ce(ref, r, r["labels"])
            r_losses.append(r_loss.item())
            opt.step(ce(ref, f, pseudo) + w * r_loss, 0)
    got, want, base = res.model.state_dict(), ref.state_dict(), plain.model.state_dict()
    moved = 0.0
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12, msg=k)
        moved = max(moved, (got[k] - base[k]).abs().max().item())
    assert moved > 1e-6, "the retain term did not move any weight"
    assert res.report.retain_weight == w and plain.report.retain_weight == 0.0
    assert res.report.retain_loss == pytest.approx([sum(r_losses) / 2], rel=1e-9)
    assert plain.report.retain_loss == []


def test_retain_term_cycles_the_retain_batches_and_lowers_their_loss(data):
    """More steps than retain batches: the stream wraps around; with the term the retained
    answers' loss ends lower than without it (same forget push, same bases)."""
    retain, forget, holdout = data
    retain = _rows(retain[0])
    model = llama(torch.float64)
    kw = dict(EXACT, rule="energy:0.9", lr=0.5, epochs=3, max_steps=None)
    on = unsc_fast.unlearn_lm(model, forget, retain, retain_weight=5.0, **kw)
    off = unsc_fast.unlearn_lm(model, forget, retain, bases=on.bases,
                               **{k: v for k, v in kw.items() if k not in ("rule", "method")})
    assert on.report.steps == off.report.steps == 3 * len(forget) > len(retain)
    assert len(on.report.retain_loss) == 3

    def retain_nll(m):
        with torch.no_grad():
            return sum(answer_nll(m(input_ids=b["input_ids"],
                                    attention_mask=b["attention_mask"]).logits,
                                  b["labels"]).sum().item() for b in retain)
    assert retain_nll(on.model) < retain_nll(off.model)


class _Recorded:
    """Re-iterable batches that record the index of every batch read, one list per pass."""

    def __init__(self, items):
        self.items, self.passes = items, []

    def __iter__(self):
        self.passes.append([])
        for i, b in enumerate(self.items):
            self.passes[-1].append(i)
            yield b


def test_retain_term_reads_the_retain_batches_in_order_and_wraps_around(data):
    """One pass checks the labels up front; then one retain batch per step, in order, the
    stream wrapping round (not restarting each epoch): 4 steps over 3 batches = 0 1 2 0."""
    retain, forget, _ = data
    model = llama(torch.float64)
    bases = unsc_fast.unlearn_lm(model, forget, retain, **EXACT).bases
    rec = _Recorded(_rows(retain[0]))
    kw = {k: v for k, v in EXACT.items() if k not in ("rule", "method")}
    kw.update(epochs=2, max_steps=None)              # 2 epochs x 2 forget batches = 4 steps
    res = unsc_fast.unlearn_lm(model, forget, rec, bases=bases, retain_weight=1.0, **kw)
    assert res.report.steps == 4
    assert rec.passes[0] == [0, 1, 2]                # the up-front check
    assert sum(rec.passes[1:], []) == [0, 1, 2, 0]


def test_sample_mode_with_a_retain_term_stops_on_the_forget_sets_rule(data):
    """Held-out data equal to the forget set: no forget sequence moves, so the run stops after
    one epoch, as without the term; that epoch still takes its retain steps (documented), so
    the weights move by the projected retain gradient alone."""
    retain, forget, _ = data
    retain = _rows(retain[0])
    model = llama(torch.float64)
    res = unsc_fast.unlearn_lm(model, forget, retain, holdout=forget, lr=1.0, epochs=3,
                               retain_weight=5.0, rule="energy:0.9", progress=False)
    assert res.report.active == [0.0] and len(res.report.retain_loss) == 1
    assert res.report.steps == len(forget)
    assert any(not torch.equal(p, q) for p, q in zip(res.model.parameters(),
                                                      model.parameters()))
