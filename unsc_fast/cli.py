"""Command line: ``unsc-fast`` / ``python -m unsc_fast``."""
from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import torch

    from . import unlearn
    from .data import class_split, load_dataset, loader
    from .metrics import accuracy, class_accuracies
    from .models import build_model
    from .train import train

    torch.manual_seed(args.seed)
    split = load_dataset(args.dataset, seed=args.seed)
    forget = [int(c) for c in args.forget]
    bad = [c for c in forget if not 0 <= c < split.num_classes]
    if bad:
        raise SystemExit(f"error: unknown class {bad} for {args.dataset}"
                         f" (classes 0..{split.num_classes - 1})")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unsc-fast",
        description="Machine unlearning via null space calibration (UNSC).")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a small model on built-in data, forget a class,"
                       " print the before/after table")
    d.add_argument("--dataset", default="mnist5k", help="mnist5k | digits | synthetic")
    d.add_argument("--model", default="small_cnn", help="small_cnn | mlp")
    d.add_argument("--forget", nargs="+", default=["3"], help="class(es) to forget")
    d.add_argument("--rule", default="energy:0.99", help="rank rule, e.g. energy:0.99")
    d.add_argument("--lr", type=float, default=0.04)
    d.add_argument("--epochs", type=int, default=20, help="unlearning epochs")
    d.add_argument("--train-epochs", type=int, default=4, help="epochs for the original")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
