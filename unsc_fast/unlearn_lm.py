"""UNSC for causal language models: forget some sequences' answers inside D_r's null space.

The classifier job (:func:`unsc_fast.unlearn`) transposed to a causal LM (spec § 5):

1. **Statistics and bases** of every attention and MLP projection over the retained
   sequences, padding excluded (:class:`SecondMoments` filters by ``attention_mask`` and lets
   q/k/v and gate/up share one statistic).
2. **Pseudo-labels per token**, computed once from the original model before any update: at
   each answer position, the token the original model scores highest other than the true one
   (teacher-forced on the true prefix: ``logits[:, t - 1]`` predicts token ``t``).
3. **Projected plain SGD** (no momentum, no weight decay: spec § 1.5) on the forget set,
   every covered weight gradient projected onto the null space (:class:`ProjectedSGD`).

Over-unlearning guard (``mode="sample"``, the default): forgotten entities should look like
unseen ones, not like garbage. Each forget sequence gets a target for its *answer loss* (mean
NLL over its answer tokens) from the original model's answer losses on ``holdout`` (QA of
entities it never saw), by the same rank-to-quantile map as the classifier's sample mode
(:class:`LossCalibration`, one class). A sequence is pushed only while its answer loss is
below its target, and the run stops once no sequence moved for a whole epoch.
``mode="token"`` is the paper's rule without the guard: every answer token towards its
pseudo-label for every epoch.

Optional retain term (``retain_weight`` > 0, default 0 = the paper's UNSC): each step also
descends ``retain_weight`` x the answer NLL of the next retain batch, through the same
projection. The projection keeps what D_r's inputs span with energy ε; the forget push harms
the retained answers only through the remaining 1 - ε, and that is the only part of the
retain gradient the projection lets through, so the term repairs the harm where it happens
(issue #14: grids in docs/reproduction.md, "Language models").

Which loss pushes a sequence in ``"sample"`` mode (``loss=``): ``"ascent"`` (default) is
the classifier sample mode's rule, ``log(target) - log(answer loss)``, which raises the true
tokens' loss without choosing where the probability goes; ``"pseudo"`` is the paper's
calibration applied per token, cross-entropy towards the pseudo-label tokens (mean over the
sequence's answer tokens, or over those kept by ``pseudo_min_prob``), while the sequence is
below target. ``"ascent"`` is the default by measurement (issue #14, TOFU-style corpus, 200
authors, forget 5 %, seed 0; grids in docs/reproduction.md, "Language models"): at model
utility >= 0.95 x the original's, ascent reached forget quality 0.01-0.13, the pseudo-label
loss never above 1e-6 (ε 0.99-0.9999, lr 0.3-3, with or without ``pseudo_min_prob``).
An answer is mostly template tokens (the name, "was born in"), shared with the retained
authors; sending each of them to the original's second choice costs the retain set more
than it moves the one fact token the retrained model does not know.

Batches follow the Hugging Face convention: dicts of ``input_ids`` [B, T],
``attention_mask`` [B, T] (1 = real token, right padding) and ``labels`` [B, T] equal to
``input_ids`` at answer tokens (the EOS ending the answer included) and -100 elsewhere,
unshifted. ``transformers`` is never imported here: any module with
``model(input_ids=, attention_mask=).logits`` works (LLaMA's ``nn.Linear``, GPT-2's
``Conv1D``).
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import helpers
from .bases import NullSpace, Rule, parse_rule
from .calibration import LossCalibration
from .layers import select_layers
from .reference import pseudo_labels
from .unlearn import (ProjectedSGD, UnlearnReport, build_bases,
                      check_finite_outputs, finish_unlearning, freeze_for_unlearning)

__all__ = ["unlearn_lm", "lm_bases", "LMUnlearnResult", "LMUnlearnReport", "lm_pseudo_labels",
           "answer_nll", "mean_answer_nll", "answer_mask", "check_lm_batch", "lm_layers",
           "IGNORE"]

IGNORE = -100   # the label of a position that is not an answer token (HF convention)
_MODES = ("sample", "token")
_LOSSES = ("pseudo", "ascent")


@dataclass
class LMUnlearnReport(UnlearnReport):
    """:class:`UnlearnReport` of :func:`unlearn_lm`: ``forget_samples`` counts sequences;
    ``active`` is the share of forget sequences still below their target per epoch
    (``mode="sample"``)."""

    time_labels: float = 0.0      # pseudo-labels (and targets) from the original model
    forget_tokens: int = 0        # answer tokens in the forget set
    steps: int = 0                # SGD steps taken
    mode: str = "sample"
    loss: str = "ascent"
    pushed_tokens: int = 0        # answer tokens given a pseudo-label (``pseudo_min_prob``)
    retain_weight: float = 0.0    # weight of the projected retain term (0: none)
    # its mean answer NLL per epoch (``epoch_loss`` then holds forget loss + the term)
    retain_loss: list[float] = field(default_factory=list)


@dataclass
class LMUnlearnResult:
    """What :func:`unlearn_lm` returns: the unlearned copy, its bases and the report."""

    model: nn.Module
    bases: NullSpace
    report: LMUnlearnReport


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] bool: where the shifted logits ``logits[:, :-1]`` predict an answer token."""
    return labels[:, 1:] != IGNORE


