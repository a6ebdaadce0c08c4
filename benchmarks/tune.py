"""Measure each available backend per op and write the auto backend's table.

    python -m benchmarks.tune --device cpu          # writes unsc_fast/tuned.json["cpu"]
    python -m benchmarks.tune --device cuda --dry-run

For every op, each backend that dispatch can run here (discovered with
``unsc_fast.dispatch.availability()``; Triton on CPU tensors, i.e. its interpreter, is never
a candidate) is timed on the representative shapes of :func:`benchmarks.shapes.tune_cases`
in interleaved rounds; the winner is the backend with the smallest geometric mean of its
median times relative to the reference. ``unsc_fast/tuned.json`` is
``{device_type: {op: backend}}``; other devices' entries are kept. A backend that fails on
any representative shape is not a candidate for that op.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TUNED = Path(__file__).resolve().parents[1] / "unsc_fast" / "tuned.json"


def tune(device_type: str, reps: int = 7, log=print) -> tuple[dict, dict]:
    """Returns ({op: best backend}, {op: {backend: gmean time relative to reference}})."""
    import torch

    from . import timing
    from .cases import gmean, make_inputs, make_runner, runnable_backends
    from .shapes import tune_cases

    device = torch.device(device_type)
    best, table = {}, {}
    for op, specs in tune_cases(device_type).items():
        rel: dict[str, list[float]] = {}
        failed: set[str] = set()
        for spec in specs:
            inp = make_inputs(spec, device)
            names, _ = runnable_backends(inp)
            fns = {}
            for n in names:
                if n in failed:
                    continue
                r = make_runner(inp, n)
                try:
                    r.fn()
                    timing.sync(device)
                    fns[n] = r.fn
                except Exception as exc:
                    log(f"  {op} {spec.shape_set}: {n} failed ({type(exc).__name__}: {exc})")
                    failed.add(n)
            stats = timing.time_interleaved(fns, device, reps=reps, min_reps=3,
                                            warmup=2 if device.type == "cuda" else 1,
                                            max_case_s=15.0)
            t_ref = stats.get("reference", {}).get("median_s")
            for n, s in stats.items():
                rel.setdefault(n, []).append(s["median_s"] / t_ref if t_ref else s["median_s"])
            log(f"  {op} {spec.shape_set} {spec.label}: " + ", ".join(
                f"{n} {s['median_s'] * 1e3:.3g} ms" for n, s in stats.items()))
        scores = {n: gmean(v) for n, v in rel.items()
                  if n not in failed and len(v) == len(specs)}
        if scores:
            best[op] = min(scores, key=scores.get)
        table[op] = scores
        log(f"{op}: " + ", ".join(f"{n} {v:.3f}" for n, v in sorted(scores.items(),
                                                                   key=lambda kv: kv[1]))
            + f"  -> {best.get(op)}")
    return best, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tune", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=TUNED, help="table to update (default: the"
                    " package's tuned.json)")
    ap.add_argument("--dry-run", action="store_true", help="print, do not write")
    args = ap.parse_args(argv)
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    print(f"tuning on {args.device} ({torch.get_num_threads()} threads); scores are the"
          " geometric mean of time / reference time (lower is faster)")
    best, _ = tune(args.device, args.reps)
    try:
        table = json.loads(args.out.read_text()) if args.out.exists() else {}
    except ValueError:
        table = {}
    table[args.device] = best
    text = json.dumps(table, indent=2, sort_keys=True) + "\n"
    print(text, end="")
    if not args.dry_run:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    if any(b == "reference" for b in best.values()):
        print("note: where 'reference' wins, dispatch's auto mode skips it and falls back to"
              " its default order (compiled first)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
