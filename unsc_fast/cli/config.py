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

from . import hyper
from .errors import ConfigError

# what a compare runs unless told otherwise
DEFAULT_METHODS = ("original", "retrain", "unsc", "finetune", "grad_ascent", "random_labels",
                   "random_labels_proj", "boundary_shrink", "salun")
# every method a config may name: the defaults and the reseeded retrain (the noise floor of
# the gaps, not a way to forget; it costs one more training per seed)
METHOD_NAMES = DEFAULT_METHODS + ("retrain_reseeded",)

DEFAULTS: dict[str, Any] = {
    "dataset": "mnist5k",        # see unsc_fast.lab.data.dataset_names()
    "data_root": None,           # directory of local files (fashion_mnist, cifar10, ...)
    "data_seed": 0,              # train/test split of built-in data, k-means, random picks
    "model": "small_cnn",        # see unsc_fast.lab.models.MODELS
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
        "stats_dtype": "float32",  # float64 keeps layers whose inputs are tiny (< 2^-60)
        # "paper", or "sample": sample-level forgetting calibrated to held-out data (the
        # `holdout_share` of the test split outside its forget part); subclass/random only.
        # calibration (sample mode): match held-out samples by "proximity" to D_r or "class"
        "mode": "paper", "holdout_share": 0.5, "calibration": "proximity",
    },
    "evaluate": {"batch_size": 512, "mia": True, "mia_feature": "confidence"},
    "compare": {
        "methods": list(DEFAULT_METHODS),
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
    "include_bias": "unlearn.include_bias", "stats_dtype": "unlearn.stats_dtype",
    "mia_feature": "evaluate.mia_feature", "no_mia": "evaluate.mia",
    "methods": "compare.methods", "seeds": "compare.seeds",
}


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
    """The resolved configuration and the set of dotted keys set explicitly (file or flag);
    ``flags`` holds those set by a command-line flag."""

    data: dict = field(default_factory=lambda: copy.deepcopy(DEFAULTS))
    explicit: set[str] = field(default_factory=set)
    source: str | None = None
    flags: set[str] = field(default_factory=set)

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
    from_flags: set[str] = set()
    for dest, value in (flags or {}).items():
        if value is None or dest not in FLAG_KEYS:
            continue
        if dest == "no_mia":
            if value:
                cfg.set("evaluate.mia", False)
                from_flags.add("evaluate.mia")
            continue
        if dest in ("quiet", "include_bias") and value is False:
            continue
        cfg.set(FLAG_KEYS[dest], value)
        from_flags.add(FLAG_KEYS[dest])
    _resolve_scenario_flags(cfg, from_flags)
    cfg.flags = from_flags
    validate(cfg)
    return cfg


_FLAG_OF = {key: "--" + dest.replace("_", "-") for dest, key in FLAG_KEYS.items()}
_FLAG_OF["scenario.kind"] = "--scenario"


def _resolve_scenario_flags(cfg: Config, from_flags: set[str]) -> None:
    """Scenario flags that contradict each other are errors; a flag beats the file.

    ``--count`` and ``--fraction`` are one setting: a flag replaces the file's other one.
    A flag that the chosen scenario kind does not use (``--count`` with ``class``) is an
    error rather than silently ignored.
    """
    sc = cfg.data["scenario"]
    for key, other in (("count", "fraction"), ("fraction", "count")):
        if f"scenario.{key}" in from_flags and f"scenario.{other}" not in from_flags:
            sc[other] = None
            cfg.explicit.discard(f"scenario.{other}")
    if sc.get("count") is not None and sc.get("fraction") is not None:
        raise ConfigError("give the random scenario's size once: --count N or --fraction F"
                          " (scenario.count or scenario.fraction), not both")
    kind = sc.get("kind")
    uses = {"class": {"classes"}, "classes": {"classes"},
            "subclass": {"classes", "k", "cluster"}, "random": {"count", "fraction"}}
    if kind in uses:
        unused = [k for k in ("classes", "k", "cluster", "count", "fraction")
                  if f"scenario.{k}" in from_flags and k not in uses[kind]]
        if unused:
            flags = " ".join(_FLAG_OF[f"scenario.{k}"] for k in unused)
            raise ConfigError(f"{flags} does not apply to the {kind!r} scenario; drop it or"
                              " choose the scenario it belongs to with --scenario")


def _label(key: str) -> str:
    """A config key and the flag that sets it: ``unlearn.epochs (--epochs)``."""
    return f"{key} ({_FLAG_OF[key]})" if key in _FLAG_OF else key


