"""Small helpers every floor of the package shares: a model's device, progress bars, the
argument checks the unlearning entry points have in common and the versions a job records."""
from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

__all__ = ["model_device", "progress", "nonfinite_outputs", "check_sgd_args", "check_weight",
           "cycle", "versions"]


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


def check_sgd_args(lr, epochs, **data) -> None:
    """The checks every unlearning loop shares: ``epochs`` an integer >= 0, ``lr`` a finite
    number > 0 (booleans are neither), and each of ``data`` (name -> batches, None skipped)
    re-iterable, since it is read once per epoch. One-line ``ValueError``/``TypeError``."""
    for name, d in data.items():
        if d is not None and iter(d) is d:
            raise TypeError(f"{name} data must be re-iterable (a DataLoader, a list of"
                            f" batches), not a one-shot {type(d).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr)
                                    and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")


def check_weight(name: str, value) -> None:
    """``value`` a finite number >= 0 (booleans refused), else a one-line ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def cycle(data: Iterable, what: str) -> Iterator:
    """The batches of re-iterable ``data`` again and again (a retain term reads one per step,
    for as many steps as the forget set takes); ``ValueError`` if ``data`` is empty."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"the {what} data is empty")


def versions(*packages: str) -> dict[str, str]:
    """The versions a job records: unsc_fast's, torch's and those of ``packages`` (module
    names, imported here)."""
    from . import __version__
    out = {"unsc_fast": str(__version__), "torch": str(torch.__version__)}
    out.update({name: str(importlib.import_module(name).__version__) for name in packages})
    return out
