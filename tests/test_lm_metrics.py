"""The LM metrics (unsc_fast.lab.lm.metrics) on constructed inputs with known answers."""
import math
import types

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from unsc_fast.lab.lm import metrics as M  # noqa: E402
from unsc_fast.lab.lm.corpus import QAPair  # noqa: E402
from unsc_fast.lab.lm.data import encode_pair  # noqa: E402
from unsc_fast.lab.lm.tokenizer import build_tokenizer  # noqa: E402


class Bigram(torch.nn.Module):
    """logits at position t = table[input_ids[t]]: probabilities computable by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None):
        return types.SimpleNamespace(logits=self.table[input_ids])


def _hand_norm_logprob(table, tok, question, answer):
    """Mean log-prob of the labelled tokens, by hand (a loop over positions)."""
    e = encode_pair(tok, question, answer)
    lp = []
    for t in range(1, len(e["input_ids"])):
        if e["labels"][t] != -100:
            row = torch.log_softmax(table[e["input_ids"][t - 1]].double(), -1)
            lp.append(float(row[e["labels"][t]]))
    return sum(lp) / len(lp)


@pytest.fixture(scope="module")
def toy():
    q = "Which genre does Ada write?"
    pair = QAPair(q, "Ada writes poetry.", "The genre of Ada is poetry.",
                  ("The genre of Ada is science fiction.", "The genre of Ada is crime."))
    tok = build_tokenizer(["Question: Answer:", q, pair.answer, pair.paraphrased_answer,
                           *pair.perturbed_answers])
    g = torch.Generator().manual_seed(0)
    table = torch.randn(len(tok), len(tok), generator=g) * 2
    return tok, pair, table


def test_truth_ratio_matches_hand_computation(toy):
    tok, pair, table = toy
    model = Bigram(table)
    para = _hand_norm_logprob(table, tok, pair.question, pair.paraphrased_answer)
    pert = [_hand_norm_logprob(table, tok, pair.question, a) for a in pair.perturbed_answers]
    # geometric mean of the length-normalised perturbed probabilities over the paraphrase's
    expected = math.exp(sum(pert) / len(pert)) / math.exp(para)
    lengths = {len(encode_pair(tok, pair.question, a)["input_ids"])
               for a in pair.perturbed_answers}
    assert len(lengths) == 2          # unequal lengths: the normalisation matters
    tr = M.truth_ratios(model, tok, [pair, QAPair("Which genre does Ada write?", "x")])
    assert tr[0] == pytest.approx(expected, rel=1e-5)
    assert math.isnan(tr[1])          # no paraphrase / perturbations


def test_truth_ratio_direction(toy):
    """A model that puts the paraphrase's value first has TR < 1; the reverse, TR > 1."""
    tok, pair, _ = toy
    v = len(tok)
    is_ = tok.convert_tokens_to_ids("is")
    good = torch.zeros(v, v)
    good[is_, tok.convert_tokens_to_ids("poetry")] = 5.0
    assert M.truth_ratios(Bigram(good), tok, [pair])[0] < 1.0
    bad = torch.zeros(v, v)
    bad[is_, tok.convert_tokens_to_ids("crime")] = 5.0
    bad[is_, tok.convert_tokens_to_ids("science")] = 5.0
    assert M.truth_ratios(Bigram(bad), tok, [pair])[0] > 1.0
    assert M.truth_ratios(Bigram(torch.zeros(v, v)), tok, [pair])[0] == pytest.approx(1.0)


def test_answer_scores_probability_is_length_normalised(toy):
    tok, pair, table = toy
    from unsc_fast.lab.lm.data import make_loader
    s = M.answer_scores(Bigram(table), make_loader(tok, [pair], batch_size=1))
    hand = _hand_norm_logprob(table, tok, pair.question, pair.answer)
    assert s["nll"][0] == pytest.approx(-hand, rel=1e-5)
    n = sum(t != -100 for t in encode_pair(tok, pair.question, pair.answer)["labels"])
    assert s["tokens"][0] == n


def test_token_logprobs_shift_and_accuracy():
    # vocabulary 4; logits at position t favour token (t + 1) % 4
    logits = torch.full((1, 4, 4), -10.0)
    for t in range(4):
        logits[0, t, (t + 1) % 4] = 10.0
    labels = torch.tensor([[-100, 1, 2, 0]])          # third label is wrong (3 expected)
    logp, correct, mask = M.token_logprobs(logits, labels)
    assert mask.tolist() == [[True, True, True]]
    assert correct.tolist() == [[True, True, False]]
    assert logp[0, 2] < -19 and logp[0, 0] > -1e-3


def test_min_k_on_constructed_logprobs():
    logp = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0, 0.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    assert M.min_k_score(logp, mask, 0.4).item() == pytest.approx(-4.5)   # floor(2.0) = 2
    assert M.min_k_score(logp, mask, 0.1).item() == pytest.approx(-5.0)   # at least 1
    assert M.min_k_score(logp, mask, 1.0).item() == pytest.approx(-3.0)
    with pytest.raises(ValueError):
        M.min_k_score(logp, mask, 0.0)


def test_auc_known_values():
    assert M.auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert M.auc([0, 1, 2], [3, 4, 5]) == 0.0
    assert M.auc([1, 1, 1], [1, 1, 1]) == 0.5
    assert M.auc([1, 2, 3], [1, 2, 3]) == 0.5
    # against scikit-learn on tied random scores
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40), rng.integers(1, 6, 30)
    ref = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[a, b])
    assert M.auc(a, b) == pytest.approx(ref)


def test_ks_pvalue_known_values():
    # completely separated samples of 3 and 3: D = 1; 2 of the C(6, 3) = 20 orderings
    # reach it (all x first or all y first)
    assert M.ks_pvalue([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)
    assert M.ks_pvalue([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    assert M.ks_pvalue([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert M.forget_quality([0.1, 0.2], [0.1, 0.2]) == pytest.approx(1.0)
    # TR or 1/TR: forget quality does not change
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(size=30), rng.lognormal(0.5, size=25)
    assert M.forget_quality(a, b) == pytest.approx(M.forget_quality(1 / a, 1 / b))
    assert math.isnan(M.ks_pvalue([], [1.0]))


def test_truth_ratio_statistics():
    tr = np.array([0.5, 2.0, 1.0, np.nan])
    assert M.forget_tr_score(tr) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert M.retain_tr_score(tr) == pytest.approx((0.5 + 0.0 + 0.0) / 3)


def test_repetition_stats_on_constructed_sequences():
    rep, distinct = M.repetition_stats([[1, 1, 2, 3], [4], []])
    assert rep == pytest.approx(1 / 3)                  # one repeat in 3 successor tokens
    assert distinct == pytest.approx((3 / 4 + 1) / 2)
    assert M.repetition_stats([[7, 7, 7, 7]]) == (1.0, 0.25)


def test_rouge_l_recall():
    assert M.rouge_l_recall("Ada writes poetry.", "Ada writes poetry.") == 1.0
    assert M.rouge_l_recall("poetry Ada", "Ada writes poetry") == pytest.approx(1 / 3)
    assert M.rouge_l_recall("ada WRITES", "Ada writes poetry") == pytest.approx(2 / 3)
    assert M.rouge_l_recall("", "Ada") == 0.0


def test_perplexity_is_token_weighted():
    s = {"nll": np.array([1.0, 3.0]), "tokens": np.array([3, 1])}
    assert M.perplexity(s) == pytest.approx(math.exp(1.5))
