"""Core subspaces and null spaces of layer-input statistics, one basis per layer (and group).

Per layer and conv group, ``C = U Λ Uᵀ`` (``eigh``, float64); a rank rule picks the core rank
r; the basis stored is whichever of U_r (``subtract=True``: G ← G − (G U_r)U_rᵀ) and U_0
(``subtract=False``: G ← (G U_0)U_0ᵀ) has fewer columns. Dense projectors are never built.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import helpers, layers
from .layers import KINDS
from . import reference as ref
from .io import atomic_save
from .layer_basis import METHODS, LayerBasis, layer_basis
from .rules import EigenFloor, Energy, FixedRank, Rule, Threshold, gpm_schedule, parse_rule
from .stats import LayerMoments, SecondMoments

__all__ = ["NullSpace", "LayerBasis", "layer_basis", "Rule", "Energy", "EigenFloor",
           "Threshold", "FixedRank", "parse_rule", "gpm_schedule"]


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
            kind = layers.kind_of(m)
            if kind is None:
                raise TypeError(f"layer {name!r} is a {type(m).__name__}; bases apply only"
                                f" to {layers.SUPPORTED_NAMES}")
            groups, k = layers.groups_of(m), layers.input_dim(m)
            if kind == "conv2d":
                what = (f"in_channels/groups*kh*kw = {m.in_channels}/{m.groups}"
                        f"*{'*'.join(map(str, m.kernel_size))} = {k}")
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
            rows = [tuple(B.shape) for B in lb.bases if B.dim() != 2 or B.shape[0] != lb.d]
            if rows:
                raise ValueError(f"layer {name!r}: bases must be ({lb.d}, m) matrices (d rows),"
                                 f" got shapes {rows}")

    @classmethod
    def from_moments(cls, moments: SecondMoments, rule: Rule | str = Energy(0.99), *,
                     include_bias: bool | None = None, store: str = "auto",
                     dtype: torch.dtype = torch.float32, distribute: bool = False,
                     group=None, progress: bool = False, method: str = "eigh") -> "NullSpace":
        """Bases of every layer of ``moments`` under a rank rule (default ε = 0.99).

        ``store``: ``"auto"`` keeps the smaller of U_r and U_0, ``"core"`` or ``"null"`` force
        one. ``dtype`` is that of the stored bases (decomposition is float64 regardless).
        ``distribute=True`` (``torch.distributed`` initialised, statistics already summed with
        :meth:`SecondMoments.all_reduce_`): each rank of ``group`` decomposes a share of the
        layers and broadcasts them, so every rank ends with the same bases in about 1/world of
        the time (see :mod:`unsc_fast.distributed`). ``progress`` shows a bar over the layers
        (on every rank, over its own layers, when distributed). ``method``: ``"eigh"`` (float64,
        the reference) or ``"fast"`` (float32 subspace iteration whose core keeps at least the
        exact rule's energy; for wide layers, see :mod:`unsc_fast.spectral`).
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
        moments.check_finite()
        if distribute:
            from .distributed import distributed_bases
            own = distributed_bases(moments, rule, include_bias=include_bias, store=store,
                                    dtype=dtype, group=group, progress=progress, method=method)
        else:
            with helpers.progress(list(moments.moments.items()), progress, "bases") as items:
                own = {name: layer_basis(name, lm, rule, include_bias=include_bias,
                                         store=store, dtype=dtype, method=method)
                       for name, lm in items}
        # Layers that shared one input share one statistic, hence one basis (the same object:
        # decomposed once, stored once).
        return cls({name: own[moments.shared.get(name, name)] for name in moments.layers})

    @classmethod
    def grow(cls, per_step: Sequence[SecondMoments],
             eps: float | Callable[[int], float] = gpm_schedule, *, store: str = "auto",
             dtype: torch.dtype = torch.float32) -> "NullSpace":
        """GPM-style growth: add directions step by step (e.g. class by class).

        At step c with covariance C_c and current core U: if the energy of C_c outside U is
        above ``1 − eps(c)`` of its trace, add the top eigenvectors of the residual
        ``(I − UUᵀ) C_c (I − UUᵀ)`` until the captured share reaches ``eps(c)``.
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
                C = lm.covariance(moments.include_bias)
                cores.setdefault(name, [C.new_zeros(C.shape[-1], 0) for _ in range(len(C))])
                cores[name] = [_grow_core(U, Cg, e) for U, Cg in zip(cores[name], C)]
        if not cores:
            raise ValueError("no statistics were accumulated in any step (is D_r empty?)")
        found = {}
        for name, Us in cores.items():
            lm = per_step[0].moments[name]
            d = Us[0].shape[0]
            bases, subs = [], []
            for U in Us:
                B, sub = _complete(U, store)
                bases.append(B.to(dtype))
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
        space, all values finite, and ``max |BᵀB − I| <= ORTHO_TOL[dtype]`` (computed in
        float64). :meth:`load` calls it, so an edited or damaged file is refused.
        """
        for name, lb in self._layers.items():
            if lb.kind not in KINDS or lb.groups < 1 or \
                    not (len(lb.subtract) == len(lb.ranks) == lb.groups):
                raise ValueError(f"layer {name!r}: kind {lb.kind!r}, {lb.groups} bases,"
                                 f" {len(lb.subtract)} flags, {len(lb.ranks)} ranks")
            for g, (B, sub, r) in enumerate(zip(lb.bases, lb.subtract, lb.ranks)):
                cols = r if sub else lb.d - r
                if B.dim() != 2 or tuple(B.shape) != (lb.d, cols) or not 0 <= r <= lb.d:
                    raise ValueError(f"layer {name!r} group {g}: basis {tuple(B.shape)} does"
                                     f" not fit d = {lb.d}, rank {r}")
                if not bool(torch.isfinite(B).all()):
                    raise ValueError(f"layer {name!r} group {g}: the basis holds NaN or Inf")
                if cols:
                    Bd = B.detach().double()
                    err = float((Bd.mT @ Bd - torch.eye(cols, dtype=torch.float64,
                                                         device=B.device)).abs().max())
                    tol = ORTHO_TOL.get(B.dtype, 1e-3)
                    if not err <= tol:
                        raise ValueError(f"layer {name!r} group {g}: the basis is not"
                                         f" orthonormal (max |BᵀB − I| = {err:.2e} >"
                                         f" {tol:g})")

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


#: Largest ``max |BᵀB − I|`` a loaded basis may show, by its dtype.
ORTHO_TOL = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 2e-2,
             torch.bfloat16: 5e-2}

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
