"""``unsc-fast lm ...``: the language-model job (TOFU-style) on the command line.

``demo`` runs everything on the small built-in task and prints the table; ``train`` makes the
original model (or, with ``--retain-only``, the retrained reference); ``stats`` computes the
statistics over the retain set and saves the bases; ``unlearn`` runs UNSC or a baseline;
``evaluate`` prints TOFU's metrics; ``compare`` runs seeds x methods and writes
``results.md`` and ``report.json``. The data are the built-in corpus (``size``,
``forget_fraction``, ``data_seed``) or the user's JSONL files (``--forget-file``,
``--retain-file``, ``--holdout-file``), and any local Hugging Face causal LM directory is
accepted as ``--model``. Every output is checked before any work and written at the end,
all or nothing (:class:`unsc_fast.io.Outputs`).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from . import lm_config

SETUP_FLAGS = {"size": str, "forget_fraction": float, "data_seed": int, "epochs": int,
               "max_steps": int, "batch_size": int, "rule": str, "basis_method": str,
               "cache_dir": str, "device": str, "threads": int, "seed": int}


def add_parser(sub) -> None:
    """The ``lm`` subcommand and its own subcommands, on the main parser's ``sub``."""
    lm = sub.add_parser("lm", help="language-model unlearning (TOFU-style; needs the [hf]"
                        " extra): demo | train | stats | unlearn | evaluate | compare")
    lsub = lm.add_subparsers(dest="lm_command", required=True)

    d = lsub.add_parser("demo", help="train a small LM on the built-in corpus (and its"
                        " retrained reference), run UNSC and the baselines, print the table")
    d.add_argument("--methods", nargs="+", metavar="M", help="methods (default: all)")
    _common(d, size="demo", forget_fraction=0.1)
    d.set_defaults(func=_demo)

    t = lsub.add_parser("train", help="train the original LM (--retain-only: the retrained"
                        " reference) and save it as a Hugging Face model directory")
    t.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    t.add_argument("--retain-only", action="store_true", help="train without the forget set")
    _common(t)
    t.set_defaults(func=_train)

    s = lsub.add_parser("stats", help="statistics of every attention/MLP projection's inputs"
                        " over the retain set; saves the bases")
    s.add_argument("--model", required=True, metavar="DIR")
    s.add_argument("--out", required=True, metavar="FILE", help="bases file (.safetensors)")
    _data(s)
    _common(s)
    s.set_defaults(func=_stats)

    u = lsub.add_parser("unlearn", help="forget the forget set: UNSC or a baseline")
    u.add_argument("--model", required=True, metavar="DIR", help="the original model")
    u.add_argument("--out", required=True, metavar="DIR", help="unlearned model directory")
    u.add_argument("--method", default="unsc", help="unsc (default) | grad_ascent | grad_diff"
                   " | npo | idk | idk_proj")
    u.add_argument("--lr", type=float, help="the method's learning rate")
    u.add_argument("--bases", metavar="FILE", help="saved bases (from `lm stats`)")
    u.add_argument("--report", metavar="JSON", help="evaluate the result, write a report")
    u.add_argument("--retrain", metavar="DIR", help="retrained model, for forget quality")
    _data(u)
    _common(u)
    u.set_defaults(func=_unlearn)

    e = lsub.add_parser("evaluate", help="TOFU's metrics of a model")
    e.add_argument("--model", required=True, metavar="DIR")
    e.add_argument("--retrain", metavar="DIR", help="retrained model, for forget quality")
    e.add_argument("--out", metavar="JSON", help="write the metrics here too")
    _data(e)
    _common(e)
    e.set_defaults(func=_evaluate)

    c = lsub.add_parser("compare", help="original vs retrain vs UNSC vs baselines over seeds:"
                        " results.md, report.json")
    c.add_argument("--out", required=True, metavar="DIR", help="output directory")
    c.add_argument("--methods", nargs="+", metavar="M", help="methods (default: all)")
    c.add_argument("--seeds", type=int, nargs="+", metavar="S", help="seeds (default: 0)")
    _common(c)
    c.set_defaults(func=_compare)


