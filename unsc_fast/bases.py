"""Core subspaces and null spaces of layer-input statistics, one basis per layer (and group).

Per layer and conv group, ``C = U Λ Uᵀ`` (``eigh``, float64); a rank rule picks the core rank
r; the basis stored is whichever of U_r (``subtract=True``: G ← G − (G U_r)U_rᵀ) and U_0
(``subtract=False``: G ← (G U_0)U_0ᵀ) has fewer columns. Dense projectors are never built.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from . import reference as ref
from .io import atomic_save
from .stats import LayerMoments, SecondMoments

# -- rank rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Energy:
    """Paper's rule: the smallest r whose top eigenvalues hold a share ``eps`` of the energy."""
    eps: float = 0.99

    def rank(self, evals: Tensor) -> int:
        return ref.energy_rank(evals, self.eps)


@dataclass(frozen=True)
class EigenFloor:
    """Adam-NSCL rule: eigenvalues at most ``a``·λ_min form the null space."""
    a: float = 10.0

    def rank(self, evals: Tensor) -> int:
        return ref.floor_rank(evals, self.a)


@dataclass(frozen=True)
class Threshold:
    """AlphaEdit-style rule: the core holds eigenvalues above ``t``·λ_max."""
    t: float = 1e-2

    def rank(self, evals: Tensor) -> int:
        return ref.threshold_rank(evals, self.t)


@dataclass(frozen=True)
class FixedRank:
    """A fixed core rank ``k`` (clipped to the layer's dimension)."""
    k: int

    def rank(self, evals: Tensor) -> int:
        return min(max(self.k, 0), evals.numel())


Rule = Energy | EigenFloor | Threshold | FixedRank
_RULES = {"energy": (Energy, float), "floor": (EigenFloor, float),
          "threshold": (Threshold, float), "rank": (FixedRank, int)}


def parse_rule(spec: str | Rule) -> Rule:
    """``"energy:0.99"``, ``"floor:10"``, ``"threshold:0.01"`` or ``"rank:32"`` to a rule."""
    if not isinstance(spec, str):
        if not hasattr(spec, "rank"):
            raise TypeError(f"not a rank rule: {spec!r}")
        return spec
    kind, _, value = spec.partition(":")
    if kind not in _RULES or not value:
        raise ValueError(f"bad rank rule {spec!r}; use one of"
                         " energy:EPS, floor:A, threshold:T, rank:K")
    cls, conv = _RULES[kind]
    try:
        rule = cls(conv(value))
    except ValueError:
        raise ValueError(f"bad value in rank rule {spec!r}") from None
    if isinstance(rule, Energy) and not 0.0 <= rule.eps <= 1.0:
        raise ValueError(f"energy eps must lie in [0, 1], got {rule.eps}")
    return rule


def gpm_schedule(step: int) -> float:
    """The paper's per-class energy threshold when bases grow class by class: 0.97 + 0.003c."""
    return min(0.97 + 0.003 * step, 1.0)


# -- bases -----------------------------------------------------------------------------------


@dataclass
class LayerBasis:
    """The bases of one layer: one (d, m_g) matrix per conv group (one for a Linear).

    ``d`` counts the bias feature when ``include_bias``; ``ranks`` are the core ranks r_g.
    """

    kind: str
    d: int
    bases: list[Tensor]
    subtract: list[bool]
    ranks: list[int]
    include_bias: bool = False

    @property
    def groups(self) -> int:
        return len(self.bases)

    @property
    def dtype(self) -> torch.dtype:
        return self.bases[0].dtype

    @property
    def device(self) -> torch.device:
        return self.bases[0].device

    def to(self, device=None, dtype=None) -> "LayerBasis":
        return replace(self, bases=[b.to(device=device, dtype=dtype) for b in self.bases])

    def core(self, g: int = 0) -> Tensor:
        """The core basis U_r of group g (computed from U_0 when only that is stored)."""
        B = self.bases[g]
        if self.subtract[g]:
            return B
        evals, evecs = torch.linalg.eigh(torch.eye(self.d, dtype=torch.float64, device=B.device)
                                         - B.double() @ B.double().mT)
        return evecs[:, evals > 0.5].flip(-1).to(B.dtype)


def _basis_from(evals: Tensor, evecs: Tensor, r: int, store: str) -> tuple[Tensor, bool]:
    d = evals.numel()
    subtract = {"core": True, "null": False}.get(store, r <= d - r)
    return (evecs[:, :r] if subtract else evecs[:, r:]).contiguous(), subtract


