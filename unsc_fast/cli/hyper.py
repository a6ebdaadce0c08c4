"""Checks of a method's ``[methods.<name>]`` hyperparameters against its signature: names,
types (from the annotations) and ranges (by name), as one-line :class:`ConfigError` before
any work. Written for any registry of methods (name -> function taking ``task`` first).

Used by the image job (:func:`unsc_fast.cli.config.check_hyperparameters`) and the LM job.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping

from .errors import ConfigError

#: name -> (accepts the value, what it must be)
Ranges = Mapping[str, tuple[Callable[[object], bool], str]]


def is_int(v) -> bool:
    """An integer that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _type_check(annotation, v) -> tuple[bool, str]:
    kinds = {t.strip() for t in annotation.split("|")} if isinstance(annotation, str) else set()
    if v is None and "None" in kinds:
        return True, ""
    if "bool" in kinds:
        return isinstance(v, bool), "true or false"
    if "int" in kinds:
        return is_int(v), "an integer"
    if "float" in kinds:
        return is_number(v), "a finite number"
    if "str" in kinds:
        return isinstance(v, str), "a string"
    if "list[str]" in kinds:
        return isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"
    return True, ""


def check_hyperparameters(methods: Mapping[str, Callable], method: str, hp: dict,
                          ranges: Ranges | None = None) -> None:
    """Names, types and ``ranges`` of ``hp`` for ``methods[method]`` (a ``rule`` must
    parse). Types come from the annotations (strings, ``from __future__ import
    annotations``): bool, int, float, str, list[str], each optionally ``| None``."""
    ranges = ranges or {}
    params = {k: p for k, p in inspect.signature(methods[method]).parameters.items()
              if k != "task"}
    unknown = sorted(set(hp) - set(params))
    if unknown:
        raise ConfigError(f"[methods.{method}]: unknown hyperparameter(s) {unknown};"
                          f" {method} takes {sorted(params)}")
    for k, v in hp.items():
        ok, what = _type_check(params[k].annotation, v)
        if ok and v is not None and k in ranges and not isinstance(v, bool):
            ok, what = ranges[k][0](v), ranges[k][1]
        if ok and k == "rule":
            from ..rules import parse_rule
            try:
                parse_rule(v)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"[methods.{method}] rule: {exc}") from None
        if not ok:
            raise ConfigError(f"[methods.{method}] {k} must be {what}, got {v!r}")
