"""TOFU / OpenUnlearning metrics of an LM unlearning job.

All probabilities are *length-normalised* as in TOFU: for one answer, ``p = exp(-L)`` with
``L`` the mean negative log-likelihood over its labelled tokens (the answer's tokens and the
EOS that ends it).

- **answer probability** ``*_prob``: mean ``p`` of the trained answers of a split.
- **answer-token accuracy** ``*_acc``: share of labelled tokens where the greedy argmax is the
  label (tokens pooled over the split).
- **truth ratio** of a pair: ``TR = (geometric mean of p over the perturbed answers) / p of
  the paraphrased answer`` = ``exp(L_para - mean_j L_pert_j)``. Reported as TOFU does:
  forget ``mean(min(TR, 1/TR))`` (1 = cannot tell right from wrong, like a model that never
  saw the facts), retain ``mean(max(0, 1 - TR))`` (1 = strongly prefers the truth).
- **forget quality**: p-value of the two-sample Kolmogorov-Smirnov test between the forget
  set's TR values under the evaluated model and under the retrained model (scipy's
  ``ks_2samp``, two-sided, exact for small samples). High = indistinguishable from retrain.
- **ROUGE-L recall** ``*_rouge``: greedy generation (up to ``max_new_tokens``) against the
  trained answer, as the longest common subsequence of lowercased words over the answer's
  word count (TOFU's measure, without stemming).
- **model utility**: harmonic mean of retain ``prob``, retain truth-ratio score and retain
  ROUGE-L (TOFU's, over the retain split only: this corpus has no real-author / world-fact
  sets). The holdout split does not enter it.
- **holdout perplexity**: ``exp`` of the token-weighted mean NLL of the holdout answers.
- **membership attacks**: AUC of telling forget pairs (members) from holdout pairs
  (non-members) by the loss (``-L``) and by Min-K%-prob (mean of the lowest ``k`` share of
  answer-token log-probabilities, at least one token); 1 = every forget pair looks more
  like a member than every holdout pair, 0.5 = cannot tell (the retrained model's level).
- **fluency** of greedy answers to the forget questions: repeated-token rate (share of
  generated tokens equal to the previous generated token) and distinct-token ratio (distinct
  tokens / tokens, per generation, averaged); generations stop at EOS, which is not counted.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ... import helpers
from .corpus import QAPair
from .data import encode_prompt, make_loader, pad_id_of

#: The keys of :func:`evaluate_lm`'s result, in order.
METRIC_KEYS: tuple[str, ...] = (
    "forget_prob", "forget_acc", "forget_rouge", "forget_truth_ratio", "forget_tr_mean",
    "forget_quality", "retain_prob", "retain_acc", "retain_rouge", "retain_truth_ratio",
    "model_utility", "holdout_ppl", "mia_loss_auc", "mia_mink_auc", "gen_repeat_rate",
    "gen_distinct_ratio")


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logp, correct, mask)`` [B, T-1] of the next-token predictions: the log-probability
    of each label, whether the argmax equals it, and where a label is (not -100). The logits
    at position t predict the label at t + 1 (HF's shift)."""
    lg = logits[:, :-1].float()
    y = labels[:, 1:]
    mask = y != -100
    safe = y.clamp_min(0)
    logp = torch.log_softmax(lg, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    correct = lg.argmax(-1) == safe
    return logp * mask, correct & mask, mask


def min_k_score(logp: torch.Tensor, mask: torch.Tensor, k: float = 0.4) -> torch.Tensor:
    """Min-K%-prob per sequence: the mean of its ``max(1, floor(k * n))`` lowest label
    log-probabilities (``n`` labelled tokens). Higher = more member-like."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1] (got {k})")
    out = torch.empty(logp.shape[0])
    for i in range(logp.shape[0]):
        lp = logp[i][mask[i]]
        n = max(1, int(math.floor(k * lp.numel() + 1e-9)))
        out[i] = lp.sort().values[:n].mean() if lp.numel() else float("nan")
    return out


@torch.no_grad()
def answer_scores(model: torch.nn.Module, data: Iterable[dict], *, k: float = 0.4
                  ) -> dict[str, np.ndarray]:
    """Per sequence of contract batches (in order): ``nll`` (mean over labelled tokens),
    ``tokens`` (labelled count), ``correct`` (argmax hits) and ``min_k`` (Min-K%-prob)."""
    device = helpers.model_device(model)
    was = model.training
    model.eval()
    parts: dict[str, list] = {"nll": [], "tokens": [], "correct": [], "min_k": []}
    try:
        for batch in data:
            ids = batch["input_ids"].to(device)
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)
                           ).logits
            logp, correct, mask = token_logprobs(logits, batch["labels"].to(device))
            logp, correct, mask = logp.cpu(), correct.cpu(), mask.cpu()
            n = mask.sum(-1)
            parts["nll"].append((-logp.sum(-1) / n.clamp_min(1)).double())
            parts["tokens"].append(n)
            parts["correct"].append(correct.sum(-1))
            parts["min_k"].append(min_k_score(logp, mask, k).double())
    finally:
        model.train(was)
    return {key: torch.cat(v).numpy() for key, v in parts.items()}


def answer_accuracy(model: torch.nn.Module, data: Iterable[dict]) -> float:
    """Answer-token accuracy (greedy argmax == label, tokens pooled) over contract batches."""
    s = answer_scores(model, data)
    return float(s["correct"].sum() / max(1, s["tokens"].sum()))


def truth_ratios(model: torch.nn.Module, tokenizer, pairs: Sequence[QAPair], *,
                 batch_size: int = 64) -> np.ndarray:
    """TR per pair: geometric-mean length-normalised probability of the perturbed answers
    over that of the paraphrased answer (NaN for a pair without both)."""
    return _TruthRatioInputs(tokenizer, pairs, batch_size)(model)


class _TruthRatioInputs:
    """The encoded paraphrased and perturbed answers of ``pairs``: :func:`truth_ratios` of
    any model, tokenised once."""

    def __init__(self, tokenizer, pairs: Sequence[QAPair], batch_size: int):
        self.n = len(pairs)
        self.ok = [i for i, p in enumerate(pairs) if p.paraphrased_answer and p.perturbed_answers]
        if not self.ok:
            return
        sel = [pairs[i] for i in self.ok]
        self.para = make_loader(tokenizer, sel, batch_size=batch_size,
                                answers=[p.paraphrased_answer for p in sel])
        self.owner = [j for j, p in enumerate(sel) for _ in p.perturbed_answers]
        self.pert = make_loader(tokenizer, [sel[j] for j in self.owner], batch_size=batch_size,
                                answers=[a for p in sel for a in p.perturbed_answers])

    def __call__(self, model: torch.nn.Module) -> np.ndarray:
        out = np.full(self.n, np.nan)
        if not self.ok:
            return out
        para = answer_scores(model, self.para)["nll"]
        pert = answer_scores(model, self.pert)["nll"]
        n = len(self.ok)
        mean_pert = np.bincount(self.owner, weights=pert, minlength=n) / \
            np.bincount(self.owner, minlength=n)
        out[self.ok] = np.exp(para - mean_pert)
        return out


def forget_tr_score(tr: np.ndarray) -> float:
    """TOFU's forget truth-ratio statistic: mean of ``min(TR, 1/TR)`` (NaNs skipped)."""
    tr = tr[np.isfinite(tr)]
    return float(np.mean(np.minimum(tr, 1.0 / tr))) if tr.size else float("nan")


def retain_tr_score(tr: np.ndarray) -> float:
    """TOFU's retain truth-ratio statistic: mean of ``max(0, 1 - TR)`` (NaNs skipped)."""
    tr = tr[np.isfinite(tr)]
    return float(np.mean(np.maximum(0.0, 1.0 - tr))) if tr.size else float("nan")


def ks_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sided two-sample Kolmogorov-Smirnov p-value (``scipy.stats.ks_2samp``,
    method ``auto``: exact for samples up to 10 000); NaN if either sample is empty."""
    from scipy.stats import ks_2samp  # scipy comes with scikit-learn, a dependency

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not a.size or not b.size:
        return float("nan")
    return float(ks_2samp(a, b).pvalue)


def forget_quality(tr_model: Sequence[float], tr_retrain: Sequence[float]) -> float:
    """TOFU's forget quality: :func:`ks_pvalue` of the forget truth ratios of the evaluated
    model against the retrained model's (the same whether TR or 1/TR is compared)."""
    return ks_pvalue(tr_model, tr_retrain)


def auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """P(a member's score > a non-member's) + 0.5 P(tie): the ROC AUC of the score as a
    membership detector (Mann-Whitney). 1 = perfectly separated, 0.5 = no signal."""
    m = np.asarray(members, dtype=float)
    n = np.asarray(nonmembers, dtype=float)
    if not m.size or not n.size:
        return float("nan")
    from sklearn.metrics import roc_auc_score   # ties count half, as above
    return float(roc_auc_score(np.r_[np.ones(m.size), np.zeros(n.size)], np.r_[m, n]))


def perplexity(scores: dict[str, np.ndarray]) -> float:
    """``exp`` of the token-weighted mean NLL of :func:`answer_scores` output."""
    tokens = scores["tokens"].astype(float)
    return float(np.exp((scores["nll"] * tokens).sum() / max(1.0, tokens.sum())))


def generate_answers(model: torch.nn.Module, tokenizer, questions: Sequence[str], *,
                     max_new_tokens: int = 16, batch_size: int = 64) -> list[list[int]]:
    """Greedy answers (token ids, up to EOS, EOS excluded) to ``questions`` in the prompt
    format, left-padded in batches."""
    return _generate(model, tokenizer, [encode_prompt(tokenizer, q) for q in questions],
                     max_new_tokens, batch_size)


@torch.no_grad()
def _generate(model: torch.nn.Module, tokenizer, prompts: Sequence[list[int]],
              max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """:func:`generate_answers` from encoded prompts (:func:`~.data.encode_prompt`)."""
    device = helpers.model_device(model)
    eos, pad = tokenizer.eos_token_id, pad_id_of(tokenizer)
    was = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s:s + batch_size]
            n = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), n), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(chunk):
                ids[i, n - len(p):] = torch.tensor(p)
                mask[i, n - len(p):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=eos)[:, n:].tolist()
            for g in gen:
                out.append(g[:g.index(eos)] if eos in g else g)
    finally:
        model.train(was)
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall on lowercased words: LCS length / reference word count."""
    p, r = _words(prediction), _words(reference)
    if not r:
        return float("nan")
    prev = [0] * (len(p) + 1)
    for rw in r:
        cur = [0]
        for j, pw in enumerate(p):
            cur.append(prev[j] + 1 if rw == pw else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1] / len(r)


def repetition_stats(sequences: Sequence[Sequence[int]]) -> tuple[float, float]:
    """``(repeat_rate, distinct_ratio)`` of generated token sequences: the share of tokens
    (pooled; the first of each sequence has no predecessor and is not counted) equal to the
    previous token, and the mean over non-empty sequences of distinct tokens / tokens."""
    rep = pairs = 0
    distinct = []
    for seq in sequences:
        seq = list(seq)
        if not seq:
            continue
        rep += sum(a == b for a, b in zip(seq, seq[1:]))
        pairs += len(seq) - 1
        distinct.append(len(set(seq)) / len(seq))
    return (rep / pairs if pairs else 0.0,
            float(np.mean(distinct)) if distinct else float("nan"))


def _hmean(values: Sequence[float]) -> float:
    if any(not math.isfinite(v) for v in values):
        return float("nan")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def _rouge(model, tokenizer, pairs: Sequence[QAPair], prompts: Sequence[list[int]],
           max_new_tokens: int, batch_size: int) -> tuple[float, list[list[int]]]:
    gen = _generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
    return float(np.nanmean([rouge_l_recall(t, p.answer) for t, p in zip(texts, pairs)])), gen


def forget_truth_ratios(model: torch.nn.Module, task, *, batch_size: int = 64) -> np.ndarray:
    """The forget set's truth ratios: what :func:`evaluate_lm` needs from the retrained
    model (``retrain_truth_ratios``) to compute forget quality."""
    return truth_ratios(model, task.tokenizer, task.forget, batch_size=batch_size)


def evaluate_lm(model: torch.nn.Module, task, *, retrain_truth_ratios: Sequence[float] | None
                = None, k: float = 0.4, max_new_tokens: int = 16, batch_size: int = 64
                ) -> dict[str, float]:
    """Every metric of the module docstring, as floats under :data:`METRIC_KEYS`.

    ``task`` is an :class:`~.data.QATask`; the forget, ``retain_eval`` and holdout splits are
    read. ``forget_quality`` is NaN unless ``retrain_truth_ratios`` (from
    :func:`forget_truth_ratios` on the retrained model) is given; holdout metrics
    (``holdout_ppl``, ``mia_*``) are NaN without a holdout split; truth-ratio metrics are
    NaN for pairs without paraphrased and perturbed answers. Evaluating several models of
    one task: :class:`LMEvaluator` encodes the task once.
    """
    return LMEvaluator(task, k=k, max_new_tokens=max_new_tokens, batch_size=batch_size)(
        model, retrain_truth_ratios=retrain_truth_ratios)


class LMEvaluator:
    """:func:`evaluate_lm` for any number of models of one ``task``: its splits, truth-ratio
    answers and generation prompts are tokenised once, here, and reused by every call."""

    def __init__(self, task, *, k: float = 0.4, max_new_tokens: int = 16,
                 batch_size: int = 64):
        tok = self.tokenizer = task.tokenizer
        self.task, self.k = task, k
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        load = lambda pairs: make_loader(tok, pairs, batch_size=batch_size)  # noqa: E731
        self._forget, self._retain = load(task.forget), load(task.retain_eval)
        self._holdout = load(task.holdout) if task.holdout else None
        self._tr_forget = _TruthRatioInputs(tok, task.forget, batch_size)
        self._tr_retain = _TruthRatioInputs(tok, task.retain_eval, batch_size)
        self._prompts = {split: [encode_prompt(tok, p.question) for p in getattr(task, split)]
                         for split in ("forget", "retain_eval")}

    def forget_truth_ratios(self, model: torch.nn.Module) -> np.ndarray:
        """:func:`forget_truth_ratios` (at this batch size) from the encoded answers."""
        return self._tr_forget(model)

    def __call__(self, model: torch.nn.Module, *,
                 retrain_truth_ratios: Sequence[float] | None = None,
                 forget_tr: np.ndarray | None = None) -> dict[str, float]:
        """:func:`evaluate_lm` of ``model``. ``forget_tr``: the model's own forget truth
        ratios when they were already computed (:meth:`forget_truth_ratios`), e.g. the
        retrained model's, which are also its ``retrain_truth_ratios``."""
        task, tok, k = self.task, self.tokenizer, self.k
        f = answer_scores(model, self._forget, k=k)
        r = answer_scores(model, self._retain, k=k)
        tr_f = self._tr_forget(model) if forget_tr is None else forget_tr
        tr_r = self._tr_retain(model)
        f_rouge, gen = _rouge(model, tok, task.forget, self._prompts["forget"],
                              self.max_new_tokens, self.batch_size)
        r_rouge, _ = _rouge(model, tok, task.retain_eval, self._prompts["retain_eval"],
                            self.max_new_tokens, self.batch_size)
        out = {
            "forget_prob": float(np.exp(-f["nll"]).mean()),
            "forget_acc": float(f["correct"].sum() / f["tokens"].sum()),
            "forget_rouge": f_rouge,
            "forget_truth_ratio": forget_tr_score(tr_f),
            "forget_tr_mean": (float(np.nanmean(tr_f)) if np.isfinite(tr_f).any()
                               else float("nan")),
            "forget_quality": (forget_quality(tr_f, retrain_truth_ratios)
                               if retrain_truth_ratios is not None else float("nan")),
            "retain_prob": float(np.exp(-r["nll"]).mean()),
            "retain_acc": float(r["correct"].sum() / r["tokens"].sum()),
            "retain_rouge": r_rouge,
            "retain_truth_ratio": retain_tr_score(tr_r),
        }
        out["model_utility"] = _hmean([out["retain_prob"], out["retain_truth_ratio"],
                                       out["retain_rouge"]])
        if self._holdout is not None:
            h = answer_scores(model, self._holdout, k=k)
            out["holdout_ppl"] = perplexity(h)
            out["mia_loss_auc"] = auc(-f["nll"], -h["nll"])
            out["mia_mink_auc"] = auc(f["min_k"], h["min_k"])
        else:
            out.update(holdout_ppl=float("nan"), mia_loss_auc=float("nan"),
                       mia_mink_auc=float("nan"))
        out["gen_repeat_rate"], out["gen_distinct_ratio"] = repetition_stats(gen)
        return {key: out[key] for key in METRIC_KEYS}
