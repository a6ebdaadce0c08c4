"""Ordinary supervised training: the original model θ_o and the retrain-from-scratch baseline."""
from __future__ import annotations

import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .. import helpers


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
    """Train ``model`` in place with cross-entropy (Adam by default); returns it in eval mode.

    A model with both dropout and BatchNorm (e.g. the AlexNet-style CNN) gets its BatchNorm
    statistics recomputed over ``data`` at the end, in inference mode (see
    :func:`recalibrate_batchnorm`); models without dropout are left exactly as trained.
    """
    device = helpers.model_device(model)
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay, momentum)
    model.train()
    with helpers.progress(range(epochs), progress, desc) as bar:
        for _ in bar:
            for x, y in data:
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    if epochs > 0 and _has_dropout_and_bn(model):
        recalibrate_batchnorm(model, data, progress=progress)
    return model.eval()


def train_from_scratch(model_name: str, input_shape: tuple[int, ...], num_classes: int,
                       width: float, data, settings: dict, seed: int, *,
                       device: torch.device | str | None = None, progress: bool = False,
                       desc: str = "training") -> tuple[nn.Module, float]:
    """A fresh ``model_name`` initialised from ``seed`` and trained on the Dataset ``data``
    (shuffled by ``seed``) with ``settings`` (epochs, lr, batch_size, and optionally
    optimizer, weight_decay, momentum). Returns (model in eval mode, seconds).

    The original model, the retrained baseline and its reseeded twin are all made here, so
    that they differ in their data and seed only."""
    from .data import loader
    from .models import build_model
    torch.manual_seed(seed)
    model = build_model(model_name, input_shape, num_classes, width)
    if device is not None:
        model.to(device)
    t = time.perf_counter()
    train(model, loader(data, settings["batch_size"], True, seed), epochs=settings["epochs"],
          lr=settings["lr"], weight_decay=settings.get("weight_decay", 0.0),
          optimizer=settings.get("optimizer", "adam"), momentum=settings.get("momentum", 0.9),
          progress=progress, desc=desc)
    return model, time.perf_counter() - t


_BN = nn.modules.batchnorm._BatchNorm


def _has_dropout_and_bn(model: nn.Module) -> bool:
    mods = list(model.modules())
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in mods) and \
        any(isinstance(m, _BN) and m.track_running_stats for m in mods)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Iterable, progress: bool = False
                          ) -> nn.Module:
    """Recompute BatchNorm running statistics over ``data`` with dropout off.

    During training a BatchNorm that follows a dropout sees inputs with a larger variance
    than at inference ("variance shift"); its running statistics then misfit eval mode (on
    MNIST 5k the AlexNet-style CNN drops from about 97% to about 80% test accuracy). One
    forward pass in eval mode, BatchNorm layers accumulating a plain average, fixes that.
    """
    device = helpers.model_device(model)
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None          # cumulative average over all batches
        m.train()
    # The bar counts batches instead of wrapping ``data``: tqdm (4.70) advances a DataLoader's
    # generator when it wraps it, so a wrapped seeded loader would yield another order.
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(data) if hasattr(data, "__len__") else None,
                   desc="batchnorm statistics", leave=False, dynamic_ncols=True)
    try:
        for batch in data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, data: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``model`` (eval mode) over ``data``, on the CPU."""
    device = helpers.model_device(model)
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