def lm_pseudo_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token pseudo-labels, aligned with ``labels`` (unshifted) and -100 elsewhere.

    At every answer position t (``labels[:, t] != -100``, t ≥ 1) the token that ``logits[:,
    t - 1]`` scores highest among all tokens except the true one ``labels[:, t]``
    (:func:`unsc_fast.pseudo_labels`, sample-level rule). ``logits``: [B, T, V]."""
    out = torch.full_like(labels, IGNORE)
    pos = answer_mask(labels)
    out[:, 1:][pos] = pseudo_labels(logits[:, :-1][pos], labels[:, 1:][pos])
    return out


def _token_losses(logits: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per answer token NLL in float64, row of each token, answer tokens per row)."""
    pos = answer_mask(labels)
    nll = F.cross_entropy(logits[:, :-1][pos].double(), labels[:, 1:][pos], reduction="none")
    rows = pos.nonzero()[:, 0]
    return nll, rows, pos.sum(1)


def _per_row_mean(values: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(len(counts), dtype=values.dtype, device=values.device)
    return total.index_add(0, rows, values) / counts.clamp_min(1).to(values.dtype)


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] float64: each sequence's answer loss, the mean NLL over its answer tokens."""
    return _per_row_mean(*_token_losses(logits, labels))


def _vocab_size(model: nn.Module) -> int | None:
    emb = getattr(model, "get_input_embeddings", lambda: None)()
    n = getattr(emb, "num_embeddings", None)
    return n if isinstance(n, int) else getattr(getattr(model, "config", None), "vocab_size", None)


