"""The bases of one layer: core or null basis per conv group, from its statistics.

An embedding's statistic is diagonal (token counts), so its eigenvectors are the token axes
and a basis is a set of token indices (:class:`LayerBasis` with ``kind="embedding"``): the
projection of its gradient keeps or zeroes whole rows, and nothing vocab x vocab is built.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import reference as ref
from .layer_moments import LayerMoments
from .layers import DIAGONAL_KINDS
from .spectral import fast_core

if TYPE_CHECKING:
    from .rules import Rule

#: A second moment's most negative eigenvalue may be at most this share of its largest
#: (round-off); beyond it the statistics are refused as not positive semi-definite.
PSD_TOL = 1e-4

# -- bases -----------------------------------------------------------------------------------


@dataclass
class LayerBasis:
    """The bases of one layer: one (d, m_g) matrix per conv group (one for a Linear).

    ``d`` counts the bias feature when ``include_bias``; ``ranks`` are the core ranks r_g.

    An embedding (``kind="embedding"``, :attr:`diagonal`; d = vocabulary size) has one basis,
    a sorted int64 vector of m token ids: the core tokens when ``subtract`` (their gradient
    rows are zeroed), else the null tokens (only their rows are kept). It stands for the
    one-hot columns e_t of those tokens, so it is orthonormal by construction; :meth:`to`
    never changes its dtype.
    """

    kind: str
    d: int
    bases: list[Tensor]
    subtract: list[bool]
    ranks: list[int]
    include_bias: bool = False

    @property
    def groups(self) -> int:
        """Number of bases: the conv groups (1 for a Linear)."""
        return len(self.bases)

    @property
    def diagonal(self) -> bool:
        """True for an embedding, whose basis is a set of token indices."""
        return self.kind in DIAGONAL_KINDS

    @property
    def dtype(self) -> torch.dtype:
        """The bases' dtype (that of group 0; all groups share it)."""
        return self.bases[0].dtype

    @property
    def device(self) -> torch.device:
        """The bases' device (that of group 0; all groups share it)."""
        return self.bases[0].device

    def to(self, device=None, dtype=None) -> "LayerBasis":
        """A copy with every group's basis moved to ``device`` and/or cast to ``dtype`` (an
        embedding's token indices are only moved)."""
        if self.diagonal:
            dtype = None
        return replace(self, bases=[b.to(device=device, dtype=dtype) for b in self.bases])

    def core(self, g: int = 0) -> Tensor:
        """The core basis U_r of group g (computed from U_0 when only that is stored); for an
        embedding, the sorted ids of its core tokens."""
        B = self.bases[g]
        if self.subtract[g]:
            return B
        if self.diagonal:
            keep = torch.ones(self.d, dtype=torch.bool, device=B.device)
            keep[B] = False
            return keep.nonzero().view(-1)
        evals, evecs = torch.linalg.eigh(torch.eye(self.d, dtype=torch.float64, device=B.device)
                                         - B.double() @ B.double().mT)
        return evecs[:, evals > 0.5].flip(-1).to(B.dtype)


def _basis_from(evals: Tensor, evecs: Tensor, r: int, store: str) -> tuple[Tensor, bool]:
    d = evals.numel()
    subtract = {"core": True, "null": False}.get(store, r <= d - r)
    return (evecs[:, :r] if subtract else evecs[:, r:]).contiguous(), subtract


def _fast_basis(C: Tensor, rule: Rule, store: str, dtype: torch.dtype
                ) -> tuple[Tensor, bool, int]:
    """U_r from :func:`unsc_fast.spectral.fast_core`, or its complement U_0 when smaller."""
    core = fast_core(C, rule)
    d, r = C.shape[-1], core.rank
    if {"core": True, "null": False}.get(store, r <= d - r):
        if torch.finfo(dtype).eps < torch.finfo(core.basis.dtype).eps:
            # stored more precisely than it was computed (float64): orthonormal to float64
            # round-off, as the validation of a float64 basis expects
            return torch.linalg.qr(core.basis.double())[0].contiguous(), True, r
        return core.basis.contiguous(), True, r
    Q, _ = torch.linalg.qr(core.basis.double(), mode="complete")
    return Q[:, r:].contiguous(), False, r


METHODS = ("eigh", "fast")


def layer_basis(name: str, lm: LayerMoments, rule: Rule, *, include_bias: bool = False,
                store: str = "auto", dtype: torch.dtype = torch.float32,
                method: str = "eigh") -> LayerBasis:
    """The bases of one layer's statistics: C = S/n per group, then the rank rule.

    ``method="eigh"`` decomposes C in float64 (the reference); ``"fast"`` finds the core by
    float32 block Krylov (energy rule) or subspace iteration with a float64 energy check
    (:mod:`unsc_fast.spectral`), for LLM-width layers, and keeps at least the exact rule's
    energy.
    """
    if method not in METHODS:
        raise ValueError(f"unknown basis method {method!r}; choose one of {METHODS}")
    if lm.diagonal:
        return diagonal_basis(name, lm, rule, store=store)
    try:
        # the fast method works in float32: a float64 copy of C would double its memory
        C = lm.covariance(include_bias,
                          dtype=torch.float32 if method == "fast" else torch.float64)
    except ValueError as exc:
        raise ValueError(f"layer {name!r}: {exc}") from None
    bases, subs, ranks = [], [], []
    for Cg in C:
        if method == "fast":
            B, sub, r = _fast_basis(Cg, rule, store, dtype)
            bases.append(B.to(dtype))
            subs.append(sub)
            ranks.append(r)
            continue
        try:
            evals, evecs = ref.eigh_desc(Cg)
        except torch.linalg.LinAlgError as exc:
            raise torch.linalg.LinAlgError(f"layer {name!r}: {exc}") from None
        if evals.numel() and float(evals[-1]) < -PSD_TOL * max(float(evals[0]), 0.0):
            raise ValueError(f"layer {name!r}: the second moment is not positive"
                             f" semi-definite (eigenvalue {float(evals[-1]):.3g} against a"
                             f" largest {float(evals[0]):.3g}); corrupt statistics?")
        r = rule.rank(evals)
        B, sub = _basis_from(evals, evecs, r, store)
        bases.append(B.to(dtype))
        subs.append(sub)
        ranks.append(r)
    return LayerBasis(lm.kind, C.shape[-1], bases, subs, ranks, include_bias)


def diagonal_basis(name: str, lm: LayerMoments, rule: Rule, *, store: str = "auto"
                   ) -> LayerBasis:
    """The basis of an embedding's diagonal statistic: its eigenvalues are the token counts
    / n, its eigenvectors the token axes, so the rule picks the r most frequent tokens (ties
    in ascending id order) as the core. Both basis methods give this exact result (a sort)."""
    if lm.n == 0:
        raise ValueError(f"layer {name!r}: no inputs were accumulated (is D_r empty?)")
    counts = lm.S[0]
    order = torch.sort(counts, descending=True, stable=True).indices
    evals = counts[order].double() / lm.n
    r = rule.rank(evals)
    d = counts.numel()
    sub = {"core": True, "null": False}.get(store, r <= d - r)
    ids = order[:r] if sub else order[r:]
    return LayerBasis(lm.kind, d, [torch.sort(ids).values.contiguous()], [sub], [r], False)
