"""Backend registry: which implementation of each op runs for a given call.

Backends are modules that register implementations when imported; they are imported lazily,
on the first call that needs them, so ``import unsc_fast`` never pays for Triton or a compiled
extension it does not use. A backend that fails to import is recorded as unavailable, with
the reason, and the call falls back to the reference with a one-time warning.

Selection, first match wins:
1. the ``backend=`` argument of the call;
2. the ``UNSC_FAST_BACKEND`` environment variable;
3. ``auto``: the measured table ``tuned.json`` (written by ``python -m benchmarks.tune``),
   else on CPU the compiled backend, else the reference (on CUDA: the reference until the
   table has a measured "cuda" row).
"""
from __future__ import annotations

import importlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

# Each op's implementations carry its name: ``reference.<op>_``, ``kernels/cpp.py``
# (csrc/cpu/<op>.cpp), ``kernels/cuda.py`` (csrc/cuda/<op>.cu), ``kernels/triton/<op>.py``.
OPS = ("accumulate", "accumulate_conv", "project_grads")
BACKENDS = ("reference", "cpp", "cuda", "triton")
ENV_VAR = "UNSC_FAST_BACKEND"

# The reference registers nothing itself (it stays plain math): its function for op ``o`` is
# ``unsc_fast.reference.<o>_``, registered here on first use.
_MODULES = {
    "reference": "unsc_fast.reference",
    "cpp": "unsc_fast.kernels.cpp",
    "cuda": "unsc_fast.kernels.cuda",
    "triton": "unsc_fast.kernels.triton.backend",
}
# Without a measured table entry: the compiled backend first, the reference last. On CUDA the
# reference (cuBLAS) until a GPU run of benchmarks/gpu.sh has checked and timed the CUDA and
# Triton kernels and `benchmarks.tune` has written the "cuda" row of tuned.json: `auto` never
# runs kernels that were not measured on that device kind. backend="cuda"/"triton" opt in.
_DEFAULT_ORDER = {
    "cpu": ("cpp", "reference"),
    "cuda": ("reference",),
}
_TUNED_PATH = Path(__file__).with_name("tuned.json")


@dataclass(frozen=True)
class Impl:
    fn: Callable
    devices: tuple[str, ...]
    supports: Callable[..., bool] | None = None

    def accepts(self, device_type: str, args: tuple) -> bool:
        return device_type in self.devices and (self.supports is None or self.supports(*args))


_registry: dict[tuple[str, str], Impl] = {}
_load_errors: dict[str, str] = {}
_loaded: set[str] = set()
_warned: set[tuple[str, str]] = set()
_tuned: dict | None = None


def register(op: str, backend: str, devices: tuple[str, ...] = ("cpu", "cuda"),
             supports: Callable[..., bool] | None = None) -> Callable[[Callable], Callable]:
    """Decorator a backend module uses to offer an implementation of ``op``.

    ``supports(*args)`` may decline calls the backend does not handle (e.g. a padding mode);
    ``auto`` then moves on to the next backend, and a forced backend raises.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends are {BACKENDS}")

    def deco(fn: Callable) -> Callable:
        _registry[(op, backend)] = Impl(fn, tuple(devices), supports)
        return fn
    return deco


def _load(backend: str) -> bool:
    if backend not in _loaded and backend not in _load_errors:
        try:
            module = importlib.import_module(_MODULES[backend])
            if backend == "reference":
                for op in OPS:
                    register(op, "reference")(getattr(module, op + "_"))
            _loaded.add(backend)
        except Exception as exc:  # an optional backend must never break the package
            _load_errors[backend] = f"{type(exc).__name__}: {exc}"
    return backend in _loaded


def availability() -> dict[str, str]:
    """Each backend's state: 'available' or the reason it could not be loaded."""
    return {b: ("available" if _load(b) else _load_errors[b]) for b in BACKENDS}


def _tuned_choice(op: str, device_type: str) -> str | None:
    global _tuned
    if _tuned is None:
        try:
            _tuned = json.loads(_TUNED_PATH.read_text())
        except (OSError, ValueError):
            _tuned = {}
    return _tuned.get(device_type, {}).get(op)


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: ``backend``, else ``$UNSC_FAST_BACKEND``, else ``"auto"``
    (lower-cased; an unknown name is a ValueError)."""
    name = (backend or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {('auto',) + BACKENDS}"
                         f" (argument backend= or ${ENV_VAR})")
    return name


def resolve(op: str, device: torch.device, args: tuple = (), backend: str | None = None
            ) -> tuple[str, Callable]:
    """The backend name and function that run ``op`` on ``device`` for these arguments."""
    name = requested_backend(backend)
    dtype = device.type
    if name != "auto":
        if not _load(name):
            raise RuntimeError(f"backend {name!r} is not available: {_load_errors[name]}")
        impl = _registry.get((op, name))
        if impl is None or dtype not in impl.devices:
            raise RuntimeError(f"backend {name!r} has no {op!r} for device {dtype!r}")
        if not impl.accepts(dtype, args):
            raise RuntimeError(f"backend {name!r} does not support this {op!r} call"
                               " (see its docstring); use backend='reference'")
        return name, impl.fn

    tuned = _tuned_choice(op, dtype)
    if tuned == "reference":  # measured fastest: no warning, no fallback story
        _load("reference")
        return "reference", _registry[(op, "reference")].fn
    order = ((tuned,) if tuned else ()) + _DEFAULT_ORDER.get(dtype, ("reference",))
    for cand in order:
        if cand == "reference" or not _load(cand):
            continue
        impl = _registry.get((op, cand))
        if impl is not None and impl.accepts(dtype, args):
            return cand, impl.fn
    preferred = order[0]
    if preferred != "reference" and (op, dtype) not in _warned:
        _warned.add((op, dtype))
        why = _load_errors.get(preferred, "it does not support this call")
        warnings.warn(f"unsc_fast: {op!r} on {dtype} runs the reference implementation"
                      f" because backend {preferred!r} is unavailable ({why})", stacklevel=3)
    _load("reference")
    return "reference", _registry[(op, "reference")].fn
