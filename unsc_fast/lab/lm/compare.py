"""The LM comparison (issue #14): per seed, the original and the retrained model (cached),
every method on one budget, TOFU's metrics, and the tables.

The data seed fixes the corpus and its split (which authors are forgotten); the seed varies
the models' initialisation, the batch order and the methods' randomness, as in the image
job. Held-out authors are split in two halves: UNSC's calibration targets come from the
first, the metrics (holdout perplexity, membership attacks) from the second, so no metric
reads data a method saw.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..report import json_safe
from .corpus import CORPUS_SIZES, QAPair
from .data import QATask, make_loader, make_task, pad_id_of
from .methods import METHODS, LMTask, run_method
from .metrics import METRIC_KEYS, LMEvaluator
from .train import trained_lm

#: The methods of a full comparison, in table order.
ALL_METHODS: tuple[str, ...] = ("original", "retrain", "unsc", "grad_ascent", "grad_diff",
                                "npo", "idk", "idk_proj")

#: Columns of the summary table: (metric key, header, scale, better).
COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("forget_quality", "forget quality (KS p)", 1.0, "high"),
    ("model_utility", "model utility", 1.0, "high"),
    ("forget_acc", "forget acc %", 100.0, "retrain"),
    ("forget_prob", "forget prob", 1.0, "retrain"),
    ("forget_truth_ratio", "forget TR", 1.0, "retrain"),
    ("retain_acc", "retain acc %", 100.0, "high"),
    ("holdout_ppl", "holdout ppl", 1.0, "low"),
    ("mia_loss_auc", "loss-MIA AUC", 1.0, "retrain"),
    ("mia_mink_auc", "min-k MIA AUC", 1.0, "retrain"),
    ("gen_repeat_rate", "repeat rate", 1.0, "low"),
    ("gen_distinct_ratio", "distinct ratio", 1.0, "high"),
)


@dataclass
class LMSetup:
    """What one LM comparison runs on, besides the methods and seeds."""

    size: str = "default"            # corpus, model and training recipe: default | demo | tiny
    forget_fraction: float = 0.05    # share of the authors forgotten (TOFU: 5 % or 10 %)
    data_seed: int = 0               # the corpus and which authors are forgotten
    epochs: int = 5                  # the methods' budget: passes over the forget batches
    max_steps: int | None = None     # ... and an optional cap on steps
    batch_size: int = 16             # forget batches
    retain_batch_size: int = 32      # retain batches (statistics, retain terms)
    rule: str = "energy:0.99"        # UNSC's rank rule
    basis_method: str = "fast"       # "fast" or "eigh"
    cache_dir: str | None = None     # trained models, reused when made the same way
    device: str = "cpu"
    # torch threads of the job. 1 by default: these models are small, and 2 threads were
    # 1.4x faster on an idle 2-core machine but up to 100x slower on a busy one
    threads: int | None = 1
    eval_batch_size: int = 64


def build_task(setup: LMSetup) -> tuple[QATask, list[QAPair]]:
    """The evaluated task (its holdout: the metrics' half of the held-out authors) and the
    calibration pairs (the other half), all from ``setup.data_seed``."""
    if setup.size not in CORPUS_SIZES:
        raise ValueError(f"unknown size {setup.size!r}; choose from {sorted(CORPUS_SIZES)}")
    n = CORPUS_SIZES[setup.size]
    n_forget = min(n - 1, max(1, round(setup.forget_fraction * n)))
    task = make_task(setup.size, forget_fraction=setup.forget_fraction,
                     n_holdout=2 * n_forget, seed=setup.data_seed)
    calib, task.holdout = split_holdout(task.holdout)
    return task, calib


def split_holdout(pairs: Sequence[QAPair]) -> tuple[list[QAPair], list[QAPair]]:
    """Held-out pairs split by author: the first half of the authors (in corpus order) for
    calibration, the rest for the metrics."""
    names = list(dict.fromkeys(p.entity for p in pairs))
    first = set(names[:max(1, len(names) // 2)])
    return ([p for p in pairs if p.entity in first], [p for p in pairs if p.entity not in first])


def method_task(task: QATask, calib: Sequence[QAPair], original: torch.nn.Module,
                setup: LMSetup, seed: int, retrain: Callable[[], torch.nn.Module] | None = None,
                progress: bool = False) -> LMTask:
    """The methods' view of ``task``: loaders over the data contract and the shared budget."""
    tok = task.tokenizer
    idk = [tok(a, add_special_tokens=False).input_ids for a in task.idk_answers]
    return LMTask(
        model=original,
        forget=task.loader("forget", batch_size=setup.batch_size, shuffle=True, seed=seed),
        retain=task.loader("retain", batch_size=setup.retain_batch_size, shuffle=True,
                           seed=seed),
        holdout=make_loader(tok, calib, batch_size=setup.eval_batch_size) if calib else None,
        idk_answers=idk, eos_id=tok.eos_token_id, pad_id=pad_id_of(tok),
        device=setup.device, seed=seed, retrain=retrain, epochs=setup.epochs,
        max_steps=setup.max_steps, rule=setup.rule, method=setup.basis_method,
        progress=progress)


@dataclass
class SeedResult:
    """One seed of a comparison: per method its metrics, wall times and run info."""

    seed: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    times: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict[str, dict] = field(default_factory=dict)


def run_seed(setup: LMSetup, seed: int, methods: Sequence[str] = ALL_METHODS,
             hyper: dict[str, dict] | None = None, progress: bool = True,
             say: Callable[[str], None] = lambda s: None) -> SeedResult:
    """Train (or load) the original and the retrained model of ``seed``, run ``methods``
    with their hyperparameters ``hyper[name]`` and evaluate each against retrain."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown LM method(s) {unknown}; choose from {sorted(METHODS)}")
    hyper = hyper or {}
    task, calib = build_task(setup)
    original, info_o = trained_lm(task, setup.size, seed=seed, cache_dir=setup.cache_dir,
                                  progress=progress, threads=setup.threads)
    retrained, info_r = trained_lm(task, setup.size, retain_only=True, seed=seed,
                                   cache_dir=setup.cache_dir, progress=progress,
                                   threads=setup.threads)
    original.to(setup.device)
    retrained.to(setup.device)
    say(f"seed {seed}: original answer accuracy {100 * info_o['train_accuracy']:.2f} %"
        f" ({info_o['train_seconds']:.0f} s), retrain {100 * info_r['train_accuracy']:.2f} %"
        f" ({info_r['train_seconds']:.0f} s)")
    evaluate = LMEvaluator(task, batch_size=setup.eval_batch_size)   # tokenises the task once
    tr_retrain = evaluate.forget_truth_ratios(retrained)
    mt = method_task(task, calib, original, setup, seed, retrain=lambda: retrained,
                     progress=progress)
    out = SeedResult(seed)
    for name in methods:
        # every method sees the same batch order: a shared seeded loader would hand each
        # method the next epochs' order, so its generator is rewound (bases stay cached)
        for loader in (mt.forget, mt.retain):
            loader.generator.manual_seed(seed)
        t = time.perf_counter()
        res = run_method(name, mt, **hyper.get(name, {}))
        wall = time.perf_counter() - t
        times = dict(res.times)
        if name == "original":
            times = {"train": float(info_o["train_seconds"])}
        elif name == "retrain":
            times = {"train": float(info_r["train_seconds"])}
        else:
            times["total"] = wall
        out.metrics[name] = evaluate(res.model, retrain_truth_ratios=tr_retrain,
                                     forget_tr=tr_retrain if res.model is retrained else None)
        out.times[name] = times
        out.info[name] = json_safe(res.info)
        say(f"seed {seed}: {name}: forget quality {out.metrics[name]['forget_quality']:.3g},"
            f" model utility {out.metrics[name]['model_utility']:.4f}")
    return out


# -- tables ---------------------------------------------------------------------------------

def _stat(values: Sequence[float]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _fmt(mean: float, std: float, scale: float) -> str:
    if not math.isfinite(mean):
        return "–"
    m, s = mean * scale, std * scale
    digits = 2 if abs(m) >= 1 else 3
    if abs(m) < 0.01 and m != 0:
        return f"{m:.2g} ± {s:.1g}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def summary(results: Sequence[SeedResult], methods: Sequence[str]) -> dict:
    """Per method: mean and standard deviation over seeds of every metric and time."""
    out = {}
    for m in methods:
        rows = [r for r in results if m in r.metrics]
        out[m] = {k: _stat([r.metrics[m][k] for r in rows]) for k in METRIC_KEYS}
        phases = sorted({p for r in rows for p in r.times[m]})
        out[m]["times"] = {p: _stat([r.times[m].get(p, float("nan")) for r in rows])
                           for p in phases}
    return out


def goal_check(results: Sequence[SeedResult], utility_drop: float = 0.01) -> list[str]:
    """The issue's goal, per seed and on the means: UNSC's forget quality is the highest of
    the unlearning methods (closest to retrain's, which is 1 against itself) and its model
    utility is at least the original's minus ``utility_drop`` (relative)."""
    lines = []
    for r in results:
        if "unsc" not in r.metrics or "original" not in r.metrics:
            continue
        others = {m: v for m, v in r.metrics.items()
                  if m not in ("unsc", "original", "retrain")}
        fq = r.metrics["unsc"]["forget_quality"]
        best = all(fq >= v["forget_quality"] for v in others.values())
        floor = r.metrics["original"]["model_utility"] * (1 - utility_drop)
        ok_u = r.metrics["unsc"]["model_utility"] >= floor
        worse = [m for m, v in others.items()
                 if v["forget_quality"] < fq or v["model_utility"] < floor]
        lines.append(f"seed {r.seed}: UNSC forget quality {fq:.3g} "
                     f"{'is' if best else 'is NOT'} the highest; model utility "
                     f"{r.metrics['unsc']['model_utility']:.4f} vs floor {floor:.4f} "
                     f"({'holds' if ok_u else 'FAILS'}); baselines worse on at least one of"
                     f" the two: {len(worse)} of {len(others)}")
    return lines


def markdown(results: Sequence[SeedResult], methods: Sequence[str], setup: LMSetup,
             config_text: str | None = None) -> str:
    """The results page: setup, the mean ± std table, wall times, the goal check, per-seed
    rows."""
    s = summary(results, methods)
    seeds = [r.seed for r in results]
    lines = [
        f"# LM unlearning: UNSC vs the LLM baselines ({len(seeds)} seed(s): {seeds})",
        "",
        f"Corpus: {CORPUS_SIZES[setup.size]} fictitious authors (data seed {setup.data_seed}),"
        f" {100 * setup.forget_fraction:g} % forgotten; model size `{setup.size}`; budget"
        f" {setup.epochs} epoch(s) over the forget set, batch {setup.batch_size}; UNSC rule"
        f" `{setup.rule}`, bases `{setup.basis_method}`. torch {torch.__version__},"
        f" {torch.get_num_threads()} thread(s).",
        "",
        "| method | " + " | ".join(h for _, h, _, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for m in methods:
        cells = [_fmt(*s[m][k], scale) for k, _, scale, _ in COLUMNS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Wall time per phase (s, mean ± std):", "",
              "| method | phases |", "|---|---|"]
    for m in methods:
        ph = ", ".join(f"{p} {_fmt(*v, 1.0)}" for p, v in s[m]["times"].items())
        lines.append(f"| {m} | {ph} |")
    lines += ["", "Goal (UNSC's forget quality the highest, model utility ≥ original × 0.99):",
              ""] + [f"- {x}" for x in goal_check(results)]
    lines += ["", "Per seed (forget quality / model utility / forget acc %):", "",
              "| method | " + " | ".join(f"seed {x}" for x in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for m in methods:
        cells = []
        for r in results:
            v = r.metrics.get(m)
            cells.append("–" if v is None else f"{v['forget_quality']:.3g} /"
                         f" {v['model_utility']:.4f} / {100 * v['forget_acc']:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Metrics: `unsc_fast/lab/lm/metrics.py` (TOFU's definitions). Forget quality:"
              " KS-test p-value of the forget set's truth ratios against the retrained model's"
              " (retrain itself: 1). Membership attacks: AUC of forget vs unseen authors"
              " (0.5 = cannot tell)."]
    if config_text:
        lines += ["", "Config:", "", "```toml", config_text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def as_json(results: Sequence[SeedResult], methods: Sequence[str], setup: LMSetup,
            config: dict | None = None) -> dict:
    """Everything of a comparison as strict JSON (NaN as null), with the job's ``config``
    when given. The model cache's location is left out of both: it says where the run
    happened, not what it did."""
    out = {"setup": _without_cache(asdict(setup)), "methods": list(methods),
           "seeds": [asdict(r) for r in results], "summary": summary(results, methods)}
    if config is not None:
        out["config"] = _without_cache(config)
    return json_safe(out)


def _without_cache(d: dict) -> dict:
    return {**d, "cache_dir": None}
