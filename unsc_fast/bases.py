"""Core subspaces and null spaces of layer-input statistics, one basis per layer (and group).

Per layer and conv group, ``C = U Λ Uᵀ`` (``eigh``, float64); a rank rule picks the core rank
r; the basis stored is whichever of U_r (``subtract=True``: G ← G − (G U_r)U_rᵀ) and U_0
(``subtract=False``: G ← (G U_0)U_0ᵀ) has fewer columns. Dense projectors are never built.

Bases are stored, by default, in the dtype of their layer's weight (a bf16 model gets bf16
bases: what :func:`unsc_fast.project_` needs to meet its gradients), computed in float64
(``eigh``) or float32 (``method="fast"``) first; ``dtype=`` overrides it. An embedding's
basis is a set of token ids (see :class:`unsc_fast.layer_basis.LayerBasis`).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import helpers, layers
from .layers import DIAGONAL_KINDS, KINDS
from . import reference as ref
from .io import atomic_save
from .layer_basis import METHODS, LayerBasis, layer_basis
from .rules import EigenFloor, Energy, FixedRank, Rule, Threshold, gpm_schedule, parse_rule
from .stats import LayerMoments, SecondMoments

__all__ = ["NullSpace", "LayerBasis", "layer_basis", "Rule", "Energy", "EigenFloor",
           "Threshold", "FixedRank", "parse_rule", "gpm_schedule", "ortho_tol", "store_dtype"]

#: dtypes a basis may be stored in
STORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def store_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The default dtype of a layer's stored basis: its weight's, when that is a floating
    dtype a basis can hold (float16, bfloat16, float32, float64), else float32."""
    return weight_dtype if weight_dtype in STORE_DTYPES else torch.float32


def ortho_tol(dtype: torch.dtype, d: int) -> float:
    """Largest ``max |BᵀB − I|`` a valid (d, m) basis stored in ``dtype`` may show.

    ``2·eps(dtype) + 64·eps(c)·sqrt(d)``: rounding an orthonormal basis to ``dtype`` moves
    each entry of BᵀB by at most about eps(dtype) (|Σ_k b_ki b_kj (δ_ki + δ_kj)| ≤ 2u·Σ|b_ki
    b_kj| ≤ eps by Cauchy-Schwarz), and the basis was computed in c = float64, or float32
    for a basis stored in float32 or less (``method="fast"``), whose orthogonality error
    grows like eps(c)·sqrt(d). Measured at d = 256..2048 (tolerance at d = 1024): rounding
    to bf16 3.9e-3 (1.6e-2), to fp16 4.9e-4 (2.2e-3); float32 fast-method bases up to 4.8e-6
    (2.4e-4); float64 eigh bases up to 1.6e-14 (4.6e-13).
    """
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return 2 * torch.finfo(dtype).eps + 64 * torch.finfo(compute).eps * math.sqrt(max(d, 1))


