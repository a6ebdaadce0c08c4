"""The ``cuda`` backend: the CUDA ops of ``unsc_fast._C`` (kernels in csrc/cuda/).

Importing this module loads the extension through :mod:`unsc_fast.kernels.cpp` (which also
registers the fake implementations) and raises ImportError when the extension was built
without CUDA kernels (a CPU torch, ``UNSC_FAST_CUDA=0``, or no CUDA toolkit at build time), so
:mod:`unsc_fast.dispatch` records the backend as unavailable with that reason.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..dispatch import register
from ..reference import ConvGeometry
from . import cpp as _cpp

__all__ = ["accumulate", "accumulate_conv", "project"]

if not _cpp.WITH_CUDA or not torch._C._dispatch_has_kernel_for_dispatch_key(
        "unsc_fast::accumulate_", "CUDA"):
    raise ImportError(
        "unsc_fast._C has no CUDA kernels: it was built with a CPU-only torch, with"
        " UNSC_FAST_CUDA=0 or without a CUDA toolkit; rebuild on a CUDA machine with"
        " `pip install -e . --no-build-isolation`")

_ops = torch.ops.unsc_fast


def _conv_supported(S: Tensor, x: Tensor, geom: ConvGeometry) -> bool:
    """Symmetric zero padding only; the reference handles the other geometries."""
    return geom.symmetric_padding is not None


@register("accumulate", "cuda", devices=("cuda",))
def accumulate(S: Tensor, X: Tensor) -> Tensor:
    _ops.accumulate_(S, X)
    return S


@register("accumulate_conv", "cuda", devices=("cuda",), supports=_conv_supported)
def accumulate_conv(S: Tensor, x: Tensor, geom: ConvGeometry) -> Tensor:
    pad = geom.symmetric_padding
    if pad is None:
        raise ValueError(f"the cuda backend needs symmetric zero padding, got pad={geom.pad}"
                         f" padding_mode={geom.padding_mode!r}")
    _ops.accumulate_conv_(S, x, list(geom.kernel_size), list(geom.stride), list(pad),
                          list(geom.dilation), int(geom.groups))
    return S


@register("project", "cuda", devices=("cuda",))
def project(grads: Sequence[Tensor], bases: Sequence[Tensor], subtract: Sequence[bool]) -> None:
    _ops.project_(list(grads), list(bases), [bool(s) for s in subtract])
