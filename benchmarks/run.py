"""The benchmark suite in one command.

    python -m benchmarks.run --device cpu --quick --out benchmarks/results/<date>-cpu-<machine>/
    python -m benchmarks.run --device cuda --out "$OUT/bench"

Times every implementation of the three ops that is available here (discovered at run time
through ``unsc_fast.dispatch.availability()``, each forced with ``backend=``) and the best
plain-torch primitive for the same math, on shapes from real models (:mod:`benchmarks.shapes`);
measures the roofline of the machine in the same run; measures peak memory; runs one whole
UNSC job per pipeline (:mod:`benchmarks.e2e`). Prints a markdown table and writes
``results.json`` (rewritten after every case, so a run cut short keeps what it measured),
``summary.md`` (the headline), ``table.md`` (every case) and PNG plots into ``--out``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

SCHEMA = "unsc_fast.benchmarks/1"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default benchmarks/results/<date>-<device>)")
    ap.add_argument("--quick", action="store_true", help="same as --preset quick")
    ap.add_argument("--preset", default=None, choices=["smoke", "quick", "full"],
                    help="sizes and repetitions (default: full; --quick: quick)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per case")
    ap.add_argument("--ops", default=None,
                    help="comma-separated subset of accumulate,accumulate_conv,project_grads,eigh")
    ap.add_argument("--match", default=None, help="only cases whose shape set contains this")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end runs")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--memory", default="auto", choices=["auto", "on", "shared", "off"],
                    help="peak-memory measurement. CPU: 'on' = a fresh subprocess per case,"
                         " 'shared' = one subprocess for all cases after the timings, 'auto'"
                         " = 'on' for the full preset, 'shared' for quick and smoke")
    ap.add_argument("--include-interpreted", action="store_true",
                    help="also time Triton on CPU tensors (its interpreter: ~1000x slow)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop starting new op cases after this many seconds (the rest are"
                         " recorded as skipped); the end-to-end part still runs")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--note", action="append", default=[],
                    help="a note stored with the results (repeatable)")
    args = ap.parse_args(argv)
    args.preset = args.preset or ("quick" if args.quick else "full")
    if args.memory == "auto":
        args.memory = "on" if args.preset == "full" else "shared"
    return args


PRESET_TIMING = {  # reps, min reps, max seconds per case, min seconds per sample
    "smoke": (1, 1, 2.0, 0.0),
    "quick": (5, 3, 3.0, 2e-3),
    "full": (15, 5, 20.0, 2e-3),
}


def _save(res: dict, out: Path) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(res, indent=1, default=str))
    tmp.replace(out / "results.json")


def _command(argv: list[str]) -> str:
    """The command line, with an absolute --out reduced to its last folder (no machine paths
    in results that get committed)."""
    parts, prev = [], None
    for a in argv:
        if prev == "--out" and os.path.isabs(a):
            a = ".../" + Path(a).name
        elif a.startswith("--out=") and os.path.isabs(a[6:]):
            a = "--out=.../" + Path(a[6:]).name
        parts.append(a if " " not in a else repr(a))
        prev = a
    return "python -m benchmarks.run " + " ".join(parts)


_REPO = str(Path(__file__).resolve().parents[1])


def _short(msg: str, n: int = 160) -> str:
    """One line, at most n characters, with this machine's repository and Python prefixes
    replaced (messages land in results that get committed)."""
    msg = " ".join(str(msg).split()).replace(_REPO, "<repo>").replace(sys.prefix, "<python>")
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def run_case(spec, device, args, roof, log) -> list[dict]:
    """Time, check and measure one case; one record per implementation."""
    import torch

    from . import timing
    from .cases import (TORCH, TORCH_PRIMITIVE, cost, make_inputs, make_runner, rel_error,
                        runner_names)

    reps, min_reps, max_case_s, min_sample = PRESET_TIMING[args.preset]
    if args.reps is not None:
        reps = args.reps
        min_reps = min(min_reps, reps)
    inp = make_inputs(spec, device)
    names, not_run = runner_names(inp, args.include_interpreted)
    runners = {n: make_runner(inp, n) for n in names}
    # First call from a fresh state: the correctness check (and the first warm-up).
    outputs, errors = {}, {}
    for n, r in list(runners.items()):
        try:
            r.fn()
            timing.sync(device)
            outputs[n] = r.result().clone()
        except Exception as exc:  # a failing backend is a result, not a crash of the suite
            errors[n] = f"error: {type(exc).__name__}: {_short(exc)}"
            runners.pop(n)
    base = "reference" if "reference" in outputs else TORCH
    rel = {n: (rel_error(o, outputs[base]) if base in outputs and n != base else
               (0.0 if n == base else None)) for n, o in outputs.items()}
    del outputs
    warmup = 2 if device.type == "cuda" else 1
    stats = timing.time_interleaved({n: r.fn for n, r in runners.items()}, device, reps=reps,
                                    min_reps=min_reps, warmup=warmup, min_sample_s=min_sample,
                                    max_case_s=max_case_s)
    mem: dict = {}
    if args.memory != "off":
        if device.type == "cuda":
            for n in list(runners):
                runners[n] = None
            torch.cuda.empty_cache()
            for n in stats:
                r = make_runner(inp, n)
                try:
                    mem[n] = timing.cuda_peak_bytes(r.fn, device)
                except Exception as exc:
                    mem["_error"] = _short(exc)
                del r
        elif args.memory == "on":
            runners.clear()
            mem = timing.cpu_peak_bytes_subprocess([(spec.to_dict(), list(stats))],
                                                   torch.get_num_threads())[0]
    c = cost(spec)
    t_ref = stats.get("reference", {}).get("median_s")
    t_torch = stats.get(TORCH, {}).get("median_s")
    records = []
    for n, s in stats.items():
        rates = timing.roofline_pct(c["flops"], c["bytes"], s["median_s"], roof,
                                    c["compute_dtype"])
        records.append({
            "op": spec.op, "shape_set": spec.shape_set, "label": spec.label,
            "params": spec.params, "dtype": spec.dtype, "backend": n,
            "impl": TORCH_PRIMITIVE[spec.op] if n == TORCH else
            f"unsc_fast.ops.{spec.op}_(backend={n!r})",
            "status": "ok", **s, **c, **rates,
            "ratio_vs_reference": t_ref / s["median_s"] if t_ref else None,
            "ratio_vs_torch": t_torch / s["median_s"] if t_torch else None,
            "peak_mem_bytes": mem.get(n), "max_rel_err": rel.get(n),
            "rel_err_baseline": base,
            "not_run": {k: _short(v, 120) for k, v in not_run.items()},
        })
    for n, e in errors.items():
        records.append({"op": spec.op, "shape_set": spec.shape_set, "label": spec.label,
                        "params": spec.params, "dtype": spec.dtype, "backend": n,
                        "status": e})
    _attach_memory(records, mem)
    del inp, runners
    return records


def _attach_memory(records: list[dict], mem: dict) -> None:
    for r in records:
        if r.get("status") == "ok" and r["backend"] in mem:
            r["peak_mem_bytes"] = mem[r["backend"]]
        if mem.get("_error"):
            r["memory_error"] = _short(mem["_error"], 300)


def _shared_memory_pass(res: dict, specs: list, log) -> None:
    """--memory shared on CPU: every case's peak memory from one worker process."""
    import torch

    from . import timing

    jobs, targets = [], []
    for spec in specs:
        recs = [r for r in res["cases"] if r.get("status") == "ok" and r["op"] == spec.op
                and r["shape_set"] == spec.shape_set and r["label"] == spec.label
                and r["dtype"] == spec.dtype]
        if recs:
            jobs.append((spec.to_dict(), [r["backend"] for r in recs]))
            targets.append(recs)
    if not jobs:
        return
    log(f"peak memory of {len(jobs)} cases in one worker process")
    for recs, mem in zip(targets, timing.cpu_peak_bytes_subprocess(jobs,
                                                                    torch.get_num_threads())):
        _attach_memory(recs, mem)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    t0 = time.perf_counter()
    import torch

    from unsc_fast import dispatch

    from . import e2e as e2e_mod
    from . import report, timing
    from .cases import device_backends
    from .shapes import suite

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    today = _dt.date.today().isoformat()
    out = args.out or Path(__file__).resolve().parent / "results" / f"{today}-{args.device}"
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    meta = timing.machine_info(device)
    meta.update(date=today, preset=args.preset, schema=SCHEMA,
                command=_command(sys.argv[1:] if argv is None else argv),
                backend_availability={k: _short(v, 200) for k, v in
                                      dispatch.availability().items()},
                notes=list(args.note))
    res: dict = {"schema": SCHEMA, "meta": meta, "roofline": None, "cases": [], "e2e": None,
                 "memory_method": None if args.memory == "off" else
                 (timing.CUDA_MEMORY_METHOD if device.type == "cuda"
                  else timing.CPU_MEMORY_METHOD if args.memory == "on"
                  else timing.CPU_MEMORY_METHOD.replace("fresh subprocess per case",
                                                        "one subprocess for all cases"))}
    log(f"# unsc_fast benchmarks on {args.device} ({meta.get('gpu') or meta['cpu_model']},"
        f" {meta['torch_threads']} threads), preset {args.preset}")
    log(f"backends: {meta['backend_availability']}")

    res["roofline"] = timing.measure_roofline(device, args.preset)
    rf = res["roofline"]
    log(f"roofline: copy {rf['copy_GBps']:.1f} GB/s; matmul TFLOP/s "
        + ", ".join(f"{k} {v:.3g}" for k, v in rf["matmul_TFLOPs"].items()))
    _save(res, out)

    specs = suite(args.device, args.preset)
    if args.ops:
        wanted = {o.strip() for o in args.ops.split(",")}
        specs = [s for s in specs if s.op in wanted]
    if args.match:
        specs = [s for s in specs if args.match in s.shape_set]
    for i, spec in enumerate(specs, 1):
        if args.budget_s is not None and time.perf_counter() - t0 > args.budget_s:
            res["cases"].append({"op": spec.op, "shape_set": spec.shape_set,
                                 "label": spec.label, "dtype": spec.dtype,
                                 "params": spec.params, "status": "skipped: time budget"})
            continue
        tc = time.perf_counter()
        try:
            recs = run_case(spec, device, args, rf, log)
        except Exception as exc:  # keep going: one bad case must not lose the others
            recs = [{"op": spec.op, "shape_set": spec.shape_set, "label": spec.label,
                     "dtype": spec.dtype, "params": spec.params,
                     "status": f"error: {type(exc).__name__}: {_short(exc)}"}]
        res["cases"] += recs
        _save(res, out)
        line = "  ".join(f"{r['backend']} {r['median_s'] * 1e3:.3g}ms"
                         + (f" x{r['ratio_vs_reference']:.2f}" if r.get("ratio_vs_reference")
                            and r["backend"] != "reference" else "")
                         for r in recs if r.get("status") == "ok")
        bad = [f"{r.get('backend', '')} {r['status']}" for r in recs if r.get("status") != "ok"]
        log(f"[{i}/{len(specs)}] {spec.op} {spec.shape_set} {spec.label} {spec.dtype}:"
            f" {line}{'  ' + '; '.join(bad) if bad else ''}  ({time.perf_counter() - tc:.1f} s)")
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if args.memory == "shared" and device.type == "cpu":
        _shared_memory_pass(res, specs, log)
        _save(res, out)

    if not args.no_e2e:
        log("end to end:")
        try:
            res["e2e"] = e2e_mod.run_e2e(device, e2e_mod.PRESETS[args.preset],
                                         device_backends(device, args.include_interpreted),
                                         log=log)
        except Exception as exc:
            res["e2e_status"] = f"error: {type(exc).__name__}: {_short(exc, 300)}"
            log(f"  e2e failed: {res['e2e_status']}")
    # The roofline again at the end: on a shared machine the best of the two is the limit.
    end = timing.measure_roofline(device, args.preset)
    res["roofline_start"], res["roofline_end"] = dict(rf), end
    rf["copy_GBps"] = max(rf["copy_GBps"], end["copy_GBps"])
    for k, v in end["matmul_TFLOPs"].items():
        rf["matmul_TFLOPs"][k] = max(rf["matmul_TFLOPs"].get(k, 0.0), v)
    rf["note"] += "; best of a measurement at the start and one at the end of the run"
    for r in res["cases"]:
        if r.get("status") == "ok":
            r.update(timing.roofline_pct(r["flops"], r["bytes"], r["median_s"], rf,
                                         r["compute_dtype"]))
    log(f"roofline (best of start/end): copy {rf['copy_GBps']:.1f} GB/s; matmul TFLOP/s "
        + ", ".join(f"{k} {v:.3g}" for k, v in rf["matmul_TFLOPs"].items()))
    try:
        meta["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    meta["wall_s"] = time.perf_counter() - t0
    _save(res, out)
    files = report.write_reports(res, out, make_plots=not args.no_plots)
    _save(res, out)
    print()
    print((out / "table.md").read_text())
    log(f"wrote {out / 'results.json'} and {', '.join(p.name for p in files)}"
        f" in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
