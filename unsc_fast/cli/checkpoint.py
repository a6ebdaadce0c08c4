"""Model checkpoints, saved second moments and saved bases, with the metadata to check them.

Format by extension: ``*.safetensors`` (tensors plus a JSON metadata entry ``unsc_fast``) or
``*.pt`` / ``*.pth`` / ``*.ckpt`` / ``*.bin`` (``torch.save`` of a dict, loaded with
``weights_only=True``). Every file is written atomically (a temporary name, then a rename).

A checkpoint's metadata names the model (name, width, input shape, classes) so it can be
rebuilt; statistics and bases record the fingerprint of the checkpoint they were computed
from and the scenario (which D_r), so a mismatch is an error, not a silently wrong result.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_save

CHECKPOINT_FORMAT = "unsc_fast.checkpoint/1"
STATS_FORMAT = "unsc_fast.stats/1"
TORCH_EXTS = (".pt", ".pth", ".ckpt", ".bin")


class CheckpointError(ValueError):
    """A checkpoint, statistics or bases file that is missing, unreadable or mismatched."""


def file_format(path: str | os.PathLike) -> str:
    """``"safetensors"`` or ``"torch"`` from the extension; an error for anything else."""
    s = str(path)
    if s.endswith(".safetensors"):
        return "safetensors"
    if s.endswith(TORCH_EXTS):
        return "torch"
    raise CheckpointError(f"{s!r}: unknown file extension; use .safetensors or one of"
                          f" {', '.join(TORCH_EXTS)}")


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is an existing file; a clear error naming ``what`` if not."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} not found")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(p)!r} is not a file")
    return p


def fingerprint(model: nn.Module) -> str:
    """A short hash of a model's state (names, shapes, values)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()[:16]


# -- generic tensor + metadata files ---------------------------------------------------------

def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict,
                 outputs=None) -> Path:
    """Write ``tensors`` and ``meta``; atomically, or staged in ``outputs`` (an
    :class:`~unsc_fast.io.Outputs`) to appear with the command's other outputs."""
    fmt = file_format(path)
    atomic_save = _writer(outputs)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    if fmt == "safetensors":
        from safetensors.torch import save
        blob = save(tensors, metadata={"unsc_fast": json.dumps(meta)})
        return atomic_save(path, lambda f: f.write(blob))
    return atomic_save(path, lambda f: torch.save({"tensors": tensors, "unsc_fast": meta}, f))


def _writer(outputs):
    return atomic_save if outputs is None else outputs.stage