class NullSpace(Mapping[str, LayerBasis]):
    """The per-layer bases that define where UNSC's updates may go, keyed by module name.

    Build with :meth:`from_moments` (or :meth:`grow`), apply with :func:`unsc_fast.project_`,
    keep with :meth:`save` / :meth:`load` (``.safetensors`` or any other name for torch.save).
    """

    def __init__(self, layers: Mapping[str, LayerBasis]):
        self._layers = dict(layers)

    def __getitem__(self, name: str) -> LayerBasis:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        return f"NullSpace({len(self)} layers)"

    def to(self, device=None, dtype=None) -> "NullSpace":
        """A copy with every layer's bases moved to ``device`` and/or cast to ``dtype``.

        Use it to match the gradients before :func:`unsc_fast.project_`.
        """
        moved: dict[int, LayerBasis] = {}  # shared bases stay shared
        return NullSpace({n: moved.setdefault(id(lb), lb.to(device, dtype))
                          for n, lb in self._layers.items()})

    def check(self, model: nn.Module) -> None:
        """Check that these bases fit ``model``'s layers; raise before any training starts.

        Every basis name must be a module of ``model`` (``KeyError`` listing those that are
        not), that module a covered layer (``TypeError``; :mod:`unsc_fast.layers`), and its
        shape must match (``ValueError``): the layer kind; ``d`` = input features (Linear,
        Conv1D) or
        in_channels/groups·kh·kw (Conv2d), +1 when ``include_bias`` (and the layer then has
        a bias); one basis per conv group (one for a Linear); each basis with ``d`` rows.
        Device and dtype are not checked (see :meth:`to`).
        """
        modules = dict(model.named_modules())
        missing = [n for n in self._layers if n not in modules]
        if missing:
            raise KeyError(f"the bases name layers the model lacks: {missing}")
        for name, lb in self._layers.items():
            m = modules[name]
            kind = layers.kind_of(m, embeddings=True)
            if kind is None:
                raise TypeError(f"layer {name!r} is a {type(m).__name__}; bases apply only"
                                f" to {layers.SUPPORTED_NAMES}")
            groups, k = layers.groups_of(m), layers.input_dim(m)
            if kind == "conv2d":
                what = (f"in_channels/groups*kh*kw = {m.in_channels}/{m.groups}"
                        f"*{'*'.join(map(str, m.kernel_size))} = {k}")
            elif kind == "embedding":
                what = f"vocabulary size = {k}"
            else:
                what = f"input features = {k}"
            if lb.kind != kind:
                raise ValueError(f"layer {name!r} is {kind}, but its bases are of kind"
                                 f" {lb.kind!r}")
            if lb.include_bias and getattr(m, "bias", None) is None:
                raise ValueError(f"layer {name!r} has no bias, but its bases include it")
            d = k + int(lb.include_bias)
            if lb.d != d:
                bias = " + 1 (bias)" if lb.include_bias else ""
                raise ValueError(f"layer {name!r}: input dimension {what}{bias} = {d}, but the"
                                 f" bases have d = {lb.d}")
            if lb.groups != groups:
                raise ValueError(f"layer {name!r} has {groups} group(s), the bases"
                                 f" {lb.groups}")
            if lb.diagonal:
                continue                      # token ids: checked by validate()
            rows = [tuple(B.shape) for B in lb.bases if B.dim() != 2 or B.shape[0] != lb.d]
            if rows:
                raise ValueError(f"layer {name!r}: bases must be ({lb.d}, m) matrices (d rows),"
                                 f" got shapes {rows}")

    @classmethod
    def from_moments(cls, moments: SecondMoments, rule: Rule | str = Energy(0.99), *,
                     include_bias: bool | None = None, store: str = "auto",
                     dtype: torch.dtype | None = None, distribute: bool = False,
                     group=None, progress: bool = False, method: str = "eigh") -> "NullSpace":
        """Bases of every layer of ``moments`` under a rank rule (default ε = 0.99).

        ``store``: ``"auto"`` keeps the smaller of U_r and U_0, ``"core"`` or ``"null"`` force
        one. ``dtype`` is that of the stored bases; default (None): each layer's weight dtype
        (:func:`store_dtype`), so a bf16 model gets bf16 bases (decomposition is float64 for
        ``eigh``, float32 for ``"fast"``, regardless). An embedding's basis is token ids.
        ``distribute=True`` (``torch.distributed`` initialised, statistics already summed with
        :meth:`SecondMoments.all_reduce_`): each rank of ``group`` decomposes a share of the
        layers and broadcasts them, so every rank ends with the same bases in about 1/world of
        the time (see :mod:`unsc_fast.distributed`). ``progress`` shows a bar over the layers
        (on every rank, over its own layers, when distributed). ``method``: ``"eigh"`` (float64,
        the reference) or ``"fast"`` (float32 block Krylov or subspace iteration whose core
        keeps at least the exact rule's energy; for wide layers, see :mod:`unsc_fast.spectral`).
        """
        rule = parse_rule(rule)
        if store not in ("auto", "core", "null"):
            raise ValueError(f"store must be 'auto', 'core' or 'null', got {store!r}")
        if method not in METHODS:
            raise ValueError(f"unknown basis method {method!r}; choose one of {METHODS}")
        if method == "fast" and isinstance(rule, EigenFloor):
            raise ValueError("method='fast' needs an energy, threshold or rank rule: the floor"
                             " rule needs the smallest eigenvalue (use method='eigh')")
        include_bias = moments.include_bias if include_bias is None else include_bias
        if dtype is not None and dtype not in STORE_DTYPES:
            raise TypeError(f"dtype must be one of {STORE_DTYPES} (or None: the weights'),"
                            f" got {dtype}")
        moments.check_finite()
        dtypes = _store_dtypes(moments.model, moments.moments, dtype)
        if distribute:
            from .distributed import distributed_bases
            own = distributed_bases(moments, rule, include_bias=include_bias, store=store,
                                    dtype=dtypes, group=group, progress=progress, method=method)
        else:
            with helpers.progress(list(moments.moments.items()), progress, "bases") as items:
                own = {name: layer_basis(name, lm, rule, include_bias=include_bias,
                                         store=store, dtype=dtypes[name], method=method)
                       for name, lm in items}
        # Layers that shared one input share one statistic, hence one basis (the same object:
        # decomposed once, stored once).
        return cls({name: own[moments.shared.get(name, name)] for name in moments.layers})

    @classmethod
    def grow(cls, per_step: Sequence[SecondMoments],
             eps: float | Callable[[int], float] = gpm_schedule, *, store: str = "auto",
             dtype: torch.dtype | None = None) -> "NullSpace":
        """GPM-style growth: add directions step by step (e.g. class by class).

        At step c with covariance C_c and current core U: if the energy of C_c outside U is
        above ``1 − eps(c)`` of its trace, add the top eigenvectors of the residual
        ``(I − UUᵀ) C_c (I − UUᵀ)`` until the captured share reaches ``eps(c)``. For an
        embedding the residual's eigenvectors are the token axes outside the core: the most
        frequent of those tokens are added. ``dtype`` as in :meth:`from_moments`.
        """
        if not per_step:
            raise ValueError("grow needs statistics of at least one step")
        schedule = eps if callable(eps) else (lambda _c, e=float(eps): e)
        names = list(per_step[0].moments)
        cores: dict[str, list[Tensor]] = {}
        for c, moments in enumerate(per_step):
            if list(moments.moments) != names:
                raise ValueError("every step must watch the same layers")
            moments.check_finite()
            e = schedule(c)
            for name, lm in moments.moments.items():
                if lm.n == 0:
                    continue
                if lm.diagonal:
                    core = cores.setdefault(name, [torch.zeros(lm.dim, dtype=torch.bool,
                                                               device=lm.S.device)])
                    _grow_tokens(core[0], lm.S[0], e)
                    continue
                C = lm.covariance(moments.include_bias)
                cores.setdefault(name, [C.new_zeros(C.shape[-1], 0) for _ in range(len(C))])
                cores[name] = [_grow_core(U, Cg, e) for U, Cg in zip(cores[name], C)]
        if not cores:
            raise ValueError("no statistics were accumulated in any step (is D_r empty?)")
        found = {}
        dtypes = _store_dtypes(per_step[0].model, cores, dtype)
        for name, Us in cores.items():
            lm = per_step[0].moments[name]
            if lm.diagonal:
                core = Us[0]
                r = int(core.sum())
                sub = {"core": True, "null": False}.get(store, r <= lm.dim - r)
                ids = (core if sub else ~core).nonzero().view(-1)
                found[name] = LayerBasis(lm.kind, lm.dim, [ids], [sub], [r], False)
                continue
            d = Us[0].shape[0]
            bases, subs = [], []
            for U in Us:
                B, sub = _complete(U, store)
                bases.append(B.to(dtypes[name]))
                subs.append(sub)
            found[name] = LayerBasis(lm.kind, d, bases, subs, [U.shape[1] for U in Us],
                                      per_step[0].include_bias)
        first = per_step[0]
        return cls({name: found[first.shared.get(name, name)] for name in first.layers})

    # -- persistence -----------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        """``(tensors, meta)`` as :meth:`save` writes them.

        ``tensors`` maps ``"<layer>/<group>"`` to that group's (d, m) basis; ``meta`` maps each
        layer to ``{"kind", "d", "subtract", "ranks", "include_bias"}`` (JSON-serialisable), or
        to ``{"same_as": leader}`` when it shares the basis of an earlier layer.
        """
        tensors, meta = {}, {}
        first: dict[int, str] = {}
        for name, lb in self._layers.items():
            if id(lb) in first:
                meta[name] = {"same_as": first[id(lb)]}
                continue
            first[id(lb)] = name
            for g, B in enumerate(lb.bases):
                tensors[f"{name}/{g}"] = B.contiguous()
            meta[name] = {"kind": lb.kind, "d": lb.d, "subtract": lb.subtract,
                          "ranks": lb.ranks, "include_bias": lb.include_bias}
        return tensors, meta

    def save(self, path: str | os.PathLike) -> None:
        """Save atomically: safetensors for ``*.safetensors``, else ``torch.save``."""
        tensors, meta = self.state_dict()
        if str(path).endswith(".safetensors"):
            from safetensors.torch import save
            blob = save({k: v.cpu() for k, v in tensors.items()},
                        metadata={"unsc_fast": json.dumps(meta)})
            atomic_save(path, lambda f: f.write(blob))
        else:
            atomic_save(path, lambda f: torch.save({"tensors": tensors, "meta": meta}, f))

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> "NullSpace":
        """Load bases written by :meth:`save` (safetensors for ``*.safetensors``, else torch).

        ``device``: where to put the bases (default: CPU). Raises ``ValueError`` ("... holds no
        unsc_fast bases ...") for a file of another layout, e.g. a model's state dict.
        """
        def bad(why: str) -> ValueError:
            return ValueError(f"{path} holds no unsc_fast bases: {why}")

        if str(path).endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("unsc_fast")
                if raw is None:
                    raise bad("its metadata has no 'unsc_fast' entry")
                try:
                    meta = json.loads(raw)
                except ValueError:
                    raise bad("its 'unsc_fast' metadata is not JSON") from None
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or "meta" not in blob:
                raise bad("it is not a dict with 'meta' and 'tensors'")
            meta, tensors = blob["meta"], blob.get("tensors")
            if not isinstance(tensors, dict):
                raise bad("its 'tensors' entry is missing or not a dict")
        if not isinstance(meta, dict):
            raise bad(f"its metadata is a {type(meta).__name__}, not a dict of layers")
        found = {}
        for name, m in meta.items():
            if isinstance(m, dict) and set(m) == {"same_as"}:
                lead = m["same_as"]
                if not isinstance(lead, str) or not isinstance(found.get(lead), LayerBasis):
                    raise bad(f"layer {name!r} shares the basis of {lead!r}, which comes"
                              " nowhere before it")
                found[name] = found[lead]
                continue
            found[name] = _layer_from(name, m, tensors, bad)
        out = cls(found)
        try:
            out.validate()
        except ValueError as exc:
            raise ValueError(f"{path}: corrupt bases: {exc}") from None
        return out.to(device)

    def validate(self) -> None:
        """Raise ``ValueError`` unless every basis is finite, orthonormal and of its rank.

        Checked: shapes (d, r) when storing the core and (d, d − r) when storing the null
        space, all values finite, and ``max |BᵀB − I| <= ortho_tol(dtype, d)`` (computed in
        float64). An embedding's basis: r (or d − r) distinct token ids in [0, d), sorted,
        int64. :meth:`load` calls it, so an edited or damaged file is refused.
        """
        for name, lb in self._layers.items():
            if lb.kind not in KINDS or lb.groups < 1 or \
                    not (len(lb.subtract) == len(lb.ranks) == lb.groups):
                raise ValueError(f"layer {name!r}: kind {lb.kind!r}, {lb.groups} bases,"
                                 f" {len(lb.subtract)} flags, {len(lb.ranks)} ranks")
            if lb.diagonal and (lb.groups != 1 or lb.include_bias):
                raise ValueError(f"layer {name!r}: an embedding has one basis and no bias")
            for g, (B, sub, r) in enumerate(zip(lb.bases, lb.subtract, lb.ranks)):
                cols = r if sub else lb.d - r
                if lb.diagonal:
                    _check_token_ids(name, B, lb.d, cols, r)
                    continue
                if B.dim() != 2 or tuple(B.shape) != (lb.d, cols) or not 0 <= r <= lb.d:
                    raise ValueError(f"layer {name!r} group {g}: basis {tuple(B.shape)} does"
                                     f" not fit d = {lb.d}, rank {r}")
                if not bool(torch.isfinite(B).all()):
                    raise ValueError(f"layer {name!r} group {g}: the basis holds NaN or Inf")
                if cols:
                    Bd = B.detach().double()
                    err = float((Bd.mT @ Bd - torch.eye(cols, dtype=torch.float64,
                                                         device=B.device)).abs().max())
                    tol = ortho_tol(B.dtype, lb.d)
                    if not err <= tol:
                        raise ValueError(f"layer {name!r} group {g}: the basis is not"
                                         f" orthonormal (max |BᵀB − I| = {err:.2e} >"
                                         f" {tol:.2g}, the tolerance of {B.dtype} at"
                                         f" d = {lb.d})")

    def warnings(self) -> list[str]:
        """A line per layer whose core is empty (updates of that layer are unconstrained:
        D_r gave it no protected direction) or whose null space is empty (that layer cannot
        change: UNSC leaves it as it is)."""
        out = []
        for name, lb in self._layers.items():
            if all(r == 0 for r in lb.ranks):
                out.append(f"layer {name!r}: empty core (rank 0): its updates are not"
                           " constrained by D_r")
            elif all(r == lb.d for r in lb.ranks):
                out.append(f"layer {name!r}: empty null space (rank = d = {lb.d}): UNSC"
                           " cannot change it; a looser rule (e.g. energy:0.99) frees"
                           " directions")
        if self._layers and all(all(r == lb.d for r in lb.ranks)
                                for lb in self._layers.values()):
            out.append("every layer's null space is empty: unlearning will change no weight")
        return out

    def summary(self, model: nn.Module | None = None) -> str:
        """A markdown table: layer, kind, d, core rank, stored basis (or the layer whose basis
        it shares). With ``model``, a last line lists its trainable weights no basis covers."""
        rows = ["| layer | kind | d | core rank r | stored |", "|---|---|---|---|---|"]
        first: dict[int, str] = {}
        for name, lb in self._layers.items():
            ranks = "/".join(map(str, lb.ranks)) if lb.groups <= 4 else \
                f"{min(lb.ranks)}..{max(lb.ranks)} ({lb.groups} groups)"
            stored = "U_r" if all(lb.subtract) else "U_0" if not any(lb.subtract) else "mixed"
            if id(lb) in first:
                stored = f"shared with {first[id(lb)]}"
            first.setdefault(id(lb), name)
            rows.append(f"| {name} | {lb.kind} | {lb.d} | {ranks} | {stored} |")
        rows += [f"\nwarning: {w}" for w in self.warnings()]
        if model is not None:
            left = layers.unprotected_parameters(model, self._layers)
            rows.append("\nunprotected trainable weights (not covered by a basis; frozen by"
                        f" freeze_for_unlearning): {', '.join(left) if left else 'none'}")
        return "\n".join(rows)


def _store_dtypes(model: nn.Module, names, dtype: torch.dtype | None
                  ) -> dict[str, torch.dtype]:
    """Per layer name, the dtype its basis is stored in: ``dtype``, else its weight's."""
    if dtype is not None:
        return {n: dtype for n in names}
    modules = dict(model.named_modules())
    return {n: store_dtype(modules[n].weight.dtype) for n in names}


def _check_token_ids(name: str, B, d: int, cols: int, r: int) -> None:
    if not isinstance(B, Tensor) or B.dim() != 1 or B.dtype != torch.int64 \
            or B.numel() != cols or not 0 <= r <= d:
        shape = tuple(B.shape) if isinstance(B, Tensor) else B
        raise ValueError(f"layer {name!r}: an embedding's basis must be {cols} int64 token ids"
                         f" (d = {d}, rank {r}), got {shape}")
    if cols and (int(B[0]) < 0 or int(B[-1]) >= d or bool((B[1:] <= B[:-1]).any())):
        raise ValueError(f"layer {name!r}: an embedding's token ids must be distinct, sorted"
                         f" and in [0, {d})")


def _grow_tokens(core: Tensor, counts: Tensor, eps: float) -> None:
    """GPM growth of an embedding's core token set (a bool mask), in place: add the most
    frequent tokens outside it until it holds a share ``eps`` of this step's counts."""
    total = int(counts.sum())
    if total <= 0:
        return
    captured = int(counts[core].sum())
    if captured >= eps * total:
        return
    rest = torch.where(core, torch.zeros_like(counts), counts)
    order = torch.sort(rest, descending=True, stable=True).indices
    cum = captured + torch.cumsum(rest[order], 0)
    k = min(int((cum < eps * total).sum()) + 1, int((rest > 0).sum()))
    core[order[:k]] = True

_META_KEYS = {"kind": str, "d": int, "subtract": list, "ranks": list, "include_bias": bool}


def _layer_from(name: str, m, tensors: Mapping, bad: Callable[[str], ValueError]) -> LayerBasis:
    """One layer's :class:`LayerBasis` from saved metadata and tensors, validating the layout."""
    if not isinstance(m, dict):
        raise bad(f"layer {name!r}: metadata is a {type(m).__name__}, not a dict")
    for key, typ in _META_KEYS.items():
        v = m.get(key)
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise bad(f"layer {name!r}: {key!r} is {v!r}, not a {typ.__name__}")
    d, subtract, ranks = m["d"], m["subtract"], m["ranks"]
    if d < 1 or not subtract or len(ranks) != len(subtract) \
            or not all(isinstance(s, bool) for s in subtract) \
            or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= d
                       for r in ranks):
        raise bad(f"layer {name!r}: d = {d!r}, subtract = {subtract!r}, ranks = {ranks!r}"
                  " do not describe per-group bases")
    bases = []
    for g, (sub, r) in enumerate(zip(subtract, ranks)):
        B = tensors.get(f"{name}/{g}")
        if not isinstance(B, Tensor):
            raise bad(f"tensor {name}/{g} is missing")
        cols = r if sub else d - r
        if m["kind"] in DIAGONAL_KINDS:
            if B.dim() != 1 or B.numel() != cols or B.dtype != torch.int64:
                raise bad(f"tensor {name}/{g} is {tuple(B.shape)} {B.dtype}, expected {cols}"
                          " int64 token ids")
            bases.append(B)
            continue
        if B.dim() != 2 or tuple(B.shape) != (d, cols) or not B.is_floating_point():
            raise bad(f"tensor {name}/{g} is {tuple(B.shape)} {B.dtype}, expected a floating"
                      f" ({d}, {cols}) basis")
        bases.append(B)
    return LayerBasis(m["kind"], d, bases, list(subtract), list(ranks), m["include_bias"])


