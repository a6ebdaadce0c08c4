"""The jobs behind the command line: train, stats, unlearn, evaluate, compare.

Each job takes a resolved :class:`~unsc_fast.cli.config.Config` and paths, checks every input and
output path before any work, and writes its outputs atomically at the end, so a failure
leaves no partial file behind. Results are printed to stdout; progress bars go to stderr.
"""
from __future__ import annotations

import inspect
import math
import os
import sys
import time
from pathlib import Path

import torch

from .. import helpers
from . import checkpoint as ck
from ..lab.baselines import METHODS, Task, run_method
from .config import Config, ConfigError
from ..lab.data import DataSplit, class_split, load_dataset, loader
from ..io import Outputs
from ..lab.metrics import evaluate
from ..lab.models import build_model
from ..lab.report import build_report, json_safe, markdown, render
from ..lab.scenarios import Scenario, ScenarioSplit
from ..lab.train import train_from_scratch


class JobError(ValueError):
    """A request that cannot be carried out (bad combination of inputs)."""


PROJECTED = ("unsc", "random_labels_proj")     # the methods that use D_r's statistics


# -- checks before any work ------------------------------------------------------------------

def check_output_file(path: str | os.PathLike, kind: str, outputs: Outputs | None = None
                      ) -> Path:
    """An output path: its directory exists, it is not a directory, its extension fits;
    with ``outputs``, also planned there (a probe file proves the directory writable)."""
    p = Path(path)
    if p.is_dir():
        raise JobError(f"output {str(p)!r} is a directory; give a file name")
    if p.parent.exists() and not p.parent.is_dir():
        raise JobError(f"output {str(p)!r}: {str(p.parent)!r} is a file, not a directory")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(p.parent)!r} does not exist")
    if not os.access(p.parent, os.W_OK):
        raise PermissionError(f"output directory {str(p.parent)!r} is not writable")
    if kind in ("checkpoint", "stats", "bases"):
        ck.file_format(p)
    elif kind == "json" and p.suffix != ".json":
        raise JobError(f"report {str(p)!r} must end in .json")
    if outputs is not None:
        outputs.plan(p)
    return p


def _same_file(a, b) -> bool:
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_distinct(inputs: dict, outputs: dict) -> None:
    """No output may overwrite an input or another output (``{"--flag": path or None}``)."""
    outs = [(k, v) for k, v in outputs.items() if v is not None]
    ins = [(k, v) for k, v in inputs.items() if v is not None]
    for i, (name, path) in enumerate(outs):
        for other, q in ins:
            paths = q if isinstance(q, (list, tuple)) else [q]
            if any(_same_file(path, x) for x in paths):
                raise JobError(f"{name} {str(path)!r} is also the input {other}: it would be"
                               " overwritten; write to another file")
        for other, q in outs[i + 1:]:
            if _same_file(path, q):
                raise JobError(f"{name} and {other} are the same file {str(path)!r};"
                               " give them different names")


def _device(cfg: Config) -> torch.device:
    try:
        dev = torch.device(cfg["device"])
    except RuntimeError as exc:
        raise ConfigError(f"bad device {cfg['device']!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA device is available")
    backend = cfg["backend"]
    if backend not in (None, "auto"):          # a forced backend must load, before any work
        from ..dispatch import availability
        why = availability().get(backend, "unknown backend")
        if why != "available":
            raise ConfigError(f"--backend {backend} is not available here: {why}")
    return dev


def _progress(cfg: Config) -> bool:
    return not cfg["quiet"]


def _say(cfg: Config, msg: str) -> None:
    print(msg, file=sys.stdout, flush=True)


def load_data(cfg: Config) -> DataSplit:
    return load_dataset(cfg["dataset"], seed=cfg["data_seed"], root=cfg["data_root"])


def scenario_split(cfg: Config, data: DataSplit) -> ScenarioSplit:
    return Scenario.from_dict(cfg["scenario"]).split(data, seed=cfg["data_seed"])