def load_tensors(path: str | os.PathLike, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    p = require_file(path, what)
    fmt = file_format(p)
    try:
        if fmt == "safetensors":
            from safetensors import safe_open
            with safe_open(str(p), framework="pt") as f:
                md = f.metadata() or {}
                raw = None if "unsc_fast_job" in md else md.get("unsc_fast")   # bases: no
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(raw) if raw is not None else None
        else:
            blob = torch.load(p, map_location="cpu", weights_only=True)
            meta = blob.get("unsc_fast") if isinstance(blob, dict) else None
            tensors = blob.get("tensors") if isinstance(blob, dict) else None
    except Exception as exc:  # corrupt file: safetensors, pickle and zip raise many types
        raise CheckpointError(f"{what} {str(p)!r} cannot be read as a {fmt} file"
                              f" (corrupt or not written by unsc-fast?):"
                              f" {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(tensors, dict):
        if _is_bases_file(p, fmt):
            raise CheckpointError(f"{str(p)!r} holds bases (from --bases-out), not a {what};"
                                  " pass it as --bases")
        raise CheckpointError(f"{what} {str(p)!r} is not an unsc_fast file (no metadata)")
    return tensors, meta


def _is_bases_file(p: Path, fmt: str) -> bool:
    try:
        if fmt == "safetensors":
            from safetensors import safe_open
            with safe_open(str(p), framework="pt") as f:
                return "unsc_fast_job" in (f.metadata() or {})
        blob = torch.load(p, map_location="cpu", weights_only=True)
        return isinstance(blob, dict) and "meta" in blob and "tensors" in blob
    except Exception:
        return False


def _holds(meta: dict) -> str:
    """What an unsc_fast file holds, and where it goes on the command line."""
    if "format" not in meta and meta and all(
            isinstance(v, dict) and "subtract" in v for v in meta.values()):
        return "bases (NullSpace.save or --bases-out; pass it as --bases)"
    return {CHECKPOINT_FORMAT: "a model checkpoint (pass it as --checkpoint)",
            STATS_FORMAT: "second moments from `stats` (pass it as --stats)"}.get(
        meta.get("format"), f"format {meta.get('format')!r}")


# -- model checkpoints -----------------------------------------------------------------------

def model_meta(model_name: str, width: float, input_shape, num_classes: int, dataset: str,
               **extra) -> dict:
    return {"format": CHECKPOINT_FORMAT, "model": model_name, "width": float(width),
            "input_shape": [int(s) for s in input_shape], "num_classes": int(num_classes),
            "dataset": dataset, **extra}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict, outputs=None
                    ) -> Path:
    """Save ``model``'s state and ``meta`` (see :func:`model_meta`) atomically."""
    meta = {**meta, "fingerprint": fingerprint(model)}
    return save_tensors(path, model.state_dict(), meta, outputs)


def load_checkpoint(path: str | os.PathLike, device: str = "cpu"
                    ) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model, meta)."""
    from ..lab.models import build_model
    tensors, meta = load_tensors(path, "checkpoint")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a model checkpoint: it holds"
                              f" {_holds(meta)}")
    try:
        model = build_model(meta["model"], tuple(meta["input_shape"]), meta["num_classes"],
                            meta.get("width", 1.0))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot rebuild its model: {exc}"
                              ) from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"checkpoint {str(path)!r} does not match model"
                              f" {meta['model']!r}: {' '.join(first[:3])}") from None
    return model.to(device).eval(), meta


# -- second moments --------------------------------------------------------------------------

def save_moments(path: str | os.PathLike, moments, meta: dict, outputs=None) -> Path:
    """Save a :class:`~unsc_fast.SecondMoments` (upper-triangular S, n, column sums)."""
    tensors, layers = {}, {}
    for name, lm in moments.moments.items():
        tensors[f"{name}/S"] = torch.triu(lm.S)
        if lm.colsum is not None:
            tensors[f"{name}/colsum"] = lm.colsum
        layers[name] = {"kind": lm.kind, "n": int(lm.n), "shape": list(lm.S.shape)}
    meta = {**meta, "format": STATS_FORMAT, "layers": layers,
            "include_bias": bool(moments.include_bias), "dtype": str(moments.dtype)}
    return save_tensors(path, tensors, meta, outputs)


def load_moments(path: str | os.PathLike, model: nn.Module, backend: str | None = None):
    """(SecondMoments for ``model``, metadata) from a file of :func:`save_moments`."""
    from ..stats import SecondMoments
    tensors, meta = load_tensors(path, "statistics file")
    if meta.get("format") != STATS_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a statistics file: it holds"
                              f" {_holds(meta)}")
    dtype = torch.float64 if meta.get("dtype") == "torch.float64" else torch.float32
    moments = SecondMoments(model, dtype=dtype, include_bias=meta.get("include_bias", False),
                            backend=backend)
    state = {}
    for name, info in meta["layers"].items():
        if f"{name}/S" not in tensors:
            raise CheckpointError(f"statistics file {str(path)!r} lacks layer {name!r}")
        state[name] = {"kind": info["kind"], "S": tensors[f"{name}/S"], "n": info["n"],
                       "colsum": tensors.get(f"{name}/colsum")}
    try:
        moments.load_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"statistics file {str(path)!r} does not fit the model: {exc}"
                              ) from None
    return moments, meta


# -- bases -----------------------------------------------------------------------------------

def save_bases(path: str | os.PathLike, bases, job: dict, outputs=None) -> Path:
    """Save a :class:`~unsc_fast.NullSpace` readable by ``NullSpace.load``, plus job metadata."""
    file_format(path)
    atomic_save = _writer(outputs)
    tensors, meta = bases.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save
        blob = save(tensors, metadata={"unsc_fast": json.dumps(meta),
                                       "unsc_fast_job": json.dumps(job)})
        return atomic_save(path, lambda f: f.write(blob))
    return atomic_save(path, lambda f: torch.save({"tensors": tensors, "meta": meta,
                                                   "job": job}, f))


def load_bases(path: str | os.PathLike, model: nn.Module):
    """(NullSpace, job metadata or {}) and a check that the bases fit ``model``'s layers."""
    from ..bases import NullSpace
    p = require_file(path, "bases file")
    file_format(p)
    try:
        bases = NullSpace.load(p)
        if str(p).endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(str(p), framework="pt") as f:
                job = json.loads((f.metadata() or {}).get("unsc_fast_job", "{}"))
        else:
            job = torch.load(p, map_location="cpu", weights_only=True).get("job") or {}
    except Exception as exc:
        try:
            other = _holds(load_tensors(p, "bases file")[1])
        except CheckpointError:
            other = None
        if other is not None:
            raise CheckpointError(f"{str(p)!r} is not a bases file: it holds {other}") from None
        raise CheckpointError(f"bases file {str(p)!r} cannot be read: {exc}") from None
    try:
        bases.check(model)
    except (KeyError, TypeError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CheckpointError(f"bases file {str(p)!r} does not fit the model: {msg}") from None
    return bases, job
