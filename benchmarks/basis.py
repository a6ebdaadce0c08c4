"""The basis step at LLM width: ``method="fast"`` (:mod:`unsc_fast.spectral`) against
``torch.linalg.eigh`` in float64 (the reference) and in float32 (torch's cheaper primitive),
timed in the same run, with the retained energy and core rank of each.

    python -m benchmarks.basis --dims 1024 2048 4096 --out DIR     # basis.md and basis.json

Covariances: eigenvalues i^-alpha (activation-like decay; alpha 2 puts the 0.99-energy core at
a few percent of d, alpha 1.5 near half of d) in a basis mixed by 6 random Householder
reflections (dense eigenvectors at O(d²) set-up cost; eigh's work does not depend on them).
Rule: energy 0.99. Each method gets the covariance in float32, the dtype the statistics are
kept in by default. The three methods run in turn, 5 rounds per cell (one at d >= 8192, where
a float64 eigh takes minutes), and each time is the median over rounds: at d = 4096 single
runs of the fast method spread by +-20 % on a quiet 2-core machine, and the machine's speed
drifts within minutes, so every method is timed under the same drift. The table also lists
the speed-up of each round, in round order.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from unsc_fast import reference as ref
from unsc_fast import spectral
from unsc_fast.rules import Energy

from .timing import machine_info


def covariance(d: int, alpha: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    C = torch.diag(torch.arange(1, d + 1, dtype=torch.float64) ** -alpha)
    for _ in range(6):  # C ← H C H with H = I − 2vvᵀ, in O(d²)
        v = torch.randn(d, 1, generator=g, dtype=torch.float64)
        v /= v.norm()
        Cv = C @ v
        C = C - 2 * v @ Cv.mT - 2 * Cv @ v.mT + 4 * (v.mT @ Cv) * (v @ v.mT)
    return (C + C.mT) / 2


def _interleaved(fns: dict, reps: int) -> tuple[dict, dict, list[dict]]:
    """Run the methods in turn, ``reps`` rounds, the order rotated each round: a shared
    machine's speed drifts by +-20 % within minutes, and a round-robin puts every method
    under the same drift (and after each other method alike). Returns the median time and
    last output per method, and each round's times, in round order."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    rounds, outs, names = [], {}, list(fns)
    for i in range(reps):
        times = {}
        for name in names[i % len(names):] + names[:i % len(names)]:
            outs.pop(name, None)          # the previous round's d x d result: not kept alive
            t = time.perf_counter()
            outs[name] = fns[name]()
            times[name] = time.perf_counter() - t
        rounds.append(times)
    med = {name: statistics.median(r[name] for r in rounds) for name in fns}
    return med, outs, rounds


def run(dims: list[int], alphas: list[float], eps: float, reps: int | None = None
        ) -> list[dict]:
    rule = Energy(eps)
    rows = []
    for d in dims:
        for alpha in alphas:
            # the statistic as SecondMoments stores it by default (float32); eigh_desc makes
            # its float64 copy inside the timed call
            C = covariance(d, alpha).float()
            n = reps if reps is not None else (1 if d >= 8192 else 5)
            med, out, rounds = _interleaved({
                "eigh64": lambda: ref.eigh_desc(C),
                "eigh32": lambda: torch.linalg.eigh(C.float()),
                "fast": lambda: spectral.fast_core(C, rule)}, n)
            ev, V = out["eigh64"]
            core = out["fast"]
            r64 = rule.rank(ev)
            per_round = [r["eigh64"] / r["fast"] for r in rounds]
            rows.append({
                "d": d, "alpha": alpha, "eps": eps, "reps": n,
                "eigh64_s": med["eigh64"], "eigh32_s": med["eigh32"], "fast_s": med["fast"],
                "speedup_vs_eigh64": med["eigh64"] / med["fast"],
                "speedup_vs_eigh32": med["eigh32"] / med["fast"],
                "speedup_vs_eigh64_per_round": per_round,
                "rank_exact": r64, "rank_fast": core.rank, "route": core.method,
                "rank_excess_pct": 100.0 * (core.rank - r64) / max(r64, 1),
                "energy_exact_core": spectral.retained_energy(C, V[:, :r64]),
                "energy_fast_core": spectral.retained_energy(C, core.basis),
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], info: dict) -> str:
    out = [f"# Basis step: fast method vs eigh (CPU, {info['torch_threads']} threads)", "",
           f"{info['cpu_model']}; torch {info['torch']}; commit {info['git_commit'][:10]};"
           f" load average at start {info.get('loadavg_start')}", "",
           "| d | alpha | eigh fp64 (s) | eigh fp32 (s) | fast (s) | vs fp64 | vs fp64, each"
           " round | vs fp32 | rank exact / fast | energy kept (fast) | route |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['d']} | {r['alpha']} | {r['eigh64_s']:.2f} | {r['eigh32_s']:.2f} |"
                   f" {r['fast_s']:.2f} | {r['speedup_vs_eigh64']:.1f}x |"
                   f" {' '.join(f'{x:.1f}' for x in r['speedup_vs_eigh64_per_round'])} |"
                   f" {r['speedup_vs_eigh32']:.1f}x | {r['rank_exact']} / {r['rank_fast']} |"
                   f" {r['energy_fast_core']:.5f} | {r['route']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--alphas", type=float, nargs="+", default=[2.0, 1.5])
    p.add_argument("--eps", type=float, default=0.99)
    p.add_argument("--reps", type=int, default=None,
                   help="rounds per cell (default 5, 1 at d >= 8192)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    info = machine_info(torch.device("cpu"))
    rows = run(args.dims, args.alphas, args.eps, args.reps)
    md = markdown(rows, info)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "basis.md").write_text(md)
        (args.out / "basis.json").write_text(json.dumps({"machine": info, "rows": rows},
                                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