def _common(p: argparse.ArgumentParser, **defaults) -> None:
    g = p.add_argument_group("job (override the config file)")
    g.add_argument("--config", metavar="TOML", help="a TOML config file (flags override it)")
    g.add_argument("--size", help="built-in task and model size: default | demo | tiny")
    g.add_argument("--forget-fraction", type=float, metavar="F",
                   help="share of the authors forgotten (0.05 or 0.1 as in TOFU)")
    g.add_argument("--data-seed", type=int, metavar="N", help="corpus and forgotten authors")
    g.add_argument("--seed", type=int, metavar="N", help="model init, batch order")
    g.add_argument("--epochs", type=int, metavar="N", help="budget: passes over the forget set")
    g.add_argument("--max-steps", type=int, metavar="N", help="budget: cap on steps")
    g.add_argument("--batch-size", type=int, metavar="N", help="forget batch size")
    g.add_argument("--rule", help="UNSC's rank rule, e.g. energy:0.99")
    g.add_argument("--basis-method", choices=("fast", "eigh"))
    g.add_argument("--cache-dir", metavar="DIR", help="cache of trained models (compare, demo)")
    g.add_argument("--device", help="cpu (default) or cuda")
    g.add_argument("--threads", type=int, metavar="N", help="torch threads")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bars")
    p.set_defaults(lm_defaults=defaults)


def _data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("your own data (instead of the built-in corpus)")
    g.add_argument("--forget-file", metavar="JSONL", help="QA pairs to forget")
    g.add_argument("--retain-file", metavar="JSONL", help="QA pairs to keep")
    g.add_argument("--holdout-file", metavar="JSONL",
                   help="QA pairs never trained on (calibration half and metrics half)")


def _config(args: argparse.Namespace) -> lm_config.LMConfig:
    flags = {k: getattr(args, k, None) for k in (*SETUP_FLAGS, "quiet")}
    defaults = getattr(args, "lm_defaults", {})
    cfg = lm_config.build(args.config, {**{k: v for k, v in defaults.items()
                                          if args.config is None}, **{
        k: v for k, v in flags.items() if v is not None},
        "seeds": getattr(args, "seeds", None),
        "methods": getattr(args, "methods", None) if args.lm_command in ("demo", "compare")
        else None})
    return cfg


def _setup_torch(cfg) -> None:
    if importlib.util.find_spec("transformers") is None:
        raise ImportError("the LM job needs Hugging Face transformers: pip install"
                          " 'unsc-fast[hf]' (or transformers itself)")
    import torch
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    if str(cfg["device"]).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")


def _task(cfg, args, tokenizer=None):
    """(task, calibration pairs): the built-in corpus, or the user's files."""
    from ..lab.lm.compare import build_task, split_holdout
    from ..lab.lm.data import task_from_jsonl
    files = [getattr(args, k, None) for k in ("forget_file", "retain_file", "holdout_file")]
    if any(files):                    # paths and pairing checked by _check_files first
        if tokenizer is None:
            raise ValueError("your own data needs --model (its tokenizer encodes the text)")
        task = task_from_jsonl(tokenizer, *files)
        calib, task.holdout = split_holdout(task.holdout) if task.holdout else ([], [])
        return task, calib
    task, calib = build_task(cfg.setup())
    if tokenizer is not None:
        task.tokenizer = tokenizer
    return task, calib


def _check_files(args: argparse.Namespace) -> None:
    """Every input path exists before any work (the data files are parsed later)."""
    for flag in ("model", "retrain"):
        p = getattr(args, flag, None)
        if p is not None and not Path(p).is_dir():
            raise FileNotFoundError(f"--{flag} {str(p)!r}: no such model directory")
    files = {k: getattr(args, k.replace("-", "_"), None)
             for k in ("forget-file", "retain-file", "holdout-file")}
    if any(files.values()) and not (files["forget-file"] and files["retain-file"]):
        raise ValueError("your own data needs both --forget-file and --retain-file")
    for k, p in files.items():
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"--{k} {str(p)!r}: no such file")


def _load(path, cfg):
    from ..lab.lm.data import load_hf_model
    model, tok = load_hf_model(path, device=cfg["device"])
    return model.eval(), tok