def adopt_checkpoint(cfg: Config, meta: dict, path, first: tuple | None = None) -> None:
    """Take dataset/model/width/data_seed from a checkpoint unless set; conflicts are errors.

    ``first`` is ``(path, meta)`` of an earlier checkpoint of the same job (``evaluate``) that
    recorded a scenario: it must agree with this one's unless the scenario is set explicitly.
    """
    for key in ("dataset", "model", "width", "data_seed"):
        if key not in meta:
            continue
        if cfg.is_set(key) and cfg[key] != meta[key]:
            raise ck.CheckpointError(
                f"checkpoint {str(path)!r} holds a {meta['model']!r} trained with"
                f" {key}={meta[key]!r}, but the config asks for {key}={cfg[key]!r}")
        cfg.set(key, meta[key], explicit=False)
    if "scenario" in meta and not any(k.startswith("scenario.") for k in cfg.explicit):
        if first is not None and "scenario" in first[1]:
            a = Scenario.from_dict(first[1]["scenario"])
            b = Scenario.from_dict(meta["scenario"])
            if a != b:
                raise ck.CheckpointError(
                    f"checkpoints {str(first[0])!r} and {str(path)!r} forgot different things"
                    f" ({a.describe()} vs {b.describe()}); choose the scenario to evaluate"
                    " with --scenario/--forget")
        cfg.data["scenario"].update(meta["scenario"])


def _check_fits(data: DataSplit, meta: dict, path) -> None:
    if list(data.input_shape) != list(meta["input_shape"]) or \
            data.num_classes != meta["num_classes"]:
        raise ck.CheckpointError(
            f"checkpoint {str(path)!r} expects inputs {tuple(meta['input_shape'])} and"
            f" {meta['num_classes']} classes; dataset {data.name!r} has"
            f" {tuple(data.input_shape)} and {data.num_classes}")


def _load_model(cfg: Config, path, data: DataSplit | None = None, first: tuple | None = None):
    model, meta = ck.load_checkpoint(path, device=str(_device(cfg)))
    adopt_checkpoint(cfg, meta, path, first)
    data = data or load_data(cfg)
    _check_fits(data, meta, path)
    return model, meta, data


def _model_info(cfg: Config, model) -> dict:
    return {"name": cfg["model"], "width": float(cfg["width"]),
            "parameters": int(sum(p.numel() for p in model.parameters()))}


def _dataset_info(data: DataSplit) -> dict:
    return {"name": data.name, "num_classes": data.num_classes,
            "input_shape": list(data.input_shape), "n_train": len(data.train),
            "n_test": len(data.test)}


def _scenario_key(cfg: Config) -> dict:
    return {"dataset": cfg["dataset"], "data_seed": cfg["data_seed"],
            "scenario": Scenario.from_dict(cfg["scenario"]).as_dict()}


def _holdout(cfg: Config, split: ScenarioSplit, data: DataSplit):
    """Held-out data for UNSC's sample mode (None for class-level scenarios)."""
    if split.forget_classes is not None:
        return None
    return split.holdout(data.test, cfg["unlearn.holdout_share"], cfg["data_seed"])


def _task(cfg: Config, model, split: ScenarioSplit, seed: int, **kw) -> Task:
    return Task(model=model, split=split, model_name=cfg["model"], width=cfg["width"],
                input_shape=tuple(cfg_input_shape(split)), train=dict(cfg["train"]),
                unlearn=dict(cfg["unlearn"]), seed=seed, progress=_progress(cfg),
                backend=cfg["backend"], **kw)


def cfg_input_shape(split: ScenarioSplit) -> tuple[int, ...]:
    x = split.retain[0][0]
    return tuple(x.shape)


def _run_record(method: str, seed: int, metrics: dict, times: dict, info: dict) -> dict:
    return {"method": method, "seed": seed, "metrics": json_safe(metrics),
            "times": {k: float(v) for k, v in times.items()}, "info": json_safe(info)}


