"""Accuracy metrics of the evaluation protocol (Acc_r, Acc_f: mean per-class accuracy)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
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
