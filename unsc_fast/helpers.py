"""Small helpers every floor of the package shares: a model's device and progress bars."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

__all__ = ["model_device", "progress", "nonfinite_outputs"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def progress(data: Iterable, enabled: bool, desc: str) -> Iterator[Iterable]:
    """``data`` wrapped in a tqdm bar that is closed on exit (``data`` itself when disabled)."""
    if not enabled:
        yield data
        return
    from tqdm.auto import tqdm  # imported only when a bar is shown
    bar = tqdm(data, desc=desc, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


@torch.no_grad()
def nonfinite_outputs(model: nn.Module, x: torch.Tensor) -> int:
    """How many samples of the probe batch ``x`` give a NaN/Inf output (eval mode; the
    model's mode is restored). ``x``: a tensor, or a mapping of keyword inputs (a language
    model's ``input_ids`` and ``attention_mask``: its ``logits`` are checked)."""
    was = model.training
    model.eval()
    try:
        out = model(**x) if isinstance(x, Mapping) else model(x)
    finally:
        model.train(was)
    out = getattr(out, "logits", out)
    if isinstance(x, Mapping):
        x = next(v for v in x.values() if isinstance(v, torch.Tensor))
    out = out.reshape(len(x), -1) if out.dim() else out.reshape(1, 1)
    return int((~torch.isfinite(out)).any(-1).sum())
