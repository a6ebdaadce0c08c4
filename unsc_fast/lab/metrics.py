"""Metrics of the evaluation protocol.

Accuracy: Acc_r / Acc_f on the test split (mean per-class accuracy over the remaining /
forgotten classes), plain accuracy on the training parts D_r and D_f.

Membership inference (privacy):

- :func:`svc_mia` / MIA-efficacy as in SalUn (Fan et al., ICLR 2024): an RBF SVC
  (``C=3, gamma="auto"``) is trained to tell members (samples of D_r) from non-members (test
  samples outside the forget part) on a per-sample feature of the model's output (default
  ``"confidence"``: the softmax probability of the true label; also ``"entropy"`` or
  ``"both"``). MIA-efficacy is the share of D_f the SVC calls non-member: high means D_f
  looks unseen (retrain: high; the original model: low).
- :func:`loss_mia`: a logistic regression on the per-sample cross-entropy loss (log-scaled),
  members = D_f, non-members = test samples of the same population (the test samples of the
  forgotten classes / sub-class; the whole test split for random forgetting); the score is
  its 5-fold cross-validated attack accuracy on a balanced set. Ideal near 0.5 (D_f is as
  unseen as test data); well above 0.5 means D_f is still recognisably trained on.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .train import predict


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int
                       ) -> torch.Tensor:
    """Accuracy of each class (NaN for a class with no sample)."""
    pred = logits.argmax(1)
    acc = torch.full((num_classes,), float("nan"))
    for c in range(num_classes):
        m = labels == c
        if m.any():
            acc[c] = (pred[m] == c).float().mean()
    return acc


def class_accuracies(model: nn.Module, data: Iterable, forget_classes: Sequence[int],
                     num_classes: int) -> dict[str, float]:
    """``acc_r`` and ``acc_f``: mean per-class accuracy over remaining / forgotten classes."""
    logits, labels = predict(model, data)
    acc = per_class_accuracy(logits, labels, num_classes)
    forget = torch.zeros(num_classes, dtype=torch.bool)
    forget[list(forget_classes)] = True
    return {"acc_r": float(acc[~forget].nanmean()), "acc_f": float(acc[forget].nanmean()),
            "per_class": acc.tolist()}


def accuracy(model: nn.Module, data: Iterable) -> float:
    """Plain accuracy over all samples of ``data``."""
    logits, labels = predict(model, data)
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


# -- membership inference ----------------------------------------------------------------------

FEATURES = ("confidence", "entropy", "both")


def mia_features(logits: torch.Tensor, labels: torch.Tensor, feature: str = "confidence"
                 ) -> np.ndarray:
    """Per-sample attack features (n, f): true-label confidence, output entropy, or both."""
    if feature not in FEATURES:
        raise ValueError(f"unknown MIA feature {feature!r}; choose one of {list(FEATURES)}")
    p = F.softmax(logits.double(), 1)
    conf = p.gather(1, labels.view(-1, 1).long()).squeeze(1)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(1)
    cols = {"confidence": [conf], "entropy": [ent], "both": [conf, ent]}[feature]
    return torch.stack(cols, 1).numpy()


def _subsample(a: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return a if len(a) <= n else a[rng.choice(len(a), n, replace=False)]


def svc_mia(member: np.ndarray, nonmember: np.ndarray, target: np.ndarray, *, seed: int = 0,
            max_per_side: int = 1000) -> float:
    """Share of ``target`` rows an RBF SVC, trained on members vs non-members, calls non-member.

    Both training sides are subsampled to the same size (at most ``max_per_side``).
    """
    from sklearn.svm import SVC
    member, nonmember = np.atleast_2d(member.T).T, np.atleast_2d(nonmember.T).T
    if len(member) == 0 or len(nonmember) == 0 or len(target) == 0:
        raise ValueError("svc_mia needs members, non-members and targets")
    rng = np.random.default_rng(seed)
    n = min(len(member), len(nonmember), max_per_side)
    Xin, Xout = _subsample(member, n, rng), _subsample(nonmember, n, rng)
    X = np.concatenate([Xin, Xout])
    y = np.concatenate([np.ones(len(Xin)), np.zeros(len(Xout))])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(X, y)
    return float(1.0 - clf.predict(np.atleast_2d(target.T).T).mean())


def loss_mia(member_losses: np.ndarray, nonmember_losses: np.ndarray, *, seed: int = 0,
             folds: int = 5) -> float:
    """Cross-validated accuracy of a logistic regression telling members from non-members
    by their loss (balanced classes; 0.5 = chance)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(seed)
    n = min(len(member_losses), len(nonmember_losses))
    if n < 2:
        raise ValueError(f"loss_mia needs at least 2 members and 2 non-members, got"
                         f" {len(member_losses)} and {len(nonmember_losses)}")
    a = _subsample(np.asarray(member_losses, np.float64), n, rng)
    b = _subsample(np.asarray(nonmember_losses, np.float64), n, rng)
    X = np.log(np.concatenate([a, b]) + 1e-12).reshape(-1, 1)
    y = np.concatenate([np.ones(n), np.zeros(n)])
    cv = StratifiedKFold(min(folds, n), shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression())
    return float(cross_val_score(clf, X, y, cv=cv, scoring="accuracy").mean())


def sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return F.cross_entropy(logits.double(), labels.long(), reduction="none").numpy()


# -- the whole evaluation of one model on one scenario -------------------------------------------

def _pct(x) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else 100.0 * float(x)


def _mean_per_class(logits, labels, num_classes, classes=None) -> float | None:
    if len(labels) == 0:
        return None
    acc = per_class_accuracy(logits, labels, num_classes)
    if classes is not None:
        acc = acc[list(classes)]
    v = float(acc.nanmean())
    return None if np.isnan(v) else v


def evaluate(model: nn.Module, split, test: Iterable, *, batch_size: int = 512, seed: int = 0,
             mia_feature: str = "confidence", mia: bool = True) -> dict:
    """Every metric of the protocol for ``model`` on a :class:`~unsc_fast.lab.scenarios.ScenarioSplit`.

    ``test`` is the test Dataset. Returns a dict (accuracies and MIA in percent)::

        acc_r, acc_f        test: mean per-class accuracy, remaining / forget part (acc_f None
                            for random forgetting)
        acc_test            test: plain accuracy over every sample
        acc_dr, acc_df      train: plain accuracy on D_r, D_f
        mia_efficacy        SalUn's SVC MIA: % of D_f called non-member (None if undefined)
        mia_loss_acc        loss-based logistic-regression attack accuracy, % (ideal ~50)
        per_class           test accuracy of every class, %
        time_eval           seconds
        nonfinite_outputs   only present (True) when the model output NaN/Inf somewhere
    """
    from .data import loader
    t = time.perf_counter()
    lr_, yr = predict(model, loader(split.retain, batch_size))
    lf, yf = predict(model, loader(split.forget, batch_size))
    lt, yt = predict(model, loader(test, batch_size))
    finite = all(bool(torch.isfinite(v).all()) for v in (lr_, lf, lt))
    if not finite:   # a diverged model: score it as it predicts, keep the attacks defined
        lr_, lf, lt = (torch.nan_to_num(v, nan=0.0, posinf=1e4, neginf=-1e4)
                       for v in (lr_, lf, lt))
    k = split.num_classes
    if split.forget_classes is not None:
        rest = [c for c in range(k) if c not in split.forget_classes]
        acc_r = _mean_per_class(lt, yt, k, rest)
        acc_f = _mean_per_class(lt, yt, k, split.forget_classes)
        in_forget = torch.isin(yt, torch.as_tensor(split.forget_classes))
    elif split.test_forget is not None:
        in_forget = split.test_forget
        acc_r = _mean_per_class(lt[~in_forget], yt[~in_forget], k)
        acc_f = (float((lt[in_forget].argmax(1) == yt[in_forget]).float().mean())
                 if in_forget.any() else None)
    else:
        in_forget = None
        acc_r, acc_f = _mean_per_class(lt, yt, k), None
    out = {
        "acc_r": _pct(acc_r), "acc_f": _pct(acc_f),
        "acc_test": _pct(float((lt.argmax(1) == yt).float().mean())),
        "acc_dr": _pct(float((lr_.argmax(1) == yr).float().mean())),
        "acc_df": _pct(float((lf.argmax(1) == yf).float().mean())),
        "mia_efficacy": None, "mia_loss_acc": None,
        "per_class": [_pct(v) for v in per_class_accuracy(lt, yt, k).tolist()],
    }
    if mia:
        test_out = ~in_forget if in_forget is not None else torch.ones(len(yt), dtype=torch.bool)
        test_same = in_forget if in_forget is not None else torch.ones(len(yt), dtype=torch.bool)
        if test_out.any():
            out["mia_efficacy"] = _pct(svc_mia(
                mia_features(lr_, yr, mia_feature), mia_features(lt[test_out], yt[test_out],
                                                                 mia_feature),
                mia_features(lf, yf, mia_feature), seed=seed))
        if int(test_same.sum()) >= 2 and len(yf) >= 2:
            out["mia_loss_acc"] = _pct(loss_mia(sample_losses(lf, yf),
                                                sample_losses(lt[test_same], yt[test_same]),
                                                seed=seed))
    out["time_eval"] = time.perf_counter() - t
    if not finite:
        out["nonfinite_outputs"] = True
    return out