def check_finite_model(model, what: str, hint: str, probe: torch.Tensor | None = None,
                       done: str = "nothing was written") -> None:
    """A model whose weights turned NaN/Inf, or whose outputs on the ``probe`` batch do, is
    not saved, returned or evaluated: an error says what failed and what to change."""
    bad = [n for n, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise JobError(f"{what} diverged: {len(bad)} tensor(s) of the model hold NaN or Inf"
                       f" (first: {bad[0]}); {done}; {hint}")
    if probe is not None:
        n = helpers.nonfinite_outputs(model, probe)
        if n:
            raise JobError(f"{what} diverged: its weights are finite but {n} of"
                           f" {len(probe)} probe inputs give NaN/Inf outputs; {done}; {hint}")


def _probe(data: DataSplit, device) -> torch.Tensor:
    """A batch of test inputs for the finite-output check."""
    return next(iter(loader(data.test, 256)))[0].to(device)


def _eval(cfg: Config, model, split: ScenarioSplit, data: DataSplit, seed: int) -> dict:
    return evaluate(model, split, data.test, batch_size=cfg["evaluate.batch_size"], seed=seed,
                    mia_feature=cfg["evaluate.mia_feature"], mia=cfg["evaluate.mia"])


def _train_original(cfg: Config, data: DataSplit, dataset, seed: int, desc="training"):
    return train_from_scratch(cfg["model"], data.input_shape, data.num_classes, cfg["width"],
                              dataset, cfg["train"], seed, device=_device(cfg),
                              progress=_progress(cfg), desc=desc)


# -- train -----------------------------------------------------------------------------------

def train_job(cfg: Config, out, exclude_classes: list[int] | None = None) -> dict:
    """Train the original model (or, with ``exclude_classes``, the retrain baseline)."""
    outputs = Outputs()
    out = check_output_file(out, "checkpoint", outputs)
    if cfg.source is not None:
        check_distinct({"--config": cfg.source}, {"--out": out})
    _device(cfg)
    data = load_data(cfg)
    # Build once to check the model name and input size before loading anything else.
    build_model(cfg["model"], data.input_shape, data.num_classes, cfg["width"])
    exclude = sorted(set(exclude_classes or []))
    if exclude_classes and len(exclude) < len(exclude_classes):
        raise JobError(f"--exclude-classes lists a class more than once: {exclude_classes}")
    bad = [c for c in exclude if not 0 <= c < data.num_classes]
    if bad:
        raise JobError(f"unknown class {bad} in --exclude-classes: dataset {data.name!r}"
                       f" has classes 0..{data.num_classes - 1}")
    if len(exclude) >= data.num_classes:
        raise JobError("--exclude-classes leaves no class to train on")
    dataset = class_split(data.train, exclude)[0] if exclude else data.train
    model, secs = _train_original(cfg, data, dataset, cfg["seed"],
                                  "retrain" if exclude else "training")
    check_finite_model(model, "training", "lower --lr", _probe(data, _device(cfg)))
    meta = ck.model_meta(cfg["model"], cfg["width"], data.input_shape, data.num_classes,
                         data.name, seed=cfg["seed"], data_seed=cfg["data_seed"],
                         exclude_classes=exclude, method="retrain" if exclude else "original",
                         train=dict(cfg["train"]), train_seconds=secs,
                         versions=helpers.versions())
    if exclude:
        meta["scenario"] = {"kind": "class" if len(exclude) == 1 else "classes",
                            "classes": exclude}
    with outputs:
        ck.save_checkpoint(out, model, meta, outputs)
        outputs.commit()
    from ..lab.metrics import class_accuracies
    acc = class_accuracies(model, loader(data.test, cfg["evaluate.batch_size"]),
                           exclude or [], data.num_classes)
    what = f" (classes {exclude} left out)" if exclude else ""
    _say(cfg, f"trained {cfg['model']} on {data.name}{what} in {secs:.1f} s; test accuracy"
              f" (mean per class) {100 * acc['acc_r']:.2f}%"
              + (f", on the left-out classes {100 * acc['acc_f']:.2f}%" if exclude else "")
              + f"; saved {out}")
    return {"checkpoint": str(out), "seconds": secs}


# -- stats -----------------------------------------------------------------------------------

def stats_job(cfg: Config, checkpoint, out, bases_out=None) -> dict:
    """Second moments of every layer's inputs over D_r, saved (and optionally the bases)."""
    from ..bases import NullSpace
    from ..stats import SecondMoments
    outputs = Outputs()
    out = check_output_file(out, "stats", outputs)
    if bases_out is not None:
        bases_out = check_output_file(bases_out, "bases", outputs)
    check_distinct({"--checkpoint": checkpoint, "--config": cfg.source},
                   {"--out": out, "--bases-out": bases_out})
    ck.require_file(checkpoint, "checkpoint")
    model, meta, data = _load_model(cfg, checkpoint)
    split = scenario_split(cfg, data)
    t = time.perf_counter()
    moments = SecondMoments(model, include_bias=cfg["unlearn.include_bias"],
                            backend=cfg["backend"],
                            dtype=getattr(torch, cfg["unlearn.stats_dtype"]))
    moments.collect(loader(split.retain, 256), max_samples=cfg["unlearn.max_retain_samples"],
                    progress=_progress(cfg))
    secs = time.perf_counter() - t
    job = {"checkpoint": meta.get("fingerprint"), **_scenario_key(cfg),
           "max_retain_samples": cfg["unlearn.max_retain_samples"],
           "include_bias": cfg["unlearn.include_bias"]}
    bases = None
    if bases_out is not None:
        bases = NullSpace.from_moments(moments, cfg["unlearn.rule"],
                                       include_bias=cfg["unlearn.include_bias"],
                                       progress=_progress(cfg))
    with outputs:
        ck.save_moments(out, moments, {**job, "seconds": secs}, outputs)
        if bases is not None:
            ck.save_bases(bases_out, bases, {**job, "rule": cfg["unlearn.rule"]}, outputs)
        outputs.commit()
    if bases is not None:
        for w in bases.warnings():
            print(f"warning: {w}", file=sys.stderr)
    _say(cfg, f"second moments of {len(moments.moments)} layers over {len(split.retain)}"
              f" retained samples in {secs:.1f} s; saved {out}"
              + (f" and bases ({cfg['unlearn.rule']}) {bases_out}" if bases is not None else ""))
    return {"stats": str(out), "bases": None if bases_out is None else str(bases_out)}


def _check_job(kind: str, path, job: dict, cfg: Config, fingerprint: str | None) -> None:
    if job.get("checkpoint") not in (None, fingerprint):
        raise ck.CheckpointError(f"{kind} {str(path)!r} was computed from another checkpoint"
                                 " (fingerprints differ); recompute it for this model")
    # settings that were fixed when the file was computed: an explicit different value
    # would be silently ignored, so it is an error
    fixed = [("unlearn.max_retain_samples", "max_retain_samples", "--max-retain-samples"),
             ("unlearn.include_bias", "include_bias", "--include-bias")]
    if kind.startswith("bases"):
        fixed.append(("unlearn.rule", "rule", "--rule"))
    for key, name, flag in fixed:
        if name in job and cfg.is_set(key) and cfg[key] != job[name]:
            raise ck.CheckpointError(
                f"{kind} {str(path)!r} was computed with {name}={job[name]!r}, but this job"
                f" asks for {name}={cfg[key]!r} ({flag}); drop the setting or recompute the"
                " file with it")
    want = _scenario_key(cfg)
    for key in ("dataset", "data_seed", "scenario"):
        if key in job and job[key] != want[key]:
            raise ck.CheckpointError(
                f"{kind} {str(path)!r} was computed for {key}={job[key]!r}, but this job"
                f" uses {key}={want[key]!r} (a different D_r)")


# -- unlearn ---------------------------------------------------------------------------------

def unlearn_job(cfg: Config, checkpoint, out, *, stats=None, bases=None, method: str = "unsc",
                report=None, bases_out=None) -> dict:
    """Unlearn the scenario's D_f from a checkpoint with ``method``; save the new model."""
    if method not in METHODS or method == "original":
        raise JobError(f"unknown unlearning method {method!r}; choose one of"
                       f" {sorted(set(METHODS) - {'original'})}")
    if stats is not None and bases is not None:
        raise JobError("give --stats or --bases, not both")
    if (stats is not None or bases is not None) and method not in PROJECTED:
        raise JobError(f"{'--stats' if stats is not None else '--bases'}: method {method!r}"
                       f" uses no statistics or bases (only {' and '.join(PROJECTED)} do)")
    outputs = Outputs()
    out = check_output_file(out, "checkpoint", outputs)
    if report is not None:
        report = check_output_file(report, "json", outputs)
    if bases_out is not None:
        bases_out = check_output_file(bases_out, "bases", outputs)
        if method != "unsc":
            raise JobError(f"--bases-out: method {method!r} saves no bases (only unsc does)")
    check_distinct({"--checkpoint": checkpoint, "--stats": stats, "--bases": bases,
                    "--config": cfg.source},
                   {"--out": out, "--report": report, "--bases-out": bases_out})
    for path, what in ((checkpoint, "checkpoint"), (stats, "statistics file"),
                       (bases, "bases file")):
        if path is not None:                   # every input checked before any work
            ck.require_file(path, what)
    model, meta, data = _load_model(cfg, checkpoint)
    split = scenario_split(cfg, data)
    moments = null_space = None
    if stats is not None:
        moments, job = ck.load_moments(stats, model, backend=cfg["backend"])
        _check_job("statistics file", stats, job, cfg, meta.get("fingerprint"))
        if not cfg.is_set("unlearn.include_bias"):   # the file decides what it can give
            cfg.set("unlearn.include_bias", bool(moments.include_bias), explicit=False)
    if bases is not None:
        null_space, job = ck.load_bases(bases, model)
        _check_job("bases file", bases, job, cfg, meta.get("fingerprint"))
    seed = cfg["seed"]
    task = _task(cfg, model, split, seed, moments=moments, bases=null_space,
                 holdout=_holdout(cfg, split, data))
    hp = dict(cfg["methods"].get(method, {}))
    accepted = inspect.signature(METHODS[method]).parameters
    for key in ("lr", "epochs", "batch_size"):     # a flag --lr etc. reaches any method
        if f"unlearn.{key}" in cfg.flags and key in accepted:   # and beats [methods.X]
            hp[key] = cfg[f"unlearn.{key}"]
    res = run_method(method, task, **hp)
    check_finite_model(res.model, method,
                       f"lower the learning rate (--lr, or lr in [methods.{method}])",
                       _probe(data, _device(cfg)))
    new_meta = {k: v for k, v in meta.items() if k not in ("fingerprint",)}
    made = {"method": method, "rule": cfg["unlearn.rule"] if method in PROJECTED else None,
            **{k: hp.get(k, cfg[f"unlearn.{k}"]) for k in ("lr", "epochs", "batch_size")},
            "hyperparameters": hp}
    new_meta.update(method=method, source=meta.get("fingerprint"),
                    scenario=Scenario.from_dict(cfg["scenario"]).as_dict(),
                    unlearn_seconds=res.times["total"], seed=seed, unlearn=made,
                    versions=helpers.versions())
    results = {}
    if report is not None:
        runs = [_run_record("original", seed, _eval(cfg, model, split, data, seed),
                            {"total": meta.get("train_seconds") or 0.0}, {}),
                _run_record(method, seed, _eval(cfg, res.model, split, data, seed),
                            res.times, res.info)]
        rep = build_report(command="unlearn", config=cfg.as_dict(),
                           dataset=_dataset_info(data), model=_model_info(cfg, model),
                           scenario=split.info(), runs=runs)
        results["report"] = rep
        from ..lab.report import to_json
        report_text = to_json(rep)             # serialised before anything is written
    with outputs:
        ck.save_checkpoint(out, res.model, new_meta, outputs)
        if bases_out is not None:
            ck.save_bases(bases_out, res.bases,
                          {"checkpoint": meta.get("fingerprint"), **_scenario_key(cfg),
                           "rule": cfg["unlearn.rule"],
                           "max_retain_samples": cfg["unlearn.max_retain_samples"],
                           "include_bias": cfg["unlearn.include_bias"]}, outputs)
        if report is not None:
            outputs.stage(report, lambda f: f.write(report_text))
        outputs.commit()
    if report is not None:
        _say(cfg, markdown(results["report"]))
    for w in res.info.get("warnings") or []:
        print(f"warning: {w}", file=sys.stderr)
    if res.info.get("diverged"):
        print(f"warning: {method} stopped early: its loss turned NaN/Inf (lower the learning"
              " rate); the saved model is its last finite state", file=sys.stderr)
    _say(cfg, f"{method}: forgot {split.scenario.describe()} ({len(split.forget)} samples) in"
              f" {res.times['total']:.1f} s; saved {out}")
    return {"checkpoint": str(out), "times": res.times, **results}


# -- evaluate --------------------------------------------------------------------------------

def evaluate_job(cfg: Config, checkpoints: list, out=None) -> dict:
    """Metrics of one or more checkpoints on the scenario; a table on stdout, JSON to ``out``."""
    if not checkpoints:
        raise JobError("evaluate needs at least one checkpoint")
    outputs = Outputs()
    if out is not None:
        out = check_output_file(out, "json", outputs)
    check_distinct({"--checkpoint": list(checkpoints), "--config": cfg.source}, {"--out": out})
    for p in checkpoints:                      # every path checked before any work
        ck.require_file(p, "checkpoint")
    loaded, data = [], None
    for p in checkpoints:
        first = next(((q, m) for q, _, m in loaded if "scenario" in m), None)
        model, meta, data = _load_model(cfg, p, data, first)
        if loaded:                             # one data set and split for every model
            first_path, _, first = loaded[0]
            for key in ("dataset", "data_seed"):
                if meta.get(key) != first.get(key):
                    raise ck.CheckpointError(
                        f"checkpoints {str(first_path)!r} and {str(p)!r} were trained with"
                        f" different {key} ({first.get(key)!r} vs {meta.get(key)!r})")
        loaded.append((p, model, meta))
    probe = _probe(data, _device(cfg))
    for p, model, _ in loaded:                 # a broken model is refused, not evaluated
        check_finite_model(model, f"checkpoint {str(p)!r}", "it cannot be evaluated; check"
                           " how it was made", probe, done="nothing was evaluated")
    split = scenario_split(cfg, data)
    seed = cfg["seed"]
    runs, names = [], []
    for p, model, meta in loaded:
        name = meta.get("method", "model")
        if name in names:
            name = f"{name}:{Path(p).stem}"
        names.append(name)
        secs = meta.get("unlearn_seconds", meta.get("train_seconds")) or 0.0
        runs.append(_run_record(name, seed, _eval(cfg, model, split, data, seed),
                                {"total": secs},
                                {"checkpoint": str(p), "model": meta.get("model"),
                                 "width": meta.get("width")}))
    first_meta = loaded[0][2]
    model_info = {"name": first_meta.get("model"), "width": float(first_meta.get("width", 1.0)),
                  "parameters": int(sum(p.numel() for p in loaded[0][1].parameters()))}
    rep = build_report(command="evaluate", config=cfg.as_dict(), dataset=_dataset_info(data),
                       model=model_info, scenario=split.info(), runs=runs, methods=names)
    if out is not None:
        from ..lab.report import to_json
        with outputs:
            outputs.stage(out, lambda f: f.write(to_json(rep)))
            outputs.commit()
    _say(cfg, markdown(rep))
    return rep


# -- compare ---------------------------------------------------------------------------------

def compare_job(cfg: Config, out_dir, figures: bool = True) -> dict:
    """Original vs retrain vs UNSC vs baselines, over seeds; one report, table and figures."""
    from ..stats import SecondMoments
    outputs = Outputs()
    out_dir = outputs.plan_dir(out_dir)
    _device(cfg)
    methods = list(dict.fromkeys(cfg["compare.methods"]))
    if "original" not in methods:
        methods.insert(0, "original")
    if figures:                                # fail before the work, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ImportError("the figures need matplotlib (pip install matplotlib);"
                              " or pass --no-figures") from None
    data = load_data(cfg)
    build_model(cfg["model"], data.input_shape, data.num_classes, cfg["width"])
    split = scenario_split(cfg, data)
    seeds = cfg["compare.seeds"]
    runs = []
    t0 = time.perf_counter()
    bar = None
    if _progress(cfg):
        from tqdm.auto import tqdm
        bar = tqdm(total=len(seeds) * len(methods), desc="compare", dynamic_ncols=True)
    for seed in seeds:
        original, t_train = _train_original(cfg, data, data.train, seed)
        moments, t_stats = None, 0.0
        if {"unsc", "random_labels_proj"} & set(methods):
            t = time.perf_counter()
            moments = SecondMoments(original, include_bias=cfg["unlearn.include_bias"],
                                    backend=cfg["backend"],
                                    dtype=getattr(torch, cfg["unlearn.stats_dtype"]))
            moments.collect(loader(split.retain, 256),
                            max_samples=cfg["unlearn.max_retain_samples"],
                            progress=_progress(cfg))
            t_stats = time.perf_counter() - t
        task = _task(cfg, original, split, seed, moments=moments,
                     holdout=_holdout(cfg, split, data))
        for m in methods:
            res = run_method(m, task, **cfg["methods"].get(m, {}))
            times = dict(res.times)
            if m == "original":
                times = {"train": t_train, "total": t_train}
            elif m in ("unsc", "random_labels_proj"):
                times["stats"] = t_stats
                times["total"] += t_stats
            try:
                check_finite_model(res.model, f"seed {seed} {m}", "its metrics are of a broken"
                                   " model", _probe(data, _device(cfg)), done="still evaluated")
            except JobError as exc:           # recorded and shown, never quiet
                res.info["non_finite"] = str(exc)
                print(f"warning: {exc}", file=sys.stderr)
            metrics = _eval(cfg, res.model, split, data, seed)
            runs.append(_run_record(m, seed, metrics, times, res.info))
            if bar is not None:
                acc_f = metrics["acc_f"]
                bar.write(f"seed {seed} {m}: Acc_r {metrics['acc_r']:.2f}, Acc_f"
                          f" {'-' if acc_f is None else f'{acc_f:.2f}'} ({times['total']:.1f} s)",
                          file=sys.stderr)
                bar.update()
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    rep = build_report(command="compare", config=cfg.as_dict(), dataset=_dataset_info(data),
                       model=_model_info(cfg, build_model(cfg["model"], data.input_shape,
                                                          data.num_classes, cfg["width"])),
                       scenario=split.info(), runs=runs, methods=methods)
    rep["wall_seconds"] = wall
    files = render(rep, figures=figures)     # everything rendered before anything is written
    with outputs:
        for name, blob in files.items():
            outputs.stage(out_dir / name, lambda f, b=blob: f.write(b))
        outputs.commit()
    _say(cfg, markdown(rep))
    _say(cfg, f"wrote {', '.join(files)} to {out_dir} ({wall:.0f} s)")
    return rep
