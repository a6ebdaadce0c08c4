"""The reference backend: the functions of :mod:`unsc_fast.reference` behind the op contract."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .. import reference as ref
from ..dispatch import register


@register("accumulate", "reference")
def accumulate(S: Tensor, X: Tensor) -> Tensor:
    return ref.accumulate_(S, X)


@register("accumulate_conv", "reference")
def accumulate_conv(S: Tensor, x: Tensor, geom: ref.ConvGeometry) -> Tensor:
    return ref.accumulate_conv_(S, x, geom)


@register("project", "reference")
def project(grads: Sequence[Tensor], bases: Sequence[Tensor], subtract: Sequence[bool]) -> None:
    for G, B, sub in zip(grads, bases, subtract):
        G.copy_(ref.project(G, B, sub))
