"""Training the LM (the original model, and the retrain-from-scratch reference) and a cache
of trained models.

The original model is trained on retain + forget until it has memorised the answers; the
retrained reference is the same recipe on retain only. A cache directory holds the model,
the tokenizer (``save_pretrained``) and ``made.json`` (how it was made), written atomically.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from ... import helpers, io
from .data import quiet_hf
from .metrics import answer_accuracy

MADE = "made.json"

#: Training recipes per named size (see :data:`.model.MODEL_SIZES` and
#: :data:`.corpus.CORPUS_SIZES`), measured on 2 busy CPU cores with ``threads=1``: default
#: 99.98 % answer-token accuracy on the training questions in about 65 s, demo 100 % in
#: about 13 s.
RECIPES: dict[str, dict] = {
    "default": {"epochs": 8, "lr": 5e-3, "batch_size": 64},
    "demo": {"epochs": 12, "lr": 5e-3, "batch_size": 32},
    "tiny": {"epochs": 40, "lr": 1e-2, "batch_size": 16},
}


def lr_schedule(step: int, total: int, warmup: int) -> float:
    """The learning-rate factor at ``step``: linear warm-up over ``warmup`` steps, then a
    cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def train_lm(model: torch.nn.Module, data: Iterable[dict], *, epochs: int = 10,
             lr: float = 3e-3, weight_decay: float = 0.0, warmup: float = 0.05,
             grad_clip: float | None = 1.0, progress: bool = True, desc: str = "training LM",
             threads: int | None = None) -> torch.nn.Module:
    """Train ``model`` in place on contract batches (the causal-LM loss on labelled tokens)
    with AdamW and a warm-up + cosine schedule over ``epochs`` passes; returns it in eval
    mode. ``data`` must be re-iterable (a DataLoader). Serves both the original model
    (retain + forget) and the retrain reference (retain only, from fresh weights).

    ``threads`` sets torch's intra-op thread count for the run (restored after): on a busy
    CPU, 2 threads on these small matrices were measured 100x slower per step than 1 (the
    threads wait for each other at every op), on an idle one 1.4x faster."""
    device = helpers.model_device(model)
    n_batches = len(data) if hasattr(data, "__len__") else None
    if n_batches is None:
        raise TypeError("train_lm needs data with a length (a DataLoader or a list)")
    total = epochs * n_batches
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_schedule(s, total, max(1, int(warmup * total))))
    model.train()
    with _num_threads(threads), helpers.progress(range(epochs), progress, desc) as bar:
        for _ in bar:
            for batch in data:
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = model(**batch).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                sched.step()
            if progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@contextlib.contextmanager
def _num_threads(n: int | None):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def write_lm(directory: Path, model, tokenizer, made: dict) -> None:
    """Write ``model`` and ``tokenizer`` (``save_pretrained``) and ``made`` (JSON) into the
    existing ``directory`` (a staging directory: see :func:`save_lm`)."""
    with quiet_hf():
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (Path(directory) / MADE).write_text(json.dumps(made, indent=1, sort_keys=True) + "\n")


def save_lm(directory: str | os.PathLike, model, tokenizer, made: dict,
            outputs: io.Outputs | None = None) -> Path:
    """Save ``model``, ``tokenizer`` and ``made`` into ``directory``, all or nothing: written
    into a temporary directory beside it, renamed into place (an old directory is replaced
    only once the new one is complete). With ``outputs``, staged there, to appear with the
    command's other outputs at its commit."""
    target = Path(directory)
    if outputs is not None:
        return outputs.stage_dir(target, lambda d: write_lm(d, model, tokenizer, made))
    target.parent.mkdir(parents=True, exist_ok=True)
    with io.Outputs() as tx:
        tx.plan(target, directory=True)
        tx.stage_dir(target, lambda d: write_lm(d, model, tokenizer, made))
        tx.commit()
    return target


def load_lm(directory: str | os.PathLike):
    """``(model, tokenizer, made)`` from a directory written by :func:`save_lm`."""
    import transformers

    d = Path(directory)
    if not (d / MADE).is_file():
        raise FileNotFoundError(f"{str(d)!r} holds no cached LM (no {MADE})")
    tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
    with quiet_hf():
        model = transformers.AutoModelForCausalLM.from_pretrained(d, local_files_only=True)
    return model.eval(), tok, json.loads((d / MADE).read_text())


def trained_lm(task, size: str = "default", *, retain_only: bool = False, seed: int = 0,
               cache_dir: str | os.PathLike | None = None, progress: bool = True,
               recipe: dict | None = None, made: dict | None = None,
               threads: int | None = None):
    """The original model (trained on ``task.train``) or, with ``retain_only``, the retrained
    reference (``task.retain``) of a named size, from ``cache_dir`` if it holds one made the
    same way, else trained (and cached there). Returns ``(model, info)``; ``info`` is the
    ``made.json`` content: seed, size, recipe, data sizes, answer-token accuracy on the
    training questions, wall time, versions. ``threads``: see :func:`train_lm`. ``made``
    adds keys that identify the task to those of ``task.info`` (the corpus arguments of a
    built-in task): a cache entry is reused only if they all match."""
    from .model import build_model, count_params

    if size not in RECIPES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(RECIPES)}")
    rec = {**RECIPES[size], **(recipe or {})}
    pairs = task.retain if retain_only else task.train
    key = {"size": size, "seed": seed, "retain_only": retain_only, "recipe": rec,
           "n_pairs": len(pairs), "vocab": len(task.tokenizer),
           **getattr(task, "info", {}), **(made or {})}
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"lm-{size}-{'retrain' if retain_only else 'original'}-s{seed}"
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
            model, _, info = load_lm(path)
            if {k: info[k] for k in key} == json.loads(json.dumps(key)):
                return model, info
    model = build_model(task.tokenizer, size, seed=seed)
    loader = task.loader("retain" if retain_only else "train", batch_size=rec["batch_size"],
                         shuffle=True, seed=seed)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        train_lm(model, loader, epochs=rec["epochs"], lr=rec["lr"], progress=progress,
                 threads=threads, desc="retraining LM" if retain_only else "training LM")
    wall = time.perf_counter() - t0
    acc = answer_accuracy(model, task.loader("retain" if retain_only else "train",
                                             batch_size=128))
    info = {**key, "train_accuracy": acc, "train_seconds": round(wall, 2),
            "params": count_params(model), "threads": threads or torch.get_num_threads(),
            "versions": helpers.versions("transformers", "tokenizers")}
    if path is not None:
        save_lm(path, model, task.tokenizer, info)
    return model, info
