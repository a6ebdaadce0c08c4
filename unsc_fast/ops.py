"""The three ops every backend implements, validated once here before any backend runs.

Contract (the functions of the same name in :mod:`unsc_fast.reference` are the spec). Each op
has one name everywhere; its implementations are

============== ========================== ============================================
backend        where                      symbol
============== ========================== ============================================
reference      unsc_fast/reference.py     ``accumulate_``, ``accumulate_conv_``, ``project_grads_``
cpp (CPU)      csrc/cpu/<op>.cpp          ``torch.ops.unsc_fast.<op>_`` (kernels/cpp.py)
cuda           csrc/cuda/<op>.cu          ``torch.ops.unsc_fast.<op>_`` (kernels/cuda.py)
triton         unsc_fast/kernels/triton/  ``<op>.py``: ``torch.ops.unsc_fast_triton.<op>_``
============== ========================== ============================================

``accumulate_(S, X)``
    S (d, d) fp32/fp64, X (n, d) fp16/bf16/fp32/fp64: ``S += XᵀX`` accumulated in S's dtype.
    Only the upper triangle of S (diagonal included) is defined afterwards.
``accumulate_conv_(S, x, geom)``
    S (groups, d, d), x (N, C, H, W) in any memory format: ``S[g] += P_gᵀP_g`` over every
    receptive-field patch P_g of group g, patch order (C/groups, kh, kw). Upper triangles only.
``project_grads_(grads, bases, subtract)``
    The grouped gradient op (not to be confused with the model-level
    :func:`unsc_fast.project_`, which gathers a model's gradients and calls this). For each i,
    in place: ``G_i ← G_i − (G_i B_i)B_iᵀ`` if ``subtract[i]`` else
    ``(G_i B_i)B_iᵀ``; G_i (rows, d) may be a strided view, B_i (d, m) orthonormal, m ≥ 0.

Bad input raises ``ValueError``/``TypeError`` here, before anything is written. Empty inputs
(no rows) and rank-0 bases are handled here too, once for every backend: a kernel only ever
sees work to do.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from . import dispatch
from .geometry import ConvGeometry

__all__ = ["accumulate_", "accumulate_conv_", "project_grads_"]

_ACC_DTYPES = (torch.float32, torch.float64)
_IN_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_float(name: str, t: Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in allowed:
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of {allowed}")


def _check_same_device(**tensors: Tensor) -> None:
    devices = {k: t.device for k, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors are on different devices: {devices}")


def _can_check_aliasing() -> bool:
    """False while torch.compile traces: the aliasing checks below compare data pointers,
    which traced (fake) tensors do not have, so ``fullgraph=True`` would fail on them. They
    guard direct calls against user mistakes (overlapping memory passed in); a traced call
    skips them, which is safe because the graph cannot alias by accident: the ops' schemas
    mark the written tensors mutable (``Tensor(a!)``), so AOTAutograd functionalizes the
    writes and guards on which graph inputs alias each other, and :func:`unsc_fast.project_`
    passes disjoint views (distinct parameters' gradients, disjoint row blocks). The same
    call run eagerly is checked."""
    return not torch.compiler.is_compiling()


def _span(t: Tensor) -> tuple[int, int]:
    """The byte range ``[lo, hi)`` that ``t``'s elements occupy."""
    lo = t.data_ptr()
    last = sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return lo, lo + (last + 1) * t.element_size()


def _check_disjoint(out_name: str, out: Tensor, in_name: str, t: Tensor) -> None:
    """An output written in place may not share memory with an input it is computed from."""
    if not _can_check_aliasing():
        return
    if out.numel() == 0 or t.numel() == 0 or out.device != t.device:
        return
    a, b = _span(out), _span(t)
    if a[0] < b[1] and b[0] < a[1]:
        raise ValueError(f"{out_name} and {in_name} share memory ({out_name} is written in"
                         f" place while {in_name} is read); pass a copy, e.g. {in_name}.clone()")


def _elements(t: Tensor, base: int) -> Tensor:
    """The storage offsets (in elements, from byte ``base``) of every element of ``t``."""
    start = (t.data_ptr() - base) // t.element_size()
    extent = sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1
    idx = torch.arange(start, start + extent, dtype=torch.int64)
    return idx.as_strided(t.shape, t.stride(), 0).reshape(-1)


def _check_no_overflow(S: Tensor, X: Tensor, rows: int) -> None:
    """Refuse, before writing, an update that could overflow S's dtype: every entry of S grows
    by at most rows · max|x|² (and S's entries are bounded by its diagonal). Non-finite
    inputs pass (their S is refused where it is used,
    e.g. :meth:`unsc_fast.SecondMoments.check_finite`); so do traced calls."""
    if not _can_check_aliasing():
        return
    # A sum of outer products is PSD, so its largest entry sits on the diagonal: d reads.
    # Both maxima come back in one device sync.
    diag = torch.diagonal(S.detach(), dim1=-2, dim2=-1)
    peak, s_max = torch.stack([X.detach().abs().amax().double(),
                               diag.abs().amax().double()]).tolist()
    if not math.isfinite(peak):
        return
    big = torch.finfo(S.dtype).max
    bound = s_max + rows * peak * peak
    if bound > big:
        raise ValueError(f"S += XᵀX could overflow {S.dtype} (max |x| = {peak:.3g} over {rows}"
                         f" rows): the statistics would have overflowed; use float64"
                         " statistics or rescale the inputs")


def _check_grads_apart(grads: list[Tensor]) -> None:
    """No element may belong to two gradients (each is written in place): gradients whose
    byte ranges overlap are compared element by element (interleaved views such as
    ``G[:, ::2]`` and ``G[:, 1::2]`` are fine; ``G[:3]`` and ``G[2:]`` are not)."""
    if not _can_check_aliasing():
        return
    spans = sorted((_span(G) + (i,)) for i, G in enumerate(grads) if G.numel())
    pairs, reach = [], -1  # reach: the highest end of any earlier span
    for k, s2 in enumerate(spans):
        if s2[0] < reach:  # rare (views of one tensor): compare with the earlier ones
            pairs += [(s1, s2) for s1 in spans[:k] if s2[0] < s1[1]]
        reach = max(reach, s2[1])
    for (lo1, _, i), (lo2, _, j) in pairs:
        a, b = grads[i], grads[j]
        if a.element_size() != b.element_size() or \
                (lo2 - lo1) % a.element_size() or \
                bool(torch.isin(_elements(b, lo1), _elements(a, lo1)).any()):
            raise ValueError(f"grads[{min(i, j)}] and grads[{max(i, j)}] overlap in memory"
                             " (both are written in place); pass disjoint tensors")


def _check_grads_apart_from_bases(grads: list[Tensor], bases: list[Tensor]) -> None:
    """No gradient (written) may share memory with a basis (read): one sorted sweep."""
    if not _can_check_aliasing():
        return
    spans = sorted([(*_span(t), 0, i) for i, t in enumerate(grads) if t.numel()]
                   + [(*_span(t), 1, i) for i, t in enumerate(bases) if t.numel()])
    reach = [(-1, -1), (-1, -1)]           # per kind: (largest end so far, its index)
    for lo, hi, kind, i in spans:
        end, j = reach[1 - kind]
        if lo < end:
            g, b = (i, j) if kind == 0 else (j, i)
            _check_disjoint(f"grads[{g}]", grads[g], f"bases[{b}]", bases[b])
        if hi > reach[kind][0]:
            reach[kind] = (hi, i)


def accumulate_(S: Tensor, X: Tensor, *, backend: str | None = None) -> Tensor:
    """``S += XᵀX`` in place (upper triangle). See the module docstring."""
    _check_float("S", S, _ACC_DTYPES)
    _check_float("X", X, _IN_DTYPES)
    if S.dim() != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"S must be a square (d, d) matrix, got shape {tuple(S.shape)}")
    if X.dim() != 2 or X.shape[1] != S.shape[0]:
        raise ValueError(f"X must be (n, {S.shape[0]}) to match S, got {tuple(X.shape)}")
    if not S.is_contiguous():
        raise ValueError("S must be contiguous (it is written in place)")
    _check_same_device(S=S, X=X)
    _check_disjoint("S", S, "X", X)
    if X.shape[0] == 0:
        return S
    _check_no_overflow(S, X, X.shape[0])
    _, fn = dispatch.resolve("accumulate", S.device, (S, X), backend)
    fn(S, X)
    return S


