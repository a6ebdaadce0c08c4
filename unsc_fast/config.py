"""Job configuration: built-in defaults, then a TOML file, then command-line flags.

A config is a nested dict (see ``DEFAULTS``); a TOML file holds any subset of it (unknown keys
are errors, so a typo never passes silently) and flags override single keys. ``Config``
remembers which keys were set explicitly (file or flag), so a checkpoint's own model and
dataset can fill in what the user left unset, and a conflict is reported instead.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

METHOD_NAMES = ("original", "retrain", "unsc", "finetune", "grad_ascent", "random_labels",
                "random_labels_proj", "boundary_shrink", "salun")

DEFAULTS: dict[str, Any] = {
    "dataset": "mnist5k",        # see unsc_fast.data.dataset_names()
    "data_root": None,           # directory of local files (fashion_mnist, cifar10, ...)
    "data_seed": 0,              # train/test split of built-in data, k-means, random picks
    "model": "small_cnn",        # see unsc_fast.models.MODELS
    "width": 1.0,                # channel / hidden-size multiplier
    "seed": 0,                   # model init, shuffling, dropout, random labels
    "device": "cpu",
    "backend": None,             # kernels: reference | cpp | cuda | triton | auto
    "quiet": False,              # no progress bars
    "scenario": {
        "kind": "class",         # class | classes | subclass | random
        "classes": [3],
        "k": 3, "cluster": 0,    # subclass: k-means clusters, which one (0 = largest)
        "count": None, "fraction": None,   # random: how many samples
    },
    "train": {                   # the original model and the retrain baseline
        "epochs": 4, "lr": 1e-3, "batch_size": 64, "optimizer": "adam",
        "weight_decay": 0.0, "momentum": 0.9,
    },
    "unlearn": {                 # UNSC (and the defaults of the D_f-based baselines)
        "lr": 0.04, "epochs": 20, "batch_size": 64, "rule": "energy:0.99",
        "max_retain_samples": None, "include_bias": False,
    },
    "evaluate": {"batch_size": 512, "mia": True, "mia_feature": "confidence"},
    "compare": {
        "methods": list(METHOD_NAMES),
        "seeds": [0],
    },
    # Per-method hyperparameters (keyword arguments of unsc_fast.baselines.<method>).
    "methods": {name: {} for name in METHOD_NAMES},
}

# flag dest -> dotted config key (flags not listed here are not config, e.g. paths)
FLAG_KEYS = {
    "dataset": "dataset", "data_root": "data_root", "data_seed": "data_seed",
    "model": "model", "width": "width", "seed": "seed", "device": "device",
    "backend": "backend", "quiet": "quiet",
    "scenario": "scenario.kind", "forget": "scenario.classes", "subclass_k": "scenario.k",
    "cluster": "scenario.cluster", "count": "scenario.count", "fraction": "scenario.fraction",
    "train_epochs": "train.epochs", "train_lr": "train.lr", "train_batch_size": "train.batch_size",
    "optimizer": "train.optimizer",
    "lr": "unlearn.lr", "epochs": "unlearn.epochs", "batch_size": "unlearn.batch_size",
    "rule": "unlearn.rule", "max_retain_samples": "unlearn.max_retain_samples",
    "include_bias": "unlearn.include_bias",
    "mia_feature": "evaluate.mia_feature", "no_mia": "evaluate.mia",
    "methods": "compare.methods", "seeds": "compare.seeds",
}


class ConfigError(ValueError):
    """A bad config file or value."""


def _get(d: dict, key: str):
    for part in key.split("."):
        d = d[part]
    return d


def _set(d: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        d = d[part]
    d[last] = value


def _merge(base: dict, over: dict, path: str, explicit: set[str]) -> None:
    for k, v in over.items():
        key = f"{path}{k}"
        if path == "methods.":
            # per-method hyperparameters: free-form, checked against the method's signature
            if k not in METHOD_NAMES:
                raise ConfigError(f"[{key}]: unknown method; choose from {list(METHOD_NAMES)}")
            if not isinstance(v, dict):
                raise ConfigError(f"config key {key!r} must be a table")
            base[k].update(v)
            explicit.update(f"{key}.{h}" for h in v)
        elif k not in base:
            allowed = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key {key!r} (allowed here: {allowed})")
        elif isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key {key!r} must be a table")
            _merge(base[k], v, key + ".", explicit)
        else:
            base[k] = v
            explicit.add(key)


@dataclass
class Config:
    """The resolved configuration and the set of dotted keys set explicitly."""

    data: dict = field(default_factory=lambda: copy.deepcopy(DEFAULTS))
    explicit: set[str] = field(default_factory=set)
    source: str | None = None

    def __getitem__(self, key: str):
        return _get(self.data, key)

    def set(self, key: str, value, explicit: bool = True) -> None:
        _set(self.data, key, value)
        if explicit:
            self.explicit.add(key)

    def is_set(self, key: str) -> bool:
        return key in self.explicit

    def as_dict(self) -> dict:
        return copy.deepcopy(self.data)


def load_toml(path: str | os.PathLike) -> dict:
    import tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise FileNotFoundError(f"config file {str(path)!r} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def build_config(file: str | os.PathLike | None = None, flags: dict | None = None) -> Config:
    """Defaults, then ``file`` (TOML), then ``flags`` (dest -> value; None means unset)."""
    cfg = Config()
    if file is not None:
        _merge(cfg.data, load_toml(file), "", cfg.explicit)
        cfg.source = str(file)
    for dest, value in (flags or {}).items():
        if value is None or dest not in FLAG_KEYS:
            continue
        if dest == "no_mia":
            if value:
                cfg.set("evaluate.mia", False)
            continue
        if dest in ("quiet", "include_bias") and value is False:
            continue
        cfg.set(FLAG_KEYS[dest], value)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Type and range checks that need no data (clear messages before any work)."""
    def positive_int(key):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{key} must be a positive integer, got {v!r}")

    def non_negative_int(key):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{key} must be a non-negative integer, got {v!r}")

    def positive(key):
        v = cfg[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ConfigError(f"{key} must be a positive number, got {v!r}")

    for key in ("train.batch_size", "unlearn.batch_size", "evaluate.batch_size"):
        positive_int(key)
    for key in ("train.epochs", "unlearn.epochs", "seed", "data_seed"):
        non_negative_int(key)
    for key in ("train.lr", "unlearn.lr", "width"):
        positive(key)
    classes = cfg["scenario.classes"]
    if not isinstance(classes, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in classes):
        raise ConfigError(f"scenario.classes must be a list of integers, got {classes!r}")
    seeds = cfg["compare.seeds"]
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"compare.seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    methods = cfg["compare.methods"]
    if not isinstance(methods, list) or not methods:
        raise ConfigError(f"compare.methods must be a non-empty list, got {methods!r}")
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {list(METHOD_NAMES)}")
    for name, hp in cfg["methods"].items():
        if name not in METHOD_NAMES:
            raise ConfigError(f"[methods.{name}]: unknown method; choose from"
                              f" {list(METHOD_NAMES)}")
        if not isinstance(hp, dict):
            raise ConfigError(f"[methods.{name}] must be a table")
    from .bases import parse_rule
    try:
        parse_rule(cfg["unlearn.rule"])
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
