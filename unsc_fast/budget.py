"""Memory at LLM width: what each layer's statistic and basis step cost, and bases built a
group of layers at a time so that peak memory stays under a budget.

S is d x d per distinct layer input: at Llama-3-8B's widths (d = 4096 and 14336, 32 blocks)
that is 64 MiB and 784 MiB in float32, about 31 GiB for the whole model even with q/k/v and
gate/up sharing their statistic. :func:`bases_in_groups` never holds more than a budget of S
at once: it collects one group of layers per pass over D_r, turns the group's statistics into
bases and frees them before the next group.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import helpers, layers
from .bases import NullSpace
from .rules import Rule
from .stats import SecondMoments

__all__ = ["LayerMemory", "estimate", "bases_in_groups"]

# Bytes per d² of the basis step: eigh holds C, its eigenvectors and LAPACK's workspace in
# float64 (about 3 x 8); the fast method C in float64 and float32 iterates (about 2 x 8).
_BASIS_BYTES_PER_D2 = {"eigh": 24, "fast": 16}
# An embedding (embeddings=True): S is its int64 token counts (8 bytes a token); its basis
# step sorts them (values and indices, float64 eigenvalues: about 3 x 8 bytes a token).
_EMBEDDING_STATS_BYTES, _EMBEDDING_BASIS_BYTES = 8, 24


@dataclass(frozen=True)
class LayerMemory:
    """One layer's memory: its statistic S (groups x d x d) and its basis step's workspace."""

    name: str
    d: int
    groups: int
    stats_bytes: int
    basis_bytes: int


def estimate(model: nn.Module, names: Iterable[str] | str | None = None, *,
             dtype: torch.dtype = torch.float32, method: str = "eigh",
             embeddings: bool = False) -> list[LayerMemory]:
    """Per covered layer, the bytes of its statistic in ``dtype`` and of its basis step.

    An upper bound: layers that turn out to share an input (found on the first forward) store
    one statistic between them. Works on a model on the ``meta`` device (shapes only). With
    ``embeddings=True`` each ``nn.Embedding`` counts too: its statistic is a vector of vocab
    int64 counts (``d`` is the vocabulary size), never vocab x vocab.
    """
    if method not in _BASIS_BYTES_PER_D2:
        raise ValueError(f"unknown basis method {method!r}; choose one of"
                         f" {tuple(_BASIS_BYTES_PER_D2)}")
    size = torch.finfo(dtype).bits // 8
    out = []
    for name, m in layers.select_layers(model, names, embeddings=embeddings).items():
        d, g = layers.input_dim(m), layers.groups_of(m)
        if layers.kind_of(m, embeddings=True) in layers.DIAGONAL_KINDS:
            out.append(LayerMemory(name, d, 1, _EMBEDDING_STATS_BYTES * d,
                                   _EMBEDDING_BASIS_BYTES * d))
            continue
        out.append(LayerMemory(name, d, g, g * d * d * size,
                               _BASIS_BYTES_PER_D2[method] * d * d))
    return out


def bases_in_groups(model: nn.Module, data: Iterable, rule: Rule | str = "energy:0.99", *,
                    budget_mb: float, names: Iterable[str] | str | None = None,
                    stats_dtype: torch.dtype = torch.float32, method: str = "eigh",
                    basis_dtype: torch.dtype | None = None, embeddings: bool = False,
                    progress: bool = False, **collect_kwargs) -> NullSpace:
    """The bases of every covered layer, built a group of layers at a time.

    Groups follow the model's order, each holding statistics of at most ``budget_mb`` MiB (a
    layer larger than the budget forms a group of its own, with a warning). ``data`` must be
    re-iterable: it is read once per group. ``collect_kwargs`` go to
    :meth:`SecondMoments.collect` (``max_tokens``, ``device``, ...). The result equals
    ``NullSpace.from_moments`` on all layers at once, except that layers sharing an input are
    only detected within a group. ``basis_dtype``: as ``dtype`` of
    :meth:`NullSpace.from_moments` (default: each layer's weight dtype); ``embeddings``: as
    in :class:`SecondMoments` (a tied embedding and its head go into the same group).
    """
    if not budget_mb > 0:
        raise ValueError(f"budget_mb must be a positive number of MiB, got {budget_mb!r}")
    if iter(data) is data:
        raise TypeError("data must be re-iterable (a DataLoader or a list of batches): it is"
                        " read once per group of layers")
    plan = estimate(model, names, dtype=stats_dtype, method=method, embeddings=embeddings)
    groups = _groups(plan, budget_mb * 2**20, layers.tie_groups(model))
    found: dict = {}
    with helpers.progress(groups, progress and len(groups) > 1, "layer groups") as todo:
        for group in todo:
            moments = SecondMoments(model, layers=group, dtype=stats_dtype,
                                    embeddings=embeddings)
            moments.collect(data, progress=False, **collect_kwargs)
            found.update(NullSpace.from_moments(moments, rule, dtype=basis_dtype,
                                                method=method))
            del moments
    return NullSpace(found)


def _groups(plan: Sequence[LayerMemory], budget: float,
            ties: dict[str, frozenset[str]] | None = None) -> list[list[str]]:
    ties = ties or {}
    groups: list[list[str]] = []
    used = budget + 1.0
    placed: set[str] = set()
    for lm in plan:
        if lm.name in placed:
            continue
        if lm.name in ties:     # modules sharing a weight are collected in one group
            mates = [m for m in plan if m.name in ties[lm.name] and m.name not in placed]
            size = sum(m.stats_bytes for m in mates)
            if used + size > budget:
                groups.append([])
                used = 0.0
            groups[-1].extend(m.name for m in mates)
            placed.update(m.name for m in mates)
            used += size
            continue
        if lm.stats_bytes > budget:
            warnings.warn(f"layer {lm.name!r} alone needs {lm.stats_bytes / 2**20:.0f} MiB of"
                          f" statistics, over the budget of {budget / 2**20:.0f} MiB",
                          stacklevel=3)
        if used + lm.stats_bytes > budget:
            groups.append([])
            used = 0.0
        groups[-1].append(lm.name)
        used += lm.stats_bytes
    return groups