def layer_basis(name: str, lm: LayerMoments, rule: Rule, *, include_bias: bool = False,
                store: str = "auto", dtype: torch.dtype = torch.float32) -> LayerBasis:
    """The bases of one layer's statistics: eigh of C = S/n per group, then the rank rule."""
    try:
        C = lm.covariance(include_bias)
    except ValueError as exc:
        raise ValueError(f"layer {name!r}: {exc}") from None
    bases, subs, ranks = [], [], []
    for Cg in C:
        try:
            evals, evecs = ref.eigh_desc(Cg)
        except torch.linalg.LinAlgError as exc:
            raise torch.linalg.LinAlgError(f"layer {name!r}: {exc}") from None
        r = rule.rank(evals)
        B, sub = _basis_from(evals, evecs, r, store)
        bases.append(B.to(dtype))
        subs.append(sub)
        ranks.append(r)
    return LayerBasis(lm.kind, C.shape[-1], bases, subs, ranks, include_bias)


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
        return NullSpace({n: lb.to(device, dtype) for n, lb in self._layers.items()})

    @classmethod
    def from_moments(cls, moments: SecondMoments, rule: Rule | str = Energy(0.99), *,
                     include_bias: bool | None = None, store: str = "auto",
                     dtype: torch.dtype = torch.float32, distribute: bool = False,
                     group=None) -> "NullSpace":
        """Bases of every layer of ``moments`` under a rank rule (default ε = 0.99).

        ``store``: ``"auto"`` keeps the smaller of U_r and U_0, ``"core"`` or ``"null"`` force
        one. ``dtype`` is that of the stored bases (decomposition is float64 regardless).
        ``distribute=True`` (``torch.distributed`` initialised, statistics already summed with
        :meth:`SecondMoments.all_reduce_`): each rank of ``group`` decomposes a share of the
        layers and broadcasts them, so every rank ends with the same bases in about 1/world of
        the time (see :mod:`unsc_fast.distributed`).
        """
        rule = parse_rule(rule)
        if store not in ("auto", "core", "null"):
            raise ValueError(f"store must be 'auto', 'core' or 'null', got {store!r}")
        include_bias = moments.include_bias if include_bias is None else include_bias
        moments.check_finite()
        if distribute:
            from .distributed import distributed_bases
            return cls(distributed_bases(moments, rule, include_bias=include_bias, store=store,
                                         dtype=dtype, group=group))
        return cls({name: layer_basis(name, lm, rule, include_bias=include_bias, store=store,
                                      dtype=dtype)
                    for name, lm in moments.moments.items()})

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
        layers = {}
        for name, Us in cores.items():
            lm = per_step[0].moments[name]
            d = Us[0].shape[0]
            bases, subs = [], []
            for U in Us:
                B, sub = _complete(U, store)
                bases.append(B.to(dtype))
                subs.append(sub)
            layers[name] = LayerBasis(lm.kind, d, bases, subs, [U.shape[1] for U in Us],
                                      per_step[0].include_bias)
        return cls(layers)

    # -- persistence -----------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        tensors, meta = {}, {}
        for name, lb in self._layers.items():
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
        if str(path).endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("unsc_fast", "null"))
                if meta is None:
                    raise ValueError(f"{path} holds no unsc_fast bases")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or "meta" not in blob:
                raise ValueError(f"{path} holds no unsc_fast bases")
            tensors, meta = blob["tensors"], blob["meta"]
        layers = {}
        for name, m in meta.items():
            bases = [tensors[f"{name}/{g}"].to(device) for g in range(len(m["subtract"]))]
            layers[name] = LayerBasis(m["kind"], m["d"], bases, list(m["subtract"]),
                                      list(m["ranks"]), m["include_bias"])
        return cls(layers)

    def summary(self) -> str:
        """A markdown table: layer, kind, d, core rank, stored basis."""
        rows = ["| layer | kind | d | core rank r | stored |", "|---|---|---|---|---|"]
        for name, lb in self._layers.items():
            ranks = "/".join(map(str, lb.ranks)) if lb.groups <= 4 else \
                f"{min(lb.ranks)}..{max(lb.ranks)} ({lb.groups} groups)"
            stored = "U_r" if all(lb.subtract) else "U_0" if not any(lb.subtract) else "mixed"
            rows.append(f"| {name} | {lb.kind} | {lb.d} | {ranks} | {stored} |")
        return "\n".join(rows)


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
