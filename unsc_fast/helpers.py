"""Small helpers every floor of the package shares: a model's device and progress bars."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

__all__ = ["model_device", "progress"]


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