def _made(cfg, what: str, **extra) -> dict:
    from .. import __version__
    return {"made_by": f"unsc-fast lm {what}", "unsc_fast": __version__,
            "setup": {k: cfg[k] for k in lm_config.SETUP_KEYS}, "seed": cfg["seed"], **extra}


# -- the subcommands --------------------------------------------------------------------------

def _demo(args: argparse.Namespace) -> int:
    from ..lab.lm.compare import COLUMNS, goal_check, run_seed, summary
    cfg = _config(args)
    _setup_torch(cfg)
    t = time.perf_counter()
    methods = cfg["compare"]["methods"]
    res = run_seed(cfg.setup(), cfg["seed"], methods, cfg.hyper(),
                   progress=not cfg["quiet"], say=_say)
    s = summary([res], methods)
    keys = ("forget_quality", "model_utility", "forget_acc", "retain_acc", "mia_loss_auc")
    heads = {k: h for k, h, _, _ in COLUMNS}
    print(f"\nLM unlearning on the built-in corpus (size {cfg['size']}, "
          f"{100 * cfg['forget_fraction']:g} % of the authors forgotten, seed {cfg['seed']}):\n")
    print("| method | " + " | ".join(heads[k] for k in keys) + " | time s |")
    print("|---|" + "---|" * (len(keys) + 1))
    for m in methods:
        cells = [f"{100 * s[m][k][0]:.2f}" if k.endswith("_acc") else f"{s[m][k][0]:.3g}"
                 for k in keys]
        t_m = s[m]["times"]                  # a method's whole run, or a model's training
        secs = (t_m.get("total") or t_m["train"])[0]
        print(f"| {m} | " + " | ".join(cells) + f" | {secs:.1f} |")
    for line in goal_check([res]):
        print(f"\n{line}")
    print(f"\n(total {time.perf_counter() - t:.0f} s; forget quality: KS p-value against"
          " the retrained model, which scores 1)")
    return 0


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _train(args: argparse.Namespace) -> int:
    from ..io import Outputs
    from ..lab.lm.train import save_lm, trained_lm
    cfg = _config(args)
    _setup_torch(cfg)
    with Outputs() as tx:
        out = tx.plan(args.out, directory=True)
        task, _ = _task(cfg, args)
        model, info = trained_lm(task, cfg["size"], retain_only=args.retain_only,
                                 seed=cfg["seed"], progress=not cfg["quiet"],
                                 threads=cfg["threads"])
        save_lm(out, model, task.tokenizer, {**info, **_made(cfg, "train",
                                                            retain_only=args.retain_only)}, tx)
        tx.commit()
    print(f"trained {'the retrained reference' if args.retain_only else 'the original'}"
          f" ({info['params']:,} parameters): answer-token accuracy"
          f" {100 * info['train_accuracy']:.2f} % on its training questions in"
          f" {info['train_seconds']:.0f} s; saved {out}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ..io import Outputs
    from ..unlearn_lm import lm_bases
    from . import checkpoint as ck
    from .jobs import check_distinct, check_output_file
    cfg = _config(args)
    _setup_torch(cfg)
    with Outputs() as tx:
        check_distinct({"--model": args.model}, {"--out": args.out})
        out = check_output_file(args.out, "bases", tx)
        _check_files(args)
        model, tok = _load(args.model, cfg)
        task, _ = _task(cfg, args, tok)
        t = time.perf_counter()
        bases = lm_bases(model, task.loader("retain", batch_size=cfg["retain_batch_size"]),
                         cfg["rule"], method=cfg["basis_method"], progress=not cfg["quiet"])
        secs = time.perf_counter() - t
        ck.save_bases(out, bases, _made(cfg, "stats", model=str(args.model)), tx)
        tx.commit()
    print(bases.summary())
    print(f"statistics and bases ({cfg['rule']}, {cfg['basis_method']}) of {len(bases)}"
          f" layers in {secs:.1f} s; saved {out}")
    return 0


def _unlearn(args: argparse.Namespace) -> int:
    from ..io import Outputs
    from ..lab.lm.compare import method_task
    from ..lab.report import json_safe
    from ..lab.lm.methods import METHODS, run_method
    from ..lab.lm.metrics import LMEvaluator
    from ..lab.lm.train import save_lm
    from . import checkpoint as ck
    from .jobs import check_distinct, check_output_file
    from ..lab.report import to_json
    cfg = _config(args)
    if args.method not in METHODS or args.method in ("original", "retrain"):
        raise ValueError(f"--method must be one of "
                         f"{sorted(set(METHODS) - {'original', 'retrain'})}, got {args.method!r}")
    hp = cfg.hyper()[args.method]
    if args.lr is not None:
        hp["lr"] = args.lr
    _setup_torch(cfg)
    with Outputs() as tx:
        check_distinct({"--model": args.model, "--bases": args.bases, "--retrain": args.retrain},
                  {"--out": args.out, "--report": args.report})
        out = tx.plan(args.out, directory=True)
        report = check_output_file(args.report, "json", tx) if args.report else None
        if args.bases:
            if args.method not in ("unsc", "idk_proj"):
                raise ValueError(f"--bases is for unsc and idk_proj, not {args.method}")
            ck.require_file(args.bases, "bases file")
        _check_files(args)
        model, tok = _load(args.model, cfg)
        retrained = _load(args.retrain, cfg)[0] if args.retrain else None
        task, calib = _task(cfg, args, tok)
        mt = method_task(task, calib, model, cfg.setup(), cfg["seed"],
                         progress=not cfg["quiet"])
        if args.bases:
            mt.bases = ck.load_bases(args.bases, model)[0]
        res = run_method(args.method, mt, **hp)
        made = _made(cfg, "unlearn", method=args.method, hyperparameters=hp,
                     model=str(args.model), times=res.times)
        save_lm(out, res.model, tok, made, tx)
        if report is not None:
            evaluate = LMEvaluator(task)
            trr = evaluate.forget_truth_ratios(retrained) if retrained is not None else None
            rep = json_safe({"job": made, "info": res.info,
                             "before": evaluate(model, retrain_truth_ratios=trr),
                             "after": evaluate(res.model, retrain_truth_ratios=trr)})
            tx.stage(report, lambda f: f.write(to_json(rep)))
        tx.commit()
    print(f"{args.method}: {res.times.get('total', float('nan')):.1f} s; saved {out}"
          + (f" and {report}" if report is not None else ""))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..io import Outputs
    from ..lab.report import json_safe
    from ..lab.lm.metrics import LMEvaluator
    from .jobs import check_distinct, check_output_file
    from ..lab.report import to_json
    cfg = _config(args)
    _setup_torch(cfg)
    with Outputs() as tx:
        check_distinct({"--model": args.model, "--retrain": args.retrain}, {"--out": args.out})
        out = check_output_file(args.out, "json", tx) if args.out else None
        _check_files(args)
        model, tok = _load(args.model, cfg)
        task, _ = _task(cfg, args, tok)
        evaluate = LMEvaluator(task)
        trr = evaluate.forget_truth_ratios(_load(args.retrain, cfg)[0]) if args.retrain else None
        metrics = evaluate(model, retrain_truth_ratios=trr)
        if out is not None:
            blob = to_json(json_safe({"model": str(args.model), "metrics": metrics}))
            tx.stage(out, lambda f: f.write(blob))
        tx.commit()
    for k, v in metrics.items():
        print(f"{k:>20}: {v:.6g}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from ..io import Outputs
    from ..lab.lm.compare import as_json, markdown, run_seed
    from ..lab.report import to_json
    cfg = _config(args)
    _setup_torch(cfg)
    setup, methods = cfg.setup(), cfg["compare"]["methods"]
    with Outputs() as tx:
        out = tx.plan_dir(args.out)
        results = []
        for seed in cfg["compare"]["seeds"]:
            results.append(run_seed(setup, seed, methods, cfg.hyper(),
                                    progress=not cfg["quiet"], say=_say))
        text = markdown(results, methods, setup, cfg.text)
        blob = to_json(as_json(results, methods, setup, config=cfg.data))
        tx.stage(out / "results.md", lambda f: f.write(text.encode()))
        tx.stage(out / "report.json", lambda f: f.write(blob))
        tx.commit()
    print(text)
    print(f"wrote {out / 'results.md'} and {out / 'report.json'}")
    return 0


__all__ = ["add_parser"]
