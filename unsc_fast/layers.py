"""Which layers UNSC covers, and how each one's weight meets its inputs.

A covered layer computes ``y = W x`` on input vectors x of length d (per conv group), so its
statistic is over x and its weight gradient's *input side* is projected:

============= ========================== ======================= ==========================
kind          module                     input vector x          weight layout
============= ========================== ======================= ==========================
``linear``    ``nn.Linear``              the last dim (..., d)   (out, d)
``conv1d``    transformers' ``Conv1D``   the last dim (..., d)   (d, out): projected as Wᵀ
``conv2d``    ``nn.Conv2d``              a receptive-field patch (out, C/groups, kh, kw)
``embedding`` ``nn.Embedding`` (opt-in)  one-hot e_t of token t  (d = vocab, dim): row t
============= ========================== ======================= ==========================

GPT-2's attention and MLP layers are ``Conv1D``: recognised by duck typing (class name and
``nf``/``nx``-shaped weight), so transformers is never imported here. Embeddings are covered
only on request (``embeddings=True``): their input is the one-hot vector of a token id, so S
is diagonal (the token counts) and a basis is a set of token rows. A weight shared between
modules (an output head tied to the embedding) is covered only together with every other
module that uses it (with ``embeddings=True``, a tied embedding and its head come as a pair,
and each use's basis constrains the one gradient); otherwise it is left out of the default
selection and of patterns, so it stays frozen: one use's basis does not protect the other
use. Naming such a weight's module explicitly warns.
"""
from __future__ import annotations

import collections
import fnmatch
import math
import warnings
from collections.abc import Iterable

from torch import nn

__all__ = ["KINDS", "kind_of", "input_dim", "groups_of", "select_layers", "tied_modules",
           "tie_groups", "unprotected_parameters"]

KINDS = ("linear", "conv1d", "conv2d", "embedding")
#: kinds whose statistic is diagonal (a vector of counts) and whose basis is a set of indices
DIAGONAL_KINDS = ("embedding",)
SUPPORTED_NAMES = "nn.Linear, nn.Conv2d, transformers Conv1D; nn.Embedding with embeddings=True"


def _is_hf_conv1d(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and isinstance(getattr(m, "nf", None), int)
            and isinstance(w, nn.Parameter) and w.dim() == 2 and w.shape[1] == m.nf)


def kind_of(m: nn.Module, embeddings: bool = False) -> str | None:
    """The layer kind of a module (see the table above), or None if it is not covered
    (``nn.Embedding`` is covered only with ``embeddings=True``)."""
    if isinstance(m, nn.Embedding):
        return "embedding" if embeddings else None
    if isinstance(m, nn.Conv2d):
        return "conv2d"
    if isinstance(m, nn.Linear):
        return "linear"
    if _is_hf_conv1d(m):
        return "conv1d"
    return None


def input_dim(m: nn.Module) -> int:
    """d: the length of one input vector (per group) of a covered layer."""
    kind = kind_of(m, embeddings=True)
    if kind == "embedding":
        return m.num_embeddings
    if kind == "conv2d":
        return m.in_channels // m.groups * math.prod(m.kernel_size)
    if kind == "linear":
        return m.in_features
    if kind == "conv1d":
        return m.weight.shape[0]
    raise TypeError(f"{type(m).__name__} is not a covered layer ({SUPPORTED_NAMES})")


def groups_of(m: nn.Module) -> int:
    """Conv groups of a covered layer (1 unless grouped Conv2d)."""
    return m.groups if isinstance(m, nn.Conv2d) else 1


def tie_groups(model: nn.Module) -> dict[str, frozenset[str]]:
    """For every module whose weight is also a parameter of another module (weight tying),
    the names of all modules that hold that weight (itself included)."""
    owners: dict[int, list[str]] = collections.defaultdict(list)
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter):
            owners[id(w)].append(name)
    return {n: frozenset(names) for names in owners.values() if len(names) > 1 for n in names}


def tied_modules(model: nn.Module) -> set[str]:
    """Names of modules whose weight is also a parameter of another module (weight tying)."""
    return set(tie_groups(model))


def select_layers(model: nn.Module, names: Iterable[str] | str | None = None, *,
                  embeddings: bool = False) -> dict[str, nn.Module]:
    """The covered layers of ``model`` by module name.

    ``names``: None for every covered layer; else module names or ``fnmatch`` patterns
    (``"model.layers.*.mlp.*"``), each of which must match at least one module. A pattern
    takes the covered layers it matches; a name must be a covered layer. ``embeddings``: also
    cover ``nn.Embedding`` (see the module doc).

    Tied weights: a module whose weight other modules share is taken (by default or by a
    pattern) only when every module sharing it is a covered layer that is taken too; each
    use then has its own basis and :func:`unsc_fast.project_` applies all of them to the one
    gradient. Otherwise it is left out (the weight stays frozen); naming it explicitly warns
    (never silently: its basis protects one use of the weight only).
    """
    modules = dict(model.named_modules())
    groups = tie_groups(model)

    def kind(n: str) -> str | None:
        return kind_of(modules[n], embeddings)

    if names is None:
        found = {n: m for n, m in modules.items() if kind(n)}
        found = {n: m for n, m in found.items() if groups.get(n, frozenset()) <= found.keys()}
        if not found:
            raise ValueError(f"{type(model).__name__} has no supported layer ({SUPPORTED_NAMES})")
        return found
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("the list of layers is empty")
    chosen: dict[str, nn.Module] = {}
    by_pattern: dict[str, list[str]] = {}
    for pat in names:
        hits = [pat] if pat in modules else [n for n in modules if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise KeyError(f"no module named or matching {pat!r} in {type(model).__name__}")
        if pat not in modules:  # a pattern takes the covered layers it matches
            hits = [n for n in hits if kind(n)]
            if not hits:
                raise TypeError(f"pattern {pat!r} matches no supported layer ({SUPPORTED_NAMES})")
            by_pattern[pat] = hits
        for n in hits:
            if not kind(n):
                hint = " (embeddings=True covers nn.Embedding)" \
                    if isinstance(modules[n], nn.Embedding) else ""
                raise TypeError(f"module {n!r} is a {type(modules[n]).__name__}, not of a supported"
                                f" type ({SUPPORTED_NAMES}){hint}")
            chosen[n] = modules[n]
    explicit = {n for n in names if n in modules}
    for n in list(chosen):
        if groups.get(n, frozenset()) <= chosen.keys():
            continue                                  # untied, or every use is covered
        if n in explicit:
            warnings.warn(f"layer {n!r} shares its weight with another module (tied"
                          " weights): its basis protects only this use of the weight;"
                          " leave it out to keep the weight frozen", stacklevel=3)
        else:                                         # a pattern never takes half a tie
            del chosen[n]
    for pat, hits in by_pattern.items():
        if not any(n in chosen for n in hits):
            raise TypeError(f"pattern {pat!r} matches no supported layer ({SUPPORTED_NAMES})"
                            " but tied weights whose other uses are not covered")
    return chosen


def unprotected_parameters(model: nn.Module, covered: Iterable[str]) -> list[str]:
    """Trainable weights (parameters of 2 or more dims, by name) of modules outside ``covered``,
    embeddings (unless covered) and tied heads included: no basis protects them."""
    covered = {f"{n}.weight" for n in covered}
    return [n for n, p in model.named_parameters()
            if p.requires_grad and p.dim() >= 2 and n not in covered]