# GPU kernels put the groups on a grid axis that holds at most 65535 blocks (CUDA's y/z
# limit, which Triton shares): more groups than that go to the backend in slices (views of
# S and x, nothing copied), so no backend ever sees a grid it cannot launch.
MAX_GROUPS_PER_CALL = 65535


def accumulate_conv_(S: Tensor, x: Tensor, geom: ConvGeometry, *,
                     backend: str | None = None) -> Tensor:
    """``S[g] += P_gᵀP_g`` over the conv patches of x, in place. See the module docstring."""
    _check_float("S", S, _ACC_DTYPES)
    _check_float("x", x, _IN_DTYPES)
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    C = x.shape[1]
    if C % geom.groups:
        raise ValueError(f"{C} input channels do not split into {geom.groups} groups")
    d = geom.patch_dim(C)
    if S.dim() != 3 or tuple(S.shape) != (geom.groups, d, d):
        raise ValueError(f"S must be (groups, d, d) = {(geom.groups, d, d)} for this input and"
                         f" geometry, got {tuple(S.shape)}")
    if not S.is_contiguous():
        raise ValueError("S must be contiguous (it is written in place)")
    _check_same_device(S=S, x=x)
    _check_disjoint("S", S, "x", x)
    if min(geom.output_size(x.shape[2], x.shape[3])) < 1:
        raise ValueError(f"input {tuple(x.shape[2:])} (padding {geom.pad}) is smaller than the"
                         f" dilated kernel {geom.kernel_size} (dilation {geom.dilation})")
    if x.shape[0] == 0:
        return S
    oh, ow = geom.output_size(x.shape[2], x.shape[3])
    _check_no_overflow(S, x, x.shape[0] * oh * ow)
    _, fn = dispatch.resolve("accumulate_conv", S.device, (S, x, geom), backend)
    if geom.groups <= MAX_GROUPS_PER_CALL:
        fn(S, x, geom)
        return S
    cg = C // geom.groups
    for g0 in range(0, geom.groups, MAX_GROUPS_PER_CALL):
        n = min(MAX_GROUPS_PER_CALL, geom.groups - g0)
        fn(S[g0:g0 + n], x[:, g0 * cg:(g0 + n) * cg], dataclasses.replace(geom, groups=n))
    return S


