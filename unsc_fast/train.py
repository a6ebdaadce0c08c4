"""Ordinary supervised training: the original model θ_o and the retrain-from-scratch baseline."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .stats import _model_device, _progress


def make_optimizer(params, name: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """``"adam"`` or ``"sgd"`` (with ``momentum``) over ``params``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'sgd'")


def train(model: nn.Module, data: Iterable, *, epochs: int = 5, lr: float = 1e-3,
          weight_decay: float = 0.0, progress: bool = True, optimizer: str = "adam",
          momentum: float = 0.9, desc: str = "training") -> nn.Module:
    """Train ``model`` in place with cross-entropy (Adam by default); returns it in eval mode."""
    device = _model_device(model)
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay, momentum)
    model.train()
    with _progress(range(epochs), progress, desc) as bar:
        for _ in bar:
            for x, y in data:
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, data: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``model`` (eval mode) over ``data``, on the CPU."""
    device = _model_device(model)
    was = model.training
    model.eval()
    logits, labels = [], []
    for x, y in data:
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y.cpu())
    model.train(was)
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)
