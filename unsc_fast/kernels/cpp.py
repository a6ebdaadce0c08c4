"""The ``cpp`` backend: the compiled CPU ops of ``unsc_fast._C`` (sources in csrc/).

Importing this module loads the extension, which registers ``torch.ops.unsc_fast.*``, adds the
fake (meta) implementations torch.compile needs, and offers the CPU ops to
:mod:`unsc_fast.dispatch`. If ``unsc_fast._C`` is not built, the import raises ImportError
(dispatch records the backend as unavailable) unless ``UNSC_FAST_JIT=1``: then the sources are
compiled once with ``torch.utils.cpp_extension.load`` (ninja), in a source checkout only, from
the same source list and by the same CUDA rule as setup.py (csrc/sources.txt and
csrc/build_rules.py: CUDA ops when torch is a CUDA build, a toolkit is found and
``UNSC_FAST_CUDA`` is not ``0``; no GPU needed to compile).

Public names that :mod:`unsc_fast.kernels.cuda` reuses: ``WITH_CUDA``, ``conv_supported``,
and the op wrappers.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..dispatch import register
from ..geometry import ConvGeometry

__all__ = ["load_extension", "build_rules", "jit_sources", "conv_supported", "WITH_CUDA",
           "accumulate", "accumulate_conv", "project_grads"]

JIT_ENV = "UNSC_FAST_JIT"
_CSRC = Path(__file__).resolve().parents[2] / "csrc"


def build_rules():
    """csrc/build_rules.py of the source checkout (the source list and the CUDA rule that
    setup.py uses too), loaded by path; ImportError outside a source checkout."""
    path = _CSRC / "build_rules.py"
    if not path.is_file():
        raise ImportError(f"{JIT_ENV}=1 but the C++ sources are not next to the package"
                          " (JIT builds need a source checkout)")
    spec = importlib.util.spec_from_file_location("unsc_fast_build_rules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jit_sources(with_cuda: bool) -> list[str]:
    """The JIT build's sources (absolute paths), from csrc/sources.txt."""
    parts = ("core", "python") + (("cuda",) if with_cuda else ())
    return build_rules().sources(*parts)


def _jit_build():
    """Compile csrc/ with ninja into torch's extension cache and load it (slow: ~30 s)."""
    from torch.utils import cpp_extension

    rules = build_rules()
    with_cuda = rules.cuda_skip_reason(torch) is None
    cflags = list(rules.CXX_FLAGS)
    kwargs = {}
    if with_cuda:
        define = f"-D{rules.CUDA_MACRO}=1"
        cflags.append(define)
        kwargs["extra_cuda_cflags"] = [*rules.NVCC_FLAGS, define]
    return cpp_extension.load(
        name="unsc_fast_C", sources=jit_sources(with_cuda), extra_cflags=cflags,
        extra_ldflags=list(rules.LINK_FLAGS), extra_include_paths=[str(_CSRC)],
        is_python_module=True, verbose=os.environ.get(JIT_ENV + "_VERBOSE") == "1", **kwargs)


def load_extension():
    """The compiled module (``unsc_fast._C``, or the JIT build when ``UNSC_FAST_JIT=1``)."""
    try:
        from .. import _C
        return _C
    except ImportError as exc:
        if os.environ.get(JIT_ENV, "").strip() == "1":
            return _jit_build()
        raise ImportError(
            "unsc_fast._C is not built: run `pip install -e . --no-build-isolation` in the"
            f" repository, or set {JIT_ENV}=1 to compile it on first use ({exc})") from exc


_ext = load_extension()
WITH_CUDA: bool = bool(getattr(_ext, "with_cuda", False))
_ops = torch.ops.unsc_fast


# ---- fake implementations: shapes only, for FakeTensor / torch.compile tracing -------------

def _register_fakes() -> None:
    @torch.library.register_fake("unsc_fast::accumulate_")
    def _accumulate_fake(S, X):
        torch._check(S.dim() == 2 and X.dim() == 2, lambda: "S and X must be 2-D")
        torch._check(X.shape[1] == S.shape[0], lambda: "X must be (n, d) to match S (d, d)")
        return None

    @torch.library.register_fake("unsc_fast::accumulate_conv_")
    def _accumulate_conv_fake(S, x, kernel, stride, padding, dilation, groups, output_size):
        torch._check(S.dim() == 3 and x.dim() == 4, lambda: "S must be 3-D and x 4-D")
        return None

    @torch.library.register_fake("unsc_fast::project_grads_")
    def _project_grads_fake(grads, bases, subtract):
        torch._check(len(grads) == len(bases) == len(subtract),
                     lambda: "grads, bases and subtract differ in length")
        return None


_register_fakes()


# ---- the backend ----------------------------------------------------------------------------

def conv_supported(S: Tensor, x: Tensor, geom: ConvGeometry) -> bool:
    """Symmetric zero padding only; the reference handles the other geometries."""
    return geom.symmetric_padding is not None


@register("accumulate", "cpp", devices=("cpu",))
def accumulate(S: Tensor, X: Tensor) -> Tensor:
    _ops.accumulate_(S, X)
    return S


@register("accumulate_conv", "cpp", devices=("cpu",), supports=conv_supported)
def accumulate_conv(S: Tensor, x: Tensor, geom: ConvGeometry) -> Tensor:
    pad = geom.symmetric_padding
    if pad is None:
        raise ValueError(f"the compiled backend needs symmetric zero padding, got pad={geom.pad}"
                         f" padding_mode={geom.padding_mode!r}")
    _ops.accumulate_conv_(S, x, list(geom.kernel_size), list(geom.stride), list(pad),
                          list(geom.dilation), int(geom.groups),
                          list(geom.output_size(x.shape[2], x.shape[3])))
    return S


@register("project_grads", "cpp", devices=("cpu",))
def project_grads(grads: Sequence[Tensor], bases: Sequence[Tensor],
                  subtract: Sequence[bool]) -> None:
    _ops.project_grads_(list(grads), list(bases), [bool(s) for s in subtract])