def validate(cfg: Config) -> None:
    """Type and range checks that need no data (clear messages before any work)."""
    def positive_int(key, optional=False):
        v = cfg[key]
        if optional and v is None:
            return
        if not hyper.is_int(v) or v < 1:
            raise ConfigError(f"{_label(key)} must be a positive integer, got {v!r}")

    def non_negative_int(key):
        v = cfg[key]
        if not hyper.is_int(v) or v < 0:
            raise ConfigError(f"{_label(key)} must be a non-negative integer, got {v!r}")

    def positive(key):
        v = cfg[key]
        if not hyper.is_number(v) or not v > 0:
            raise ConfigError(f"{_label(key)} must be a positive (finite) number, got {v!r}")

    def boolean(key):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{_label(key)} must be true or false, got {cfg[key]!r}")

    def string(key, optional=False, choices=None):
        v = cfg[key]
        if optional and v is None:
            return
        if not isinstance(v, str):
            raise ConfigError(f"{_label(key)} must be a string, got {v!r}")
        if choices is not None and v not in choices:
            raise ConfigError(f"{_label(key)} must be one of {list(choices)}, got {v!r}")

    for key in ("dataset", "model", "device", "unlearn.rule"):
        string(key)
    string("data_root", optional=True)
    string("backend", optional=True)
    string("scenario.kind", choices=("class", "classes", "subclass", "random"))
    string("train.optimizer", choices=("adam", "sgd"))
    string("evaluate.mia_feature", choices=("confidence", "entropy", "both"))
    string("unlearn.mode", choices=("paper", "sample"))
    string("unlearn.calibration", choices=("proximity", "class"))
    string("unlearn.stats_dtype", choices=("float32", "float64"))
    share = cfg["unlearn.holdout_share"]
    if not (hyper.is_number(share) and 0 < share <= 1):
        raise ConfigError(f"{_label('unlearn.holdout_share')} must be a number in (0, 1],"
                          f" got {share!r}")
    if cfg["unlearn.mode"] == "sample" and cfg["scenario.kind"] not in ("subclass", "random"):
        raise ConfigError(f"{_label('unlearn.mode')} 'sample' is for the subclass and random"
                          f" scenarios, not {cfg['scenario.kind']!r}")
    for key in ("quiet", "unlearn.include_bias", "evaluate.mia"):
        boolean(key)
    for key in ("train.batch_size", "unlearn.batch_size", "evaluate.batch_size",
                "train.epochs", "unlearn.epochs"):
        positive_int(key)
    for key in ("scenario.count", "unlearn.max_retain_samples"):
        positive_int(key, optional=True)
    for key in ("seed", "data_seed", "scenario.cluster"):
        non_negative_int(key)
    if not hyper.is_int(cfg["scenario.k"]) or cfg["scenario.k"] < 2:
        raise ConfigError(f"{_label('scenario.k')} must be an integer >= 2,"
                          f" got {cfg['scenario.k']!r}")
    for key in ("train.lr", "unlearn.lr", "width"):
        positive(key)
    frac = cfg["scenario.fraction"]
    if frac is not None and not (hyper.is_number(frac) and 0 < frac < 1):
        raise ConfigError(f"{_label('scenario.fraction')} must be a number in (0, 1),"
                          f" got {frac!r}")
    wd, mom = cfg["train.weight_decay"], cfg["train.momentum"]
    if not hyper.is_number(wd) or wd < 0:
        raise ConfigError(f"{_label('train.weight_decay')} must be a number >= 0, got {wd!r}")
    if not hyper.is_number(mom) or not 0 <= mom < 1:
        raise ConfigError(f"{_label('train.momentum')} must be a number in [0, 1), got {mom!r}")
    classes = cfg["scenario.classes"]
    if not isinstance(classes, list) or not all(hyper.is_int(c) for c in classes):
        raise ConfigError(f"{_label('scenario.classes')} must be a list of integers,"
                          f" got {classes!r}")
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise ConfigError(f"{_label('scenario.classes')} lists class(es) {dup} more than once")
    cfg.data["scenario"]["classes"] = sorted(classes)   # one D_r, one spelling
    if cfg["scenario.kind"] == "class" and cfg.is_set("scenario.kind") and len(classes) > 1:
        raise ConfigError(f"the 'class' scenario forgets one class, got {sorted(classes)};"
                          " use --scenario classes (or leave --scenario out)")
    seeds = cfg["compare.seeds"]
    if not isinstance(seeds, list) or not seeds or not all(
            hyper.is_int(s) and s >= 0 for s in seeds):
        raise ConfigError(f"{_label('compare.seeds')} must be a non-empty list of integers"
                          f" >= 0, got {seeds!r}")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"{_label('compare.seeds')} lists seed(s)"
                          f" {sorted({x for x in seeds if seeds.count(x) > 1})} more than once:"
                          " a repeated seed would count one run twice in the mean")
    methods = cfg["compare.methods"]
    if not isinstance(methods, list) or not methods:
        raise ConfigError(f"{_label('compare.methods')} must be a non-empty list, got {methods!r}")
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {list(METHOD_NAMES)}")
    for name, hp in cfg["methods"].items():
        if name not in METHOD_NAMES:
            raise ConfigError(f"[methods.{name}]: unknown method; choose from"
                              f" {list(METHOD_NAMES)}")
        if not isinstance(hp, dict):
            raise ConfigError(f"[methods.{name}] must be a table")
        check_hyperparameters(name, hp)
    from ..bases import parse_rule
    try:
        parse_rule(cfg["unlearn.rule"])
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    from ..dispatch import requested_backend
    try:
        requested_backend(cfg["backend"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# Ranges of the hyperparameters the methods share (types come from their annotations).
_HP_RANGES = {
    "lr": (lambda v: v > 0, "a positive number"),
    "epochs": (lambda v: v >= 1, "a positive integer"),
    "batch_size": (lambda v: v >= 1, "a positive integer"),
    "max_retain_samples": (lambda v: v >= 1, "a positive integer"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "retain_weight": (lambda v: v >= 0, "a number >= 0"),
    "eps": (lambda v: v > 0, "a positive number"),
    "sparsity": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
}


def check_hyperparameters(method: str, hp: dict) -> None:
    """Names, types and ranges of ``[methods.<method>]`` against the method's signature."""
    from ..lab.baselines import METHODS
    hyper.check_hyperparameters(METHODS, method, hp, _HP_RANGES)