def check_lm_batch(batch, i: int, what: str, vocab: int | None = None,
                   labels: bool = True) -> dict[str, torch.Tensor]:
    """Check one batch against the data contract; return its ``input_ids``,
    ``attention_mask`` (ones when absent and ``labels`` is False) and ``labels``.

    Raises a one-line ``TypeError``/``ValueError`` naming ``what`` and batch ``i`` when it is
    not a mapping, lacks a key, has mismatched shapes, token ids outside ``[0, vocab)``,
    labels that differ from ``input_ids`` at answer positions or sit on padding, or (with
    ``labels``) a sequence without answer tokens."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{what} batch {i} is a {type(batch).__name__}; expected a dict with"
                        " input_ids, attention_mask and labels")
    need = ("input_ids", "attention_mask", "labels") if labels else ("input_ids",)
    missing = [k for k in need if k not in batch]
    if missing:
        raise ValueError(f"{what} batch {i} lacks {missing} (it has {sorted(batch)})")
    ids = batch["input_ids"]
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long \
            or ids.numel() == 0:
        raise ValueError(f"{what} batch {i}: input_ids must be a non-empty [B, T] LongTensor")
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    out = {"input_ids": ids, "attention_mask": mask}
    if labels:
        out["labels"] = batch["labels"]
    for k, v in out.items():
        if not isinstance(v, torch.Tensor) or v.shape != ids.shape:
            raise ValueError(f"{what} batch {i}: {k} must be a tensor of input_ids' shape"
                             f" {tuple(ids.shape)}")
    if vocab is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"{what} batch {i} holds token ids in [{int(ids.min())},"
                         f" {int(ids.max())}], outside the model's vocabulary of {vocab}")
    if labels:
        lab = out["labels"]
        ans = lab != IGNORE
        if bool((ans & (mask == 0)).any()):
            raise ValueError(f"{what} batch {i} has labels on padding (attention_mask 0)")
        if bool((lab[ans] != ids[ans]).any()):
            raise ValueError(f"{what} batch {i}: labels differ from input_ids at answer"
                             " positions (expected unshifted labels, -100 elsewhere)")
        empty = (~answer_mask(lab)).all(1).nonzero()[:, 0].tolist()
        if empty:
            raise ValueError(f"{what} batch {i}: sequence(s) {empty} have no answer token"
                             " (labels all -100 after the first position)")
    return out


def _layer_names(model: nn.Module, layers: Iterable[str] | str | None) -> list[str]:
    """The module names ``layers`` (names or patterns; default :func:`lm_layers`) selects."""
    return lm_layers(model) if layers is None else list(select_layers(model, layers))


def lm_layers(model: nn.Module) -> list[str]:
    """The default layers of :func:`unlearn_lm`: every covered projection (``nn.Linear``,
    ``Conv1D``) except the output head (``model.get_output_embeddings()``, tied or not) and
    any weight tied to another module: the attention and MLP projections."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    return [n for n, m in select_layers(model).items() if m is not head]


def _keys(b: Mapping[str, torch.Tensor]) -> list[tuple]:
    """Each sequence's key: its real tokens, -1, their labels (one ``tolist`` per batch)."""
    out = []
    for ids, lab, mask in zip(b["input_ids"].tolist(), b["labels"].tolist(),
                              b["attention_mask"].tolist()):
        keep = [i for i, m in enumerate(mask) if m]
        out.append(tuple(ids[i] for i in keep) + (-1,) + tuple(lab[i] for i in keep))
    return out


def _logits(model: nn.Module, b: dict, device) -> torch.Tensor:
    return model(input_ids=b["input_ids"].to(device),
                 attention_mask=b["attention_mask"].to(device)).logits


@dataclass
class _Seq:
    pseudo: torch.Tensor           # pseudo-label of each answer token, in order
    loss: float                    # the original model's answer loss
    target: float = math.inf       # mode "sample": stop once the answer loss reaches it


@dataclass
class _Labels:
    seqs: dict[tuple, _Seq] = field(default_factory=dict)
    sequences: int = 0
    tokens: int = 0
    pushed: int = 0                # answer tokens with a pseudo-label (pseudo_min_prob)
    probe: dict | None = None


def _batches(data: Iterable, what: str, vocab: int | None) -> Iterator[dict]:
    for i, batch in enumerate(data):
        yield check_lm_batch(batch, i, what, vocab)


