"""Rank rules: how many eigenvectors of a layer's covariance form its core subspace.

Each rule maps eigenvalues (descending) to a core rank r; the rest span the null space.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from torch import Tensor

from . import reference as ref

# -- rank rules ------------------------------------------------------------------------------
# Each rule checks its parameter on construction, so ``parse_rule`` and direct use agree: a
# value out of range would give an empty or meaningless core, i.e. nothing protected.


def _real(rule: str, field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{rule} {field} must be a real number, got {value!r}")
    return float(value)


def _unit_interval(rule: str, field: str, value, what: str) -> float:
    v = _real(rule, field, value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{rule} {field} must lie in [0, 1] ({what}), got {value!r}")
    return v


@dataclass(frozen=True)
class Energy:
    """Paper's rule: the smallest r whose top eigenvalues hold a share ``eps`` of the energy.

    ``eps`` is a finite number in [0, 1]."""
    eps: float = 0.99

    def __post_init__(self):
        object.__setattr__(self, "eps", _unit_interval(
            "energy", "eps", self.eps, "the share of the energy the core keeps"))

    def rank(self, evals: Tensor) -> int:
        """Core rank r for descending eigenvalues ``evals`` (0 when eps = 0 or C = 0)."""
        return ref.energy_rank(evals, self.eps)


@dataclass(frozen=True)
class EigenFloor:
    """Adam-NSCL rule: eigenvalues at most ``a``·λ_min form the null space.

    ``a`` is a finite number >= 1: with a < 1, λ_min itself would exceed a·λ_min, so no
    eigenvalue would be null when λ_min > 0 and the rule would be meaningless."""
    a: float = 10.0

    def __post_init__(self):
        a = _real("floor", "a", self.a)
        if not (math.isfinite(a) and a >= 1.0):
            raise ValueError(
                f"floor a must be a finite number >= 1 (the null space holds the eigenvalues"
                f" <= a*lambda_min; with a < 1 not even lambda_min would be in it), got {self.a!r}")
        object.__setattr__(self, "a", a)

    def rank(self, evals: Tensor) -> int:
        """Core rank r: the number of eigenvalues in ``evals`` above a·λ_min."""
        return ref.floor_rank(evals, self.a)


@dataclass(frozen=True)
class Threshold:
    """AlphaEdit-style rule: the core holds eigenvalues above ``t``·λ_max.

    ``t`` is a finite number in [0, 1]."""
    t: float = 1e-2

    def __post_init__(self):
        object.__setattr__(self, "t", _unit_interval(
            "threshold", "t", self.t, "a fraction of the largest eigenvalue"))

    def rank(self, evals: Tensor) -> int:
        """Core rank r: the number of eigenvalues in ``evals`` above t·λ_max (0 when C = 0)."""
        return ref.threshold_rank(evals, self.t)


@dataclass(frozen=True)
class FixedRank:
    """A fixed core rank ``k``, an int >= 0 (clipped to the layer's dimension)."""
    k: int

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, numbers.Integral):
            raise TypeError(f"rank k must be an int, got {self.k!r}")
        if self.k < 0:
            raise ValueError(f"rank k must be an int >= 0 (the core rank), got {self.k!r}")
        object.__setattr__(self, "k", int(self.k))

    def rank(self, evals: Tensor) -> int:
        """Core rank r = min(k, number of eigenvalues)."""
        return min(self.k, evals.numel())


Rule = Energy | EigenFloor | Threshold | FixedRank
_RULES = {"energy": (Energy, float), "floor": (EigenFloor, float),
          "threshold": (Threshold, float), "rank": (FixedRank, int)}


def parse_rule(spec: str | Rule) -> Rule:
    """``"energy:0.99"``, ``"floor:10"``, ``"threshold:0.01"`` or ``"rank:32"`` to a rule.

    Ranges: energy eps and threshold t in [0, 1], floor a >= 1, rank k an int >= 0.
    """
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
        number = conv(value)
    except ValueError:
        raise ValueError(f"bad value in rank rule {spec!r}") from None
    try:
        return cls(number)
    except ValueError as exc:
        raise ValueError(f"bad value in rank rule {spec!r}: {exc}") from None


def gpm_schedule(step: int) -> float:
    """The paper's per-class energy threshold when bases grow class by class: 0.97 + 0.003c."""
    return min(0.97 + 0.003 * step, 1.0)
