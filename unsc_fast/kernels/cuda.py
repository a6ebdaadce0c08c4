"""The ``cuda`` backend: the CUDA ops of ``unsc_fast._C`` (kernels in csrc/cuda/).

Importing this module loads the extension through :mod:`unsc_fast.kernels.cpp` (which also
registers the fake implementations) and raises ImportError when the extension was built
without CUDA kernels (a CPU torch, ``UNSC_FAST_CUDA=0``, or no CUDA toolkit at build time), so
:mod:`unsc_fast.dispatch` records the backend as unavailable with that reason.
"""
from __future__ import annotations

import torch

from ..dispatch import register
from . import cpp

__all__ = ["accumulate", "accumulate_conv", "project_grads"]

if not cpp.WITH_CUDA or not torch._C._dispatch_has_kernel_for_dispatch_key(
        "unsc_fast::accumulate_", "CUDA"):
    raise ImportError(
        "unsc_fast._C has no CUDA kernels: it was built with a CPU-only torch, with"
        " UNSC_FAST_CUDA=0 or without a CUDA toolkit; rebuild on a CUDA machine with"
        " `pip install -e . --no-build-isolation`")

# The torch ops dispatch on the tensors' device, so the cpp wrappers serve CUDA tensors too:
# only the registration differs.
accumulate = register("accumulate", "cuda", devices=("cuda",))(cpp.accumulate)
accumulate_conv = register("accumulate_conv", "cuda", devices=("cuda",),
                           supports=cpp.conv_supported)(cpp.accumulate_conv)
project_grads = register("project_grads", "cuda", devices=("cuda",))(cpp.project_grads)
