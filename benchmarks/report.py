"""Markdown tables and matplotlib plots from a results.json (also usable on its own:
``python -m benchmarks.report benchmarks/results/<run>/results.json`` rewrites the tables
and plots next to it)."""
from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from .cases import gmean

OPS = ("accumulate", "accumulate_conv", "project_grads")


def _f(x, fmt="{:.2f}", none="–") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return fmt.format(x)


def _ms(s) -> str:
    if s is None:
        return "–"
    return f"{s * 1e3:.3g}"


def _mib(b) -> str:
    if b is None:
        return "–"
    return f"{b / 2**20:.1f}"


def _md_table(header: list[str], rows: list[list]) -> str:
    """A markdown table: the header, the separator line, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{c}" for c in cells) + " |" for cells in rows]
    return "\n".join(lines)


def case_table(res: dict) -> str:
    """Every (case, implementation) row."""
    header = ["op", "shape set", "case", "dtype", "impl", "median ms", "IQR ms", "x ref",
              "x torch", "GB/s", "TFLOP/s", "% roofline", "peak extra MiB", "rel. err"]
    return _md_table(header, [
        [r["op"], r["shape_set"], r["label"], r["dtype"], r["backend"], _ms(r["median_s"]),
         _ms(r["iqr_s"]), _f(r["ratio_vs_reference"]), _f(r["ratio_vs_torch"]),
         _f(r["GBps"], "{:.1f}"), _f(r["TFLOPs"], "{:.3f}"), _f(r["pct_roofline"], "{:.0f}"),
         _mib(r["peak_mem_bytes"]), _f(r.get("max_rel_err"), "{:.1e}")]
        for r in res["cases"] if r.get("status") == "ok"])


def _by_op_backend(res: dict) -> dict:
    groups: dict = defaultdict(list)
    for r in res["cases"]:
        if r.get("status") == "ok" and r["op"] in OPS:
            groups[(r["op"], r["backend"])].append(r)
    return groups


def headline_rows(res: dict) -> list[dict]:
    """Per op and fast implementation: geometric-mean speed-ups and medians over its cases."""
    rows = []
    for (op, b), rs in sorted(_by_op_backend(res).items()):
        if b == "reference":
            continue
        sref = [r["ratio_vs_reference"] for r in rs if r["ratio_vs_reference"]]
        stor = [r["ratio_vs_torch"] for r in rs if r["ratio_vs_torch"]]
        roof = [r["pct_roofline"] for r in rs if r["pct_roofline"] is not None]
        mem = [(r["peak_mem_bytes"], r["_ref_mem"]) for r in rs
               if r.get("peak_mem_bytes") is not None and r.get("_ref_mem")]
        rows.append({
            "op": op, "backend": b, "cases": len(rs),
            "gmean_vs_reference": gmean(sref), "min_vs_reference": min(sref, default=None),
            "max_vs_reference": max(sref, default=None),
            "gmean_vs_torch": gmean(stor) if b != "torch" else None,
            "median_pct_roofline": statistics.median(roof) if roof else None,
            "median_mem_ratio": statistics.median(m / ref for m, ref in mem) if mem else None,
        })
    return rows


def _attach_ref_mem(res: dict) -> None:
    ref = {(r["op"], r["shape_set"], r["label"], r["dtype"]): r.get("peak_mem_bytes")
           for r in res["cases"] if r.get("backend") == "reference"}
    for r in res["cases"]:
        r["_ref_mem"] = ref.get((r["op"], r["shape_set"], r.get("label"), r["dtype"]))


def e2e_table(e2e: dict) -> str:
    header = ["pipeline", "statistics s", "bases s", "unlearning s", "total s",
              "x authors-style", "Acc_r %", "Acc_f %"]
    return _md_table(header, [
        [r["pipeline"], _f(r.get("time_stats_s"), "{:.3f}"), _f(r.get("time_bases_s"), "{:.3f}"),
         _f(r.get("time_unlearn_s"), "{:.2f}"), _f(r.get("time_total_s"), "{:.2f}"),
         _f(r.get("speedup_vs_authors")), _f(r.get("acc_r"), "{:.1f}"),
         _f(r.get("acc_f"), "{:.1f}")]
        for r in e2e["rows"]])


def summary_md(res: dict) -> str:
    """The short headline (for README.md): machine, per-op speed-ups, end to end."""
    _attach_ref_mem(res)
    m = res["meta"]
    dev = m.get("gpu") or f"{m.get('cpu_model')}, {m.get('torch_threads')} threads"
    out = [f"### unsc_fast benchmarks: {m['date']}, {m['device']} ({dev}), preset `{m['preset']}`",
           ""]
    roof = res.get("roofline") or {}
    mm = ", ".join(f"{k} {v:.3g}" for k, v in (roof.get("matmul_TFLOPs") or {}).items())
    out.append(f"Roofline measured in the same run: copy {_f(roof.get('copy_GBps'), '{:.1f}')}"
               f" GB/s, matmul TFLOP/s: {mm}. torch {m.get('torch')}, commit"
               f" {str(m.get('git_commit'))[:10]}{' (dirty tree)' if m.get('git_dirty') else ''}.")
    if m.get("loadavg_start") and m.get("device") == "cpu":
        la0, la1 = m["loadavg_start"][0], (m.get("loadavg_end") or [None])[0]
        out += ["", f"1-min load average at start / end: {la0:.1f} / {_f(la1, '{:.1f}')}"
                f" on {m.get('cpu_count')} cores."]
    if m.get("notes"):
        out.append("")
        out += [f"*{n}*" for n in m["notes"]]
    header = ["op", "impl", "cases", "speed-up vs reference (geo-mean, min-max)",
              "vs torch primitive (geo-mean)", "median % of roofline", "peak memory vs reference"]
    out += ["", _md_table(header, [
        [r["op"], r["backend"], r["cases"],
         f"{_f(r['gmean_vs_reference'])}x ({_f(r['min_vs_reference'])}-"
         f"{_f(r['max_vs_reference'])})",
         _f(r["gmean_vs_torch"], "{:.2f}x"), _f(r["median_pct_roofline"], "{:.0f}"),
         _f(r["median_mem_ratio"], "{:.2f}x")]
        for r in headline_rows(res)])]
    out.append("")
    out.append("Speed-up = reference time / implementation time (median of interleaved"
               " repetitions; > 1 is faster). `torch` is the best plain-torch primitive for the"
               " same math. % of roofline credits dense-equivalent FLOPs, so a kernel that"
               " skips the lower triangle of S can exceed 100. Per-case numbers with IQR:"
               " table.md; raw data: results.json.")
    if res.get("e2e"):
        e = res["e2e"]
        c = e["config"]
        out += ["", f"End to end ({c['dataset']}, {c['model']}, forget class(es)"
                f" {c['forget_classes']}, {c['unlearn_epochs']} unlearning epochs,"
                f" {c['retain_samples']} retained / {c['forget_samples']} forgotten samples,"
                f" median of {c['reps']}):", "", e2e_table(e)]
    return "\n".join(out) + "\n"


def full_md(res: dict) -> str:
    parts = [summary_md(res), "", "## All cases", "", case_table(res)]
    skipped = [c for c in res["cases"] if c.get("status") != "ok"]
    if skipped:
        parts += ["", "## Not run", ""]
        parts += [f"- {c['op']} {c['shape_set']} {c.get('label', '')} {c['dtype']}"
                  f" {c.get('backend', '')}: {c.get('status')}" for c in skipped]
    if res.get("memory_method"):
        parts += ["", f"Peak memory: {res['memory_method']}."]
    return "\n".join(parts) + "\n"


# ---- plots -------------------------------------------------------------------------------

_MARK = {"float32": "o", "bfloat16": "s", "float16": "^", "float64": "D"}


def plots(res: dict, out_dir: Path) -> list[Path]:
    """speedup.png, memory.png and (with end-to-end data) e2e.png; [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return []

    def fmt(ax, x_suffix="", y_suffix=""):
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{x_suffix}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{y_suffix}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())

    def label_axes(ax, op, xlabel, ylabel):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(op)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)

    written = []

    def save_fig(fig, name):
        fig.tight_layout()
        p = out_dir / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    cases = [r for r in res["cases"] if r.get("status") == "ok" and r["op"] in OPS]
    ops = [op for op in OPS if any(r["op"] == op for r in cases)]
    title = f"{res['meta']['device']}: {res['meta'].get('gpu') or res['meta'].get('cpu_model')}"

    if ops:
        fig, axes = plt.subplots(1, len(ops), figsize=(5.2 * len(ops), 4.2), squeeze=False)
        for ax, op in zip(axes[0], ops):
            for b in sorted({r["backend"] for r in cases if r["op"] == op} - {"reference"}):
                for dt in sorted({r["dtype"] for r in cases if r["op"] == op}):
                    pts = sorted((r["flops"], r["ratio_vs_reference"]) for r in cases
                                 if r["op"] == op and r["backend"] == b and r["dtype"] == dt
                                 and r["ratio_vs_reference"])
                    if pts:
                        ax.plot(*zip(*pts), marker=_MARK.get(dt, "o"), ls="",
                                label=f"{b} {dt}")
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            fmt(ax, y_suffix="x")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
            label_axes(ax, op, "FLOPs per call (dense-equivalent)", "speed-up vs reference")
        fig.suptitle(f"Speed-up vs size ({title})", fontsize=10)
        save_fig(fig, "speedup.png")

        fig, axes = plt.subplots(1, len(ops), figsize=(5.2 * len(ops), 4.2), squeeze=False)
        for ax, op in zip(axes[0], ops):
            for b in sorted({r["backend"] for r in cases if r["op"] == op}):
                pts = sorted((r["input_bytes"] / 2**20, max(r["peak_mem_bytes"], 4096) / 2**20)
                             for r in cases if r["op"] == op and r["backend"] == b
                             and r.get("peak_mem_bytes") is not None)
                if pts:
                    ax.plot(*zip(*pts), marker="o", ls="", alpha=0.8, label=b)
            ax.set_xscale("log")
            ax.set_yscale("log")
            fmt(ax)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            label_axes(ax, op, "inputs + state (MiB)", "peak extra memory of one call (MiB)")
        fig.suptitle(f"Peak extra memory vs size ({title}); floor at 4 KiB", fontsize=10)
        save_fig(fig, "memory.png")

    if res.get("e2e"):
        rows = res["e2e"]["rows"]
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.6))
        names = [r["pipeline"] for r in rows]
        left = [0.0] * len(rows)
        for key, label in (("time_stats_s", "statistics"), ("time_bases_s", "bases"),
                           ("time_unlearn_s", "unlearning epochs")):
            vals = [r.get(key) or 0.0 for r in rows]
            ax.barh(names, vals, left=left, label=label)
            left = [a + b for a, b in zip(left, vals)]
        other = [max(0.0, (r.get("time_total_s") or 0.0) - lft) for r, lft in zip(rows, left)]
        ax.barh(names, other, left=left, label="training / other", color="lightgrey")
        ax.set_xlabel("seconds (median)")
        ax.invert_yaxis()
        ax.legend(fontsize=8)
        ax.set_title(f"End to end ({title})", fontsize=10)
        save_fig(fig, "e2e.png")
    return written


def write_reports(res: dict, out_dir: Path, make_plots: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(summary_md(res))
    (out_dir / "table.md").write_text(full_md(res))
    for r in res["cases"]:
        r.pop("_ref_mem", None)
    files = [out_dir / "summary.md", out_dir / "table.md"]
    if make_plots:
        files += plots(res, out_dir)
    return files


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m benchmarks.report RESULTS_JSON", file=sys.stderr)
        return 2
    path = Path(argv[0])
    res = json.loads(path.read_text())
    for p in write_reports(res, path.parent):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
