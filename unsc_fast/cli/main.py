"""Command line: ``unsc-fast`` / ``python -m unsc_fast``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .. import unlearn
    from ..lab.data import class_split, load_dataset, loader
    from ..lab.metrics import accuracy, class_accuracies
    from ..lab.models import build_model
    from ..lab.train import train

    from .config import build_config
    from ..lab.scenarios import Scenario

    # the job's checks, before any work: types and ranges of every flag
    build_config(None, {"dataset": args.dataset, "model": args.model, "forget": args.forget,
                        "rule": args.rule, "lr": args.lr, "epochs": args.epochs,
                        "train_epochs": args.train_epochs, "batch_size": args.batch_size,
                        "seed": args.seed, "quiet": args.quiet})
    torch.manual_seed(args.seed)
    split = load_dataset(args.dataset, seed=args.seed)
    forget = sorted(args.forget)
    Scenario(kind="classes", classes=forget).validate(split.num_classes)
    model = build_model(args.model, split.input_shape, split.num_classes)
    t = time.perf_counter()
    train(model, loader(split.train, 64, True, args.seed), epochs=args.train_epochs,
          progress=not args.quiet)
    t_train = time.perf_counter() - t
    retain, forget_set = class_split(split.train, forget)
    test = loader(split.test, 512)
    t = time.perf_counter()
    res = unlearn(model, loader(forget_set, args.batch_size, True, args.seed),
                  loader(retain, 256), forget_classes=forget, lr=args.lr, epochs=args.epochs,
                  rule=args.rule, progress=not args.quiet)
    t_unlearn = time.perf_counter() - t
    rows = []
    for name, m, secs in (("original", model, t_train), ("UNSC", res.model, t_unlearn)):
        acc = class_accuracies(m, test, forget, split.num_classes)
        rows.append((name, 100 * acc["acc_r"], 100 * acc["acc_f"],
                     100 * accuracy(m, loader(retain, 512)),
                     100 * accuracy(m, loader(forget_set, 512)), secs))
    print(f"\nUNSC on {args.dataset} ({args.model}), forgetting class(es) {forget}:\n")
    print("| model | Acc_r test % | Acc_f test % | D_r train % | D_f train % | time s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.1f} |")
    return 0


# -- the job subcommands -----------------------------------------------------------------------

def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common (override the config file)")
    g.add_argument("--config", metavar="TOML", help="a TOML config file (flags override it)")
    g.add_argument("--dataset", help="mnist5k | digits | synthetic | fashion_mnist | cifar10"
                   " | cifar100 | svhn (the last four read local files from --data-root)")
    g.add_argument("--data-root", metavar="DIR", help="directory of local data set files")
    g.add_argument("--data-seed", type=int, metavar="N",
                   help="train/test split of built-in data, k-means and random picks")
    g.add_argument("--model", help="small_cnn | mlp | alexnet | allcnn | vgg11_bn | resnet18")
    g.add_argument("--width", type=float, help="channel / hidden-size multiplier (default 1)")
    g.add_argument("--seed", type=int, help="seed of model init, shuffling, dropout, labels")
    g.add_argument("--device", help="cpu (default) or cuda")
    g.add_argument("--backend", help="kernel backend: reference | cpp | cuda | triton | auto")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bars")


def _scenario(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scenario (what to forget)")
    g.add_argument("--scenario", choices=["class", "classes", "subclass", "random"],
                   help="class(es): whole classes; subclass: a k-means cluster of one class;"
                   " random: random training samples")
    g.add_argument("--forget", type=int, nargs="+", metavar="C",
                   help="class(es) to forget (class / classes / subclass)")
    g.add_argument("--subclass-k", type=int, metavar="K", help="subclass: k-means clusters")
    g.add_argument("--cluster", type=int, help="subclass: which cluster (0 = largest)")
    g.add_argument("--count", type=int, help="random: number of samples to forget")
    g.add_argument("--fraction", type=float, help="random: share of samples to forget")


def _train_flags(p: argparse.ArgumentParser, primary: bool = False) -> None:
    g = p.add_argument_group("training (original model, retrain baseline)")
    names = (lambda a: [f"--{a}", f"--train-{a}"]) if primary else (lambda a: [f"--train-{a}"])
    g.add_argument(*names("epochs"), dest="train_epochs", type=int, metavar="N")
    g.add_argument(*names("lr"), dest="train_lr", type=float, metavar="LR")
    g.add_argument(*names("batch-size"), dest="train_batch_size", type=int, metavar="N")
    g.add_argument("--optimizer", choices=["adam", "sgd"])


def _unlearn_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("unlearning")
    g.add_argument("--rule", help="rank rule: energy:0.99 | floor:10 | threshold:0.01 | rank:K")
    g.add_argument("--lr", type=float, help="unlearning learning rate")
    g.add_argument("--epochs", type=int, help="unlearning epochs")
    g.add_argument("--batch-size", type=int, help="unlearning batch size (D_f)")
    g.add_argument("--max-retain-samples", type=int, metavar="N",
                   help="cap on the D_r samples the statistics see")
    g.add_argument("--include-bias", action="store_true", default=None,
                   help="cover biases by a constant-1 input feature")
    g.add_argument("--stats-dtype", choices=("float32", "float64"),
                   help="accumulation dtype of the statistics (float64 for tiny inputs)")


def _eval_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--mia-feature", choices=["confidence", "entropy", "both"])
    g.add_argument("--no-mia", action="store_true", default=None,
                   help="skip the membership-inference attacks")


def _job(p: argparse.ArgumentParser, func, *groups) -> None:
    """Finish a job subcommand after its own options: the common flag group, then ``groups``
    in the order its help lists them, and ``func`` to run it."""
    for add_group in (_common, *groups):
        add_group(p)
    p.set_defaults(func=func)


def _config(args: argparse.Namespace):
    from .config import build_config
    return build_config(args.config, vars(args))


def _train(args: argparse.Namespace) -> int:
    from .jobs import train_job
    train_job(_config(args), args.out, exclude_classes=args.exclude_classes)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from .jobs import stats_job
    stats_job(_config(args), args.checkpoint, args.out, bases_out=args.bases_out)
    return 0


def _unlearn(args: argparse.Namespace) -> int:
    from .jobs import unlearn_job
    unlearn_job(_config(args), args.checkpoint, args.out, stats=args.stats, bases=args.bases,
                method=args.method, report=args.report, bases_out=args.bases_out)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .jobs import evaluate_job
    evaluate_job(_config(args), args.checkpoint, out=args.out)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .jobs import compare_job
    compare_job(_config(args), args.out, figures=not args.no_figures)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unsc-fast",
        description="Machine unlearning via null space calibration (UNSC).",
        epilog="Each subcommand takes --config FILE.toml; flags override the file."
        " Exit status: 0 ok, 1 error (message on stderr), 2 bad command line.")
    from .. import __version__
    p.add_argument("--version", action="version", version=f"unsc-fast {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a small model on built-in data, forget a class,"
                       " print the before/after table")
    d.add_argument("--dataset", default="mnist5k", help="mnist5k | digits | synthetic")
    d.add_argument("--model", default="small_cnn", help="small_cnn | mlp")
    d.add_argument("--forget", type=int, nargs="+", default=[3], metavar="C",
                   help="class(es) to forget")
    d.add_argument("--rule", default="energy:0.99", help="rank rule, e.g. energy:0.99")
    d.add_argument("--lr", type=float, default=0.04)
    d.add_argument("--epochs", type=int, default=20, help="unlearning epochs")
    d.add_argument("--train-epochs", type=int, default=4, help="epochs for the original")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)

    t = sub.add_parser("train", help="train the original model (or, with --exclude-classes,"
                       " the retrain-from-scratch baseline) and save a checkpoint")
    t.add_argument("--out", required=True, metavar="CKPT",
                   help="checkpoint to write (.safetensors, or .pt/.pth for torch.save)")
    t.add_argument("--exclude-classes", type=int, nargs="+", metavar="C",
                   help="leave these classes out of training (the retrain baseline)")
    _job(t, _train, partial(_train_flags, primary=True))

    s = sub.add_parser("stats", help="second moments of every layer's inputs over D_r, saved")
    s.add_argument("--checkpoint", required=True, metavar="CKPT", help="the original model")
    s.add_argument("--out", required=True, metavar="FILE", help="statistics file to write")
    s.add_argument("--bases-out", metavar="FILE", help="also compute and save the bases")
    _job(s, _stats, _scenario, _unlearn_flags)

    u = sub.add_parser("unlearn", help="forget D_f from a checkpoint (UNSC or a baseline)")
    u.add_argument("--checkpoint", required=True, metavar="CKPT", help="the original model")
    u.add_argument("--out", required=True, metavar="CKPT", help="unlearned model to write")
    src = u.add_mutually_exclusive_group()
    src.add_argument("--stats", metavar="FILE", help="saved second moments (from `stats`)")
    src.add_argument("--bases", metavar="FILE", help="saved bases (from `stats --bases-out`)")
    u.add_argument("--method", default="unsc", help="unsc (default) | retrain | finetune |"
                   " grad_ascent | random_labels | random_labels_proj | boundary_shrink | salun")
    u.add_argument("--report", metavar="JSON", help="evaluate before/after, write a report")
    u.add_argument("--bases-out", metavar="FILE", help="save the bases UNSC computed")
    _job(u, _unlearn, _scenario, _unlearn_flags, _train_flags, _eval_flags)

    e = sub.add_parser("evaluate", help="Acc_r / Acc_f / train accuracies / MIA of checkpoints")
    e.add_argument("--checkpoint", required=True, nargs="+", metavar="CKPT")
    e.add_argument("--out", metavar="JSON", help="write the JSON report here")
    _job(e, _evaluate, _scenario, _eval_flags)

    c = sub.add_parser("compare", help="original vs retrain vs UNSC vs baselines over seeds:"
                       " report.json, results.md, per_class.png, methods.png")
    c.add_argument("--out", required=True, metavar="DIR", help="output directory")
    c.add_argument("--methods", nargs="+", metavar="M",
                   help="methods (default: all but retrain_reseeded, a second retrained"
                        " model that measures the gaps' noise floor)")
    c.add_argument("--seeds", type=int, nargs="+", metavar="S", help="seeds (default: 0)")
    c.add_argument("--no-figures", action="store_true", help="skip the PNGs")
    _job(c, _compare, _scenario, _train_flags, _unlearn_flags, _eval_flags)

    from .lm import add_parser as add_lm
    add_lm(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    import signal
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler and \
            getattr(signal.getsignal(signal.SIGINT), "__name__", "") == "_interrupted":
        signal.signal(signal.SIGINT, signal.default_int_handler)   # start-up guard over
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("unsc-fast: interrupted", file=sys.stderr)
        return 130
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("unsc-fast: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("UNSC_FAST_DEBUG"):
            raise
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        if not isinstance(exc, (ValueError, OSError, ImportError, ArithmeticError)):
            # not one of ours (a bug, or a check we lack): name it, offer the traceback
            msg = f"{type(exc).__name__}: {msg} (UNSC_FAST_DEBUG=1 shows the traceback)"
        msg = " ".join(msg.split()) or type(exc).__name__       # one line
        print(f"unsc-fast {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