def project_grads_(grads: Sequence[Tensor], bases: Sequence[Tensor], subtract: Sequence[bool],
                   *, backend: str | None = None) -> None:
    """Project many gradients in one call, in place. See the module docstring."""
    grads, bases, subtract = list(grads), list(bases), list(subtract)
    bad = [s for s in subtract if not isinstance(s, (bool, int)) or isinstance(s, float)]
    if bad or any(s not in (0, 1) for s in subtract):
        raise TypeError(f"subtract must hold booleans, got {subtract!r}")
    subtract = [bool(s) for s in subtract]
    if not (len(grads) == len(bases) == len(subtract)):
        raise ValueError(f"grads, bases and subtract differ in length:"
                         f" {len(grads)}, {len(bases)}, {len(subtract)}")
    if not grads:
        return
    for i, (G, B) in enumerate(zip(grads, bases)):
        _check_float(f"grads[{i}]", G, _IN_DTYPES)
        _check_float(f"bases[{i}]", B, _IN_DTYPES)
        if G.dim() != 2 or B.dim() != 2 or B.shape[0] != G.shape[1]:
            raise ValueError(f"grads[{i}] {tuple(G.shape)} and bases[{i}] {tuple(B.shape)}"
                             " must be (rows, d) and (d, m)")
        if G.dtype != B.dtype:
            raise TypeError(f"grads[{i}] is {G.dtype} but bases[{i}] is {B.dtype};"
                            " convert the bases with .to(dtype)")
        _check_same_device(grad=G, basis=B)
    if len({G.device for G in grads}) > 1:
        raise ValueError("all gradients of one project_ call must be on one device")
    # Written in place by many threads or GPU programs at once: no element may be reachable
    # twice (a broadcast view, or one gradient passed twice).
    for i, G in enumerate(grads):
        if any(st == 0 and n > 1 for st, n in zip(G.stride(), G.shape)):
            raise ValueError(f"grads[{i}] is a broadcast view (stride 0): its rows share"
                             " memory; pass a real tensor (e.g. .contiguous())")
    seen: dict[tuple, int] = {}
    for i, G in enumerate(grads if _can_check_aliasing() else ()):
        key = (G.data_ptr(), tuple(G.shape), G.stride()) if G.numel() else (i,)
        if key in seen:
            raise ValueError(f"grads[{i}] and grads[{seen[key]}] are the same memory")
        seen[key] = i
    _check_grads_apart(grads)
    _check_grads_apart_from_bases(grads, bases)
    # Nothing to compute for an empty gradient or a rank-0 basis: subtracting an empty core
    # leaves G as it is, and projecting onto an empty null space gives 0.
    work = []
    for G, B, sub in zip(grads, bases, subtract):
        if G.numel() == 0 or (B.shape[1] == 0 and sub):
            continue
        if B.shape[1] == 0:
            G.zero_()
            continue
        work.append((G, B, sub))
    if not work:
        return
    grads, bases, subtract = (list(t) for t in zip(*work))
    _, fn = dispatch.resolve("project_grads", grads[0].device, (grads, bases, subtract), backend)
    fn(grads, bases, subtract)


def project_(grads: Sequence[Tensor], bases: Sequence[Tensor], subtract: Sequence[bool], *,
             backend: str | None = None) -> None:
    """Deprecated name of :func:`project_grads_` (it clashed with :func:`unsc_fast.project_`)."""
    warnings.warn("unsc_fast.ops.project_ is renamed project_grads_; the old name will go",
                  DeprecationWarning, stacklevel=2)
    project_grads_(grads, bases, subtract, backend=backend)