def _grow_core(U: Tensor, C: Tensor, eps: float) -> Tensor:
    total = torch.trace(C)
    if total <= 0:
        return U
    # Round-off relative to this step's energy, not to the residual's own (tiny) maximum.
    tol = C.shape[0] * torch.finfo(C.dtype).eps * total
    goal = eps * total - tol
    captured = torch.trace(U.mT @ C @ U) if U.shape[1] else total.new_zeros(())
    if captured >= goal:
        return U
    P = torch.eye(C.shape[0], dtype=C.dtype, device=C.device) - U @ U.mT
    evals, evecs = ref.eigh_desc(P @ C @ P)
    lam = torch.where(evals > tol, evals, torch.zeros_like(evals))
    cum = captured + torch.cumsum(lam, 0)
    k = min(int((cum < goal).sum()) + 1, int((lam > 0).sum()), C.shape[0] - U.shape[1])
    new, _ = torch.linalg.qr(torch.cat([U, evecs[:, :k]], 1))
    return new


def _complete(U: Tensor, store: str) -> tuple[Tensor, bool]:
    """Return U_r, or the orthonormal complement U_0 when that is smaller (or asked for)."""
    d, r = U.shape
    if {"core": True, "null": False}.get(store, r <= d - r):
        return U.contiguous(), True
    evals, evecs = torch.linalg.eigh(torch.eye(d, dtype=U.dtype, device=U.device) - U @ U.mT)
    return evecs[:, evals > 0.5].contiguous(), False
