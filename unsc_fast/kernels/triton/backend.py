"""The Triton backend (dispatch imports this module): the three ops of :mod:`unsc_fast.ops` as Triton kernels, one module each.

* :mod:`.accumulate`: ``S += XᵀX``, a symmetric rank-k update over the upper-triangular tiles
  of S, rows split across programs with atomics (``torch.ops.unsc_fast_triton.accumulate_``).
* :mod:`.accumulate_conv`: the same over conv patches gathered from x by pointer arithmetic
  (implicit im2col, any memory format; ``torch.ops.unsc_fast_triton.accumulate_conv_``). Both
  are :func:`torch.library.triton_op` ops, so ``torch.compile`` sees the kernels.
* :mod:`.project_grads`: one persistent launch per gradient dtype over every layer's row
  tiles, from a host-built table of pointers/strides/shapes
  (``torch.ops.unsc_fast_triton.project_grads_``, a custom op opaque to ``torch.compile``).
* :mod:`.common`: what they share (switches, tilings, precision modes, jit helpers).

Devices: CUDA; also CPU tensors when ``TRITON_INTERPRET=1`` (Triton's interpreter, for tests).
Declines: ``accumulate_conv`` with asymmetric or non-zero padding (``geom.symmetric_padding``
is None). fp32 inputs use TF32 only when ``torch.get_float32_matmul_precision()`` is not
``"highest"``. Importing raises ImportError when triton is missing, or when there is neither a
GPU driver nor the interpreter; dispatch then records the backend as unavailable.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch
from torch import Tensor

try:
    import triton
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"the triton backend needs the triton package ({exc})") from exc

if os.environ.get("TRITON_INTERPRET") != "1":
    if not torch.cuda.is_available():
        raise ImportError("the triton backend needs a CUDA device (or TRITON_INTERPRET=1 set"
                          " before triton is imported)")
    try:
        triton.runtime.driver.active.get_current_device()
    except Exception as exc:  # "0 active drivers" and the like
        raise ImportError(f"triton has no active GPU driver: {exc}") from exc

from ... import dispatch  # noqa: E402
from ...geometry import ConvGeometry  # noqa: E402
from . import accumulate, accumulate_conv, common, project_grads  # noqa: E402

INTERPRET = common.INTERPRET
DEVICES = ("cuda", "cpu") if INTERPRET else ("cuda",)


def on_device(t: Tensor):
    """Make t's GPU the current one: Triton launches on the current device and stream, not on
    the tensors' (a tensor on cuda:1 while cuda:0 is current would be an illegal access)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@dispatch.register("accumulate", "triton", devices=DEVICES)
def _accumulate(S: Tensor, X: Tensor) -> Tensor:
    with on_device(S):
        accumulate.accumulate_(S, X, 0, common.allow_tf32())
    return S


def conv_supported(S: Tensor, x: Tensor, geom: ConvGeometry) -> bool:
    """Only symmetric zero padding is gathered in-kernel; other modes go elsewhere."""
    return geom.symmetric_padding is not None


@dispatch.register("accumulate_conv", "triton", devices=DEVICES, supports=conv_supported)
def _accumulate_conv(S: Tensor, x: Tensor, geom: ConvGeometry) -> Tensor:
    with on_device(S):
        accumulate_conv.accumulate_conv_(
            S, x, list(geom.kernel_size), list(geom.stride), list(geom.symmetric_padding),
            list(geom.dilation), geom.groups, list(geom.output_size(x.shape[2], x.shape[3])),
            0, common.allow_tf32())
    return S


@dispatch.register("project_grads", "triton", devices=DEVICES)
def _project_grads(grads: Sequence[Tensor], bases: Sequence[Tensor],
                   subtract: Sequence[bool]) -> None:
    with on_device(grads[0]):
        project_grads.project_grads_(list(grads), list(bases), [bool(s) for s in subtract])