@torch.no_grad()
def _label_pass(original: nn.Module, forget: Iterable, vocab: int | None, device,
                min_prob: float = 0.0) -> _Labels:
    """One pass of the frozen original over D_f: checks every batch, keeps each sequence's
    pseudo-labels and answer loss (keyed by its tokens, so shuffling is fine). A token whose
    pseudo-label the original gives a probability below ``min_prob`` gets none (-100), except
    each sequence's most plausible one."""
    out = _Labels()
    for i, b in enumerate(_batches(forget, "forget", vocab)):
        logits = _logits(original, b, device)
        if logits.shape[-1] < 2:
            raise ValueError(f"the model has {logits.shape[-1]} output token(s); a pseudo-label"
                             " needs a second one")
        lab = b["labels"].to(device)
        pseudo = lm_pseudo_labels(logits, lab)
        losses = answer_nll(logits, lab).tolist()
        pos = answer_mask(lab)
        counts = pos.sum(1).tolist()
        # the original's probability of each pseudo-label, at the answer tokens only
        ps_all = pseudo[:, 1:][pos]
        plaus = logits[:, :-1][pos].float().softmax(-1).gather(
            -1, ps_all.unsqueeze(-1)).squeeze(-1)
        for r, (key, p_r, ps) in enumerate(zip(_keys(b), plaus.split(counts),
                                               ps_all.split(counts))):
            keep = p_r >= min_prob
            keep[int(p_r.argmax())] = True      # every sequence keeps its most plausible one
            ps = ps.clone()
            ps[~keep] = IGNORE
            out.seqs[key] = _Seq(ps.cpu(), losses[r])
            out.pushed += int(keep.sum())
        out.sequences += len(lab)
        out.tokens += int(pos.sum())
        if out.probe is None:
            out.probe = {k: b[k][:64].to(device) for k in ("input_ids", "attention_mask")}
    if out.sequences == 0:
        raise ValueError("the forget data is empty")
    return out


