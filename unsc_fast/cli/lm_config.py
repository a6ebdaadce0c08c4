"""Configuration of the language-model job (``unsc-fast lm ...``): defaults, then a TOML file,
then flags.

The file's top-level keys are the fields of :class:`~unsc_fast.lab.lm.compare.LMSetup` plus
``seed`` and ``quiet``; ``[compare]`` holds ``seeds`` and ``methods``; ``[methods.<name>]``
holds a method's hyperparameters (keyword arguments of ``unsc_fast.lab.lm.methods.<name>``).
Unknown keys, methods and hyperparameters, and values of the wrong type or out of range, are
one-line errors raised before any work.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ..lab.lm.compare import ALL_METHODS, LMSetup
from ..lab.lm.corpus import CORPUS_SIZES
from ..lab.lm.methods import METHODS
from ..rules import parse_rule
from .config import load_toml
from .errors import ConfigError
from .hyper import check_hyperparameters, is_int, is_number

SETUP_KEYS = tuple(f.name for f in dataclasses.fields(LMSetup))

#: Ranges of the LM methods' hyperparameters (types come from their annotations).
HP_RANGES = {
    "lr": (lambda v: v > 0, "a positive number"),
    "epochs": (lambda v: v >= 1, "a positive integer"),
    "max_steps": (lambda v: v >= 1, "a positive integer"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "retain_weight": (lambda v: v >= 0, "a number >= 0"),
    "beta": (lambda v: v > 0, "a positive number"),
    "pseudo_min_prob": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "mode": (lambda v: v in ("sample", "token"), "'sample' or 'token'"),
    "loss": (lambda v: v in ("ascent", "pseudo"), "'ascent' or 'pseudo'"),
}


def defaults() -> dict[str, Any]:
    return {**dataclasses.asdict(LMSetup()), "seed": 0, "quiet": False,
            "compare": {"seeds": [0], "methods": list(ALL_METHODS)},
            "methods": {m: {} for m in METHODS}}


@dataclass
class LMConfig:
    """The resolved LM job configuration and the TOML text it came from (if any)."""

    data: dict = field(default_factory=defaults)
    text: str | None = None

    def __getitem__(self, key: str):
        return self.data[key]

    def setup(self) -> LMSetup:
        return LMSetup(**{k: self.data[k] for k in SETUP_KEYS})

    def hyper(self) -> dict[str, dict]:
        return copy.deepcopy(self.data["methods"])


def _merge(cfg: dict, over: dict) -> None:
    for k, v in over.items():
        if k in ("compare", "methods"):
            if not isinstance(v, dict):
                raise ConfigError(f"config key {k!r} must be a table")
            for kk, vv in v.items():
                if k == "compare" and kk not in cfg["compare"]:
                    raise ConfigError(f"unknown config key 'compare.{kk}' (allowed here:"
                                      f" {', '.join(cfg['compare'])})")
                if k == "methods":
                    if kk not in METHODS:
                        raise ConfigError(f"[methods.{kk}]: unknown LM method; choose from"
                                          f" {sorted(METHODS)}")
                    if not isinstance(vv, dict):
                        raise ConfigError(f"config key 'methods.{kk}' must be a table")
                    cfg["methods"][kk].update(vv)
                else:
                    cfg["compare"][kk] = vv
        elif k not in cfg:
            raise ConfigError(f"unknown config key {k!r} (allowed: "
                              f"{', '.join(sorted(x for x in cfg if x not in ('compare', 'methods')))},"
                              " [compare], [methods.<name>])")
        else:
            cfg[k] = v


def build(file: str | os.PathLike | None = None, flags: dict | None = None) -> LMConfig:
    """Defaults, then ``file`` (TOML), then ``flags`` (config key -> value; None = unset);
    validated."""
    cfg = LMConfig()
    if file is not None:
        _merge(cfg.data, load_toml(file))
        with open(file, encoding="utf-8") as f:
            cfg.text = f.read()
    for k, v in (flags or {}).items():
        if v is None or (k == "quiet" and v is False):
            continue
        if k in ("seeds", "methods"):
            cfg.data["compare"][k] = v
        else:
            cfg.data[k] = v
    validate(cfg)
    return cfg


def _int(cfg: dict, key: str, lo: int, allow_none: bool = False) -> None:
    v = cfg[key]
    if v is None and allow_none:
        return
    if not is_int(v) or v < lo:
        raise ConfigError(f"{key} must be an integer >= {lo}, got {v!r}")


def validate(cfg: LMConfig) -> None:
    """Every value's type and range, the methods and their hyperparameters."""
    d = cfg.data
    if not isinstance(d["size"], str) or d["size"] not in CORPUS_SIZES:
        raise ConfigError(f"size must be one of {sorted(CORPUS_SIZES)}, got {d['size']!r}")
    ff = d["forget_fraction"]
    if not is_number(ff) or not 0 < ff < 1:
        raise ConfigError(f"forget_fraction must be a number in (0, 1), got {ff!r}")
    for key, lo in (("epochs", 1), ("batch_size", 1), ("retain_batch_size", 1),
                    ("eval_batch_size", 1), ("data_seed", 0), ("seed", 0)):
        _int(d, key, lo)
    _int(d, "max_steps", 1, allow_none=True)
    _int(d, "threads", 1, allow_none=True)
    try:
        parse_rule(d["rule"])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"rule: {exc}") from None
    if not isinstance(d["basis_method"], str) or d["basis_method"] not in ("fast", "eigh"):
        raise ConfigError(f"basis_method must be 'fast' or 'eigh', got {d['basis_method']!r}")
    if not isinstance(d["device"], str) or (d["device"] not in ("cpu", "cuda")
                                            and not d["device"].startswith("cuda:")):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {d['device']!r}")
    if not isinstance(d["quiet"], bool):
        raise ConfigError(f"quiet must be true or false, got {d['quiet']!r}")
    if d["cache_dir"] is not None and (not isinstance(d["cache_dir"], str)
                                       or not d["cache_dir"]):
        raise ConfigError(f"cache_dir must be a directory path (a string), got"
                          f" {d['cache_dir']!r}")
    seeds, methods = d["compare"]["seeds"], d["compare"]["methods"]
    if not isinstance(seeds, list) or not seeds or any(
            not is_int(s) or s < 0 for s in seeds):
        raise ConfigError(f"compare.seeds must be a non-empty list of integers >= 0, got"
                          f" {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"compare.seeds lists a seed twice: {seeds}")
    if not isinstance(methods, list) or not methods or \
            not all(isinstance(m, str) for m in methods):
        raise ConfigError(f"compare.methods must be a non-empty list of method names, got"
                          f" {methods!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown LM method(s) {bad}; choose from {sorted(METHODS)}")
    for name, hp in d["methods"].items():
        check_hyperparameters(METHODS, name, hp, HP_RANGES)
