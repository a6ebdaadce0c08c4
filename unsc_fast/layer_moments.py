"""One layer's second moment of its inputs, and the set of them that the collective steps see.

Kept apart from :mod:`unsc_fast.stats` (which collects them) so that the basis and
distributed modules can name these types without importing the collector.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .geometry import ConvGeometry
from .reference import symmetric

__all__ = ["LayerMoments", "MomentSet"]


@dataclass
class LayerMoments:
    """Second moment of one layer's inputs: S (groups, d, d), upper triangle valid.

    ``colsum`` (groups, d) is kept when a constant-1 bias feature is requested: the augmented
    moment ``[[S, s], [sᵀ, n]]`` needs no copy of the inputs.

    An embedding (``kind == "embedding"``, :attr:`diagonal`) sees one-hot inputs e_t, so its
    S = Σ e_t e_tᵀ is diagonal: S is then its diagonal only, a (1, vocab) int64 vector of
    token counts (exact at any corpus size; a float32 count stops growing at 2^24), and
    ``n`` equals the sum of the counts.
    """

    kind: str
    S: Tensor
    n: int = 0
    colsum: Tensor | None = None
    geometry: ConvGeometry | None = None
    #: largest |input| seen (a 0-d float64 tensor; None for loaded statistics): the
    #: underflow check of :meth:`SecondMoments.check_finite` compares it with ``TINY``
    peak: Tensor | None = None

    @property
    def groups(self) -> int:
        """Conv groups (1 for a Linear): one S per group."""
        return self.S.shape[0]

    @property
    def dim(self) -> int:
        """d, the length of one input (patch) vector per group (the vocabulary size for an
        embedding)."""
        return self.S.shape[-1]

    @property
    def diagonal(self) -> bool:
        """True when S is stored as its diagonal (an embedding's token counts)."""
        return self.kind == "embedding"

    def diag(self) -> Tensor:
        """The diagonal of S, (groups, d), without building anything d x d."""
        return self.S if self.diagonal else torch.diagonal(self.S, dim1=-2, dim2=-1)

    def covariance(self, include_bias: bool = False, dtype: torch.dtype = torch.float64
                   ) -> Tensor:
        """``C = S / n`` as full symmetric (groups, D, D) matrices, D = d (+1 with bias).

        Not for an embedding (vocab x vocab): its covariance is ``diag() / n``."""
        if self.diagonal:
            raise ValueError("an embedding's second moment is diagonal: use diag() / n, never"
                             " a dense vocab x vocab matrix")
        if self.n == 0:
            raise ValueError("no inputs were accumulated (is D_r empty?)")
        C = symmetric(self.S.to(dtype))
        if include_bias:
            if self.colsum is None:
                raise ValueError("bias statistics were not collected (include_bias=False)")
            s = self.colsum.to(dtype).unsqueeze(-1)
            n = torch.full((self.groups, 1, 1), float(self.n), dtype=dtype, device=C.device)
            C = torch.cat([torch.cat([C, s], -1), torch.cat([s.mT, n], -1)], -2)
        return C / self.n


class MomentSet(Protocol):
    """What :mod:`unsc_fast.distributed` needs of a :class:`unsc_fast.SecondMoments`."""

    moments: dict[str, LayerMoments]