@torch.no_grad()
def _answer_losses(model: nn.Module, data: Iterable, what: str, vocab, device) -> torch.Tensor:
    out = [answer_nll(_logits(model, b, device), b["labels"].to(device)).cpu()
           for b in _batches(data, what, vocab)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _check_args(forget, retain, holdout, bases, layers_, rule, method, mode, loss, lr, epochs,
                max_steps, max_retain_tokens, retain_weight=0.0):
    helpers.check_sgd_args(lr, epochs, forget=forget, retain=retain, holdout=holdout)
    helpers.check_weight("retain_weight", retain_weight)
    if retain_weight > 0 and retain is None:
        raise ValueError("retain_weight > 0 needs retain data with answer labels (its answer"
                         " loss is the retain term), also when bases are given")
    for name, v in (("max_steps", max_steps), ("max_retain_tokens", max_retain_tokens)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    if mode == "sample" and holdout is None:
        raise ValueError("mode='sample' needs holdout data (QA of entities the model never"
                         " saw) for its targets; mode='token' is the paper's rule without them")
    if mode == "token" and holdout is not None:
        raise ValueError("mode='token' takes no holdout data (the targets belong to"
                         " mode='sample')")
    if method not in ("fast", "eigh"):
        raise ValueError(f"method must be 'fast' or 'eigh', got {method!r}")
    if bases is None and retain is None:
        raise ValueError("UNSC needs D_r statistics: pass retain data or bases")
    if bases is not None and layers_ is not None:
        raise ValueError("give layers or bases, not both (the bases name their layers)")
    if bases is not None and not isinstance(bases, NullSpace):
        raise TypeError(f"bases must be a NullSpace, got {type(bases).__name__}")
    return parse_rule(rule)


def unlearn_lm(model: nn.Module, forget: Iterable, retain: Iterable | None = None, *,
               bases: NullSpace | None = None, rule: Rule | str = "energy:0.99",
               method: str = "fast", layers: Iterable[str] | str | None = None,
               holdout: Iterable | None = None, mode: str = "sample", loss: str = "ascent",
               lr: float = 0.05, epochs: int = 10, max_steps: int | None = None,
               pseudo_min_prob: float = 0.0, retain_weight: float = 0.0,
               max_retain_tokens: int | None = None,
               stats_dtype: torch.dtype = torch.float32, seed: int = 0,
               backend: str | None = None, progress: bool = True) -> LMUnlearnResult:
    """Make a causal LM forget the answers of ``forget`` while keeping ``retain``'s.

    Args:
        model: a causal LM, ``model(input_ids=, attention_mask=).logits`` [B, T, V]; left
            untouched (a copy is unlearned).
        forget: re-iterable batches (dicts of ``input_ids``, ``attention_mask``, ``labels``,
            see the module docstring) of D_f; every sequence needs an answer token.
        retain: batches of D_r; needed unless ``bases``. ``labels`` are ignored unless
            ``retain_weight`` > 0.
        bases: precomputed bases (skips the statistics; ``rule``, ``method``, ``layers``
            then unused).
        rule: the rank rule (spec § 1.2), default the paper's ε = 0.99.
        method: ``"fast"`` (default: float32 block Krylov or subspace iteration, made for
            LLM-width layers, keeps at least the exact rule's energy) or ``"eigh"`` (float64
            reference).
        layers: module names or patterns to cover; default :func:`lm_layers` (every
            attention and MLP projection; embeddings, norms and the output head frozen).
        holdout: batches of QA about entities the model never saw, same format; the
            targets of ``mode="sample"``.
        mode: ``"sample"`` (default; per-sequence targets from ``holdout``, a sequence stops
            once its answer loss reaches its target, the run once none moved in an epoch)
            or ``"token"`` (the paper: all answer tokens to their pseudo-labels, all epochs).
        loss: ``mode="sample"`` only: ``"ascent"`` (default; ``log(target) - log(answer
            loss)``) or ``"pseudo"`` (CE towards the pseudo-labels); see the module doc.
            ``mode="token"`` ignores it (always the pseudo-labels).
        lr, epochs, max_steps: plain SGD's step size, passes over D_f, and an optional cap
            on steps (the budget when comparing methods).
        pseudo_min_prob: push only the answer tokens whose pseudo-label the original gives at
            least this probability (and each sequence's most plausible one); 0 (default) =
            every answer token, the paper's rule. Used by ``loss="pseudo"`` and
            ``mode="token"``.
        retain_weight: weight of a retain term (default 0: none, the paper's UNSC). When
            > 0, every step also reads the next batch of ``retain`` (cycled; it then needs
            ``labels`` with answer tokens) and adds ``retain_weight`` x its answer NLL (mean
            over its answer tokens) to the forget loss; the sum's gradient is projected as
            usual. The projection already removes what the retained inputs span; what it
            lets through is the low-energy part (1 - ε of D_r's energy) the retained data
            still uses, and the retain term's projected gradient acts on that same part: it
            descends the retain loss exactly where the forget push can harm it. The steps
            and the stopping rule are the forget set's, as without it; the term is added on
            every step, also where the forget batch has nothing left to move, so in
            ``"sample"`` mode the last epoch (the one in which no forget sequence moved, the
            run's stop) still takes its retain steps. ``retain`` is read once more up front
            to check its labels.
        max_retain_tokens: cap on the D_r tokens entering the statistics.
        stats_dtype: accumulation dtype of the statistics (float64 for tests).
        seed: seeds torch's RNG inside the run (the caller's RNG state is restored).
        backend: kernel backend for statistics and projection (:mod:`unsc_fast.dispatch`).
        progress: progress bars.

    Returns:
        ``LMUnlearnResult(model, bases, report)``.

    Raises ``ValueError``/``TypeError`` on bad arguments or batches before any training,
    ``FloatingPointError`` if the loss or the final outputs turn NaN/Inf.
    """
    rule = _check_args(forget, retain, holdout, bases, layers, rule, method, mode, loss, lr,
                       epochs, max_steps, max_retain_tokens, retain_weight)
    if isinstance(pseudo_min_prob, bool) or not isinstance(pseudo_min_prob, (int, float)) \
            or not 0.0 <= pseudo_min_prob <= 1.0:
        raise ValueError(f"pseudo_min_prob must be a number in [0, 1], got {pseudo_min_prob!r}")
    if bases is not None:
        bases.check(model)
    else:   # chosen once, here: bad names raise before any data is read
        layers = _layer_names(model, layers)
    device = helpers.model_device(model)
    vocab = _vocab_size(model)
    if retain_weight > 0:    # the retain term reads labels: check them before any work
        n = 0
        for n, batch in enumerate(retain, 1):
            check_lm_batch(batch, n - 1, "retain", vocab)
        if n == 0:
            raise ValueError("the retain data is empty")
    if mode == "token":
        loss = "pseudo"          # the paper's rule: every answer token to its pseudo-label
    report = LMUnlearnReport(mode=mode, loss=loss, retain_weight=float(retain_weight))
    was = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            t = time.perf_counter()
            labels = _label_pass(model, forget, vocab, device, pseudo_min_prob)
            if mode == "sample":
                f_keys = list(labels.seqs)
                f_loss = torch.tensor([labels.seqs[k].loss for k in f_keys], dtype=torch.float64)
                h_loss = _answer_losses(model, holdout, "holdout", vocab, device)
                zeros = torch.zeros(len(f_loss), dtype=torch.long)
                calib = LossCalibration(f_loss, zeros, h_loss, torch.zeros(len(h_loss),
                                                                           dtype=torch.long))
                for k, tgt in zip(f_keys, calib(f_loss, zeros).tolist()):
                    labels.seqs[k].target = tgt
            report.time_labels = time.perf_counter() - t
            report.forget_samples, report.forget_tokens = labels.sequences, labels.tokens
            report.pushed_tokens = labels.pushed
            if bases is None:
                bases = lm_bases(model, retain, rule, method=method, layers=layers,
                                 max_retain_tokens=max_retain_tokens, stats_dtype=stats_dtype,
                                 backend=backend, progress=progress, report=report)
            report.record_bases(bases)
            unlearned = _train(model, forget, bases, labels, report, lr, epochs, max_steps,
                               mode, loss, backend, progress, device,
                               retain if retain_weight > 0 else None, float(retain_weight))
    finally:
        model.train(was)
    check_finite_outputs(unlearned, labels.probe, lr, epochs)
    return LMUnlearnResult(finish_unlearning(unlearned), bases, report)


def lm_bases(model: nn.Module, retain: Iterable, rule: Rule | str = "energy:0.99", *,
             method: str = "fast", layers: Iterable[str] | str | None = None,
             max_retain_tokens: int | None = None, stats_dtype: torch.dtype = torch.float32,
             backend: str | None = None, progress: bool = True,
             report: UnlearnReport | None = None) -> NullSpace:
    """The bases :func:`unlearn_lm` computes: statistics of ``layers`` (default
    :func:`lm_layers`) over the real tokens of ``retain`` (checked against the data
    contract; ``labels`` optional and unused), then the bases under ``rule`` by ``method``.
    Phase times go into ``report`` when given. Reuse them with ``unlearn_lm(bases=...)``."""
    # names or patterns go to the statistics as they are: SecondMoments selects them (the
    # same selection, done once)
    return build_bases(model, _RetainInputs(retain, _vocab_size(model)), parse_rule(rule),
                       report if report is not None else UnlearnReport(),
                       layers=lm_layers(model) if layers is None else layers,
                       method=method, backend=backend, dtype=stats_dtype,
                       max_tokens=max_retain_tokens, progress=progress)


class _RetainInputs:
    """D_r batches as model inputs only (``labels`` dropped: no loss in the forward)."""

    def __init__(self, data: Iterable, vocab: int | None):
        self.data, self.vocab = data, vocab

    def __iter__(self) -> Iterator[dict]:
        for i, batch in enumerate(self.data):
            b = check_lm_batch(batch, i, "retain", self.vocab, labels=False)
            yield {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}


def _sequence_loss(logits: torch.Tensor, lab: torch.Tensor, pseudo: torch.Tensor,
                   target: torch.Tensor, mode: str, loss: str) -> tuple[torch.Tensor, int]:
    """The loss of one batch and how many of its sequences it pushes."""
    if mode == "token":
        pos = answer_mask(lab)
        return F.cross_entropy(logits[:, :-1][pos], pseudo[:, 1:][pos]), len(lab)
    if loss == "pseudo":
        # one float64 log-softmax for both: the true tokens' loss (only compared with the
        # target, no gradient) and the mean CE over each sequence's pushed tokens (0 where
        # pseudo is -100)
        pos = answer_mask(lab)
        logp = logits[:, :-1][pos].double().log_softmax(-1)
        rows, counts = pos.nonzero()[:, 0], pos.sum(1)
        true = _per_row_mean(F.nll_loss(logp.detach(), lab[:, 1:][pos], reduction="none"),
                             rows, counts)
        ps = pseudo[:, 1:][pos]
        nll = F.nll_loss(logp, ps, reduction="none")
        pushed = (ps != IGNORE).long()
        push = _per_row_mean(nll, rows, torch.zeros_like(counts).index_add(0, rows, pushed))
        active = true < target
    else:
        true = answer_nll(logits, lab)
        active = true.detach() < target
        tiny = torch.finfo(torch.float64).tiny
        push = torch.log(target.clamp_min(tiny)) - torch.log(true.clamp_min(tiny))
    value = torch.where(active, push, torch.zeros_like(push)).sum() / len(lab)
    return value.to(logits.dtype), int(active.sum())


def mean_answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean NLL over every answer token of the batch (Hugging Face's ``.loss``): the
    retain term's loss, and the lab's baselines' answer loss."""
    pos = answer_mask(labels)
    return F.cross_entropy(logits[:, :-1][pos], labels[:, 1:][pos])


def _train(original, forget, bases, labels, report, lr, epochs, max_steps, mode, loss, backend,
           progress, device, retain=None, retain_weight=0.0) -> nn.Module:
    unlearned = copy.deepcopy(original)
    params = freeze_for_unlearning(unlearned, bases)
    if not params:
        raise ValueError("the bases cover no weight of the model")
    unlearned.eval()   # no dropout anywhere: the bases describe the clean inputs
    bases = bases.to(device=device, dtype=params[0].dtype)
    t = time.perf_counter()
    # the retain batches were checked up front (unlearn_lm): cycled here as they are
    stream = helpers.cycle(retain, "retain") if retain is not None else None
    with helpers.progress(range(epochs), progress and epochs > 1, "unlearning") as bar, \
            ProjectedSGD(unlearned, params, bases, lr, backend=backend) as opt:
        for epoch in bar:
            total, count, moving, r_total, r_steps = 0.0, 0, 0, 0.0, 0
            for b in forget:          # checked by the labelling pass
                if max_steps is not None and report.steps >= max_steps:
                    break
                lab = b["labels"].to(device)
                seqs = [labels.seqs.get(k) for k in _keys(b)]
                if any(s is None for s in seqs):
                    raise ValueError("the forget data changed between passes: a sequence"
                                     " was not seen by the labelling pass")
                pseudo = torch.full_like(lab, IGNORE)
                pseudo[:, 1:][answer_mask(lab)] = torch.cat([s.pseudo for s in seqs]).to(device)
                target = torch.tensor([s.target for s in seqs], dtype=torch.float64,
                                      device=device)
                value, n_active = _sequence_loss(_logits(unlearned, b, device), lab, pseudo,
                                                 target, mode, loss)
                # also where nothing is left to move: the term keeps repairing what earlier
                # pushes harmed (the results in docs/reproduction.md were run so)
                if stream is not None:
                    r = next(stream)
                    r_loss = mean_answer_nll(_logits(unlearned, r, device),
                                              r["labels"].to(device))
                    r_total = r_total + r_loss.detach().double()   # read once an epoch
                    r_steps += 1
                    value = value + retain_weight * r_loss.to(value.dtype)
                total += opt.step(value, epoch) * len(lab)
                count += len(lab)
                moving += n_active
                report.steps += 1
            if count == 0:
                break
            report.epoch_loss.append(total / count)
            if stream is not None:
                report.retain_loss.append(float(r_total) / r_steps)
            if mode == "sample":
                report.active.append(moving / count)
                if moving == 0:
                    break
    report.time_unlearn = time.perf_counter() - t
    return unlearned
