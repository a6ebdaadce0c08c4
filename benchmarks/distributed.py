"""The distributed steps of UNSC on a real model's layer set, over ``world`` local ranks.

    python -m benchmarks.distributed --model allcnn --world 2 --out DIR     # CPU, gloo
    torchrun --nproc_per_node 8 -m benchmarks.distributed --model llama2_7b --out DIR   # GPUs

Per step, what a user would write without ``unsc_fast.distributed`` against what it does, in
the same run, on the same statistics (a random symmetric positive definite S per layer):

- ``all_reduce``: one ``dist.all_reduce`` of every full S (per layer) vs
  ``SecondMoments.all_reduce_()`` (upper block rows only, bucketed): time and bytes sent;
- ``bases``: every rank decomposing every layer (``from_moments``) vs each rank its share
  (``from_moments(..., distribute=True)``): time, and the max over ranks of eigh work.

Rank 0 writes ``distributed.json`` and ``distributed.md`` under ``--out``. Timings are the
median over ``--reps`` of the slowest rank (a barrier before each sample).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shapes import MODELS, Conv  # noqa: E402
from benchmarks.timing import machine_info  # noqa: E402

import unsc_fast as uf  # noqa: E402
from unsc_fast import distributed as ud  # noqa: E402


def _layer(layer) -> nn.Module:
    """A stand-in with the layer's input geometry (one output channel per group: only the
    statistics' shapes matter here)."""
    if isinstance(layer, Conv):
        return nn.Conv2d(layer.c_in, layer.groups, layer.k, layer.stride, layer.pad,
                         groups=layer.groups)
    return nn.Linear(layer.d_in, 1)


def _moments(layers: list, device: torch.device) -> uf.SecondMoments:
    mods = nn.ModuleDict({f"l{i}": _layer(layer) for i, layer in enumerate(layers)}).to(device)
    m = uf.SecondMoments(mods)
    g = torch.Generator(device="cpu").manual_seed(0)  # same statistics on every rank
    for lm in m.moments.values():
        d = lm.dim
        R = torch.rand(lm.groups, d, d, generator=g)
        lm.S.copy_((R + R.mT) / 2 + d * torch.eye(d))
        lm.n = 1000
    return m


def _time(fn, reps: int, device: torch.device) -> dict:
    samples = []
    for _ in range(reps):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
        samples.append(float(dt))
    return {"median_s": statistics.median(samples), "min_s": min(samples),
            "max_s": max(samples), "reps": len(samples)}


def run(model: str, reps: int, rule: str, bucket_mb: float, device: torch.device,
        max_layers: int = 0) -> dict:
    world, rank = dist.get_world_size(), dist.get_rank()
    layers = MODELS[model][:max_layers] if max_layers else MODELS[model]
    m = _moments(layers, device)
    elem = m.moments[next(iter(m.moments))].S.element_size()
    full_bytes = sum(lm.S.numel() for lm in m.moments.values()) * elem
    packed_bytes = sum(p.numel() for p, _ in ud._segments(m)) * elem

    def naive_all_reduce():
        for lm in m.moments.values():
            dist.all_reduce(lm.S)

    res = {"all_reduce": {
        "per-layer full S": {**_time(naive_all_reduce, reps, device), "bytes": full_bytes},
        "all_reduce_ (upper, bucketed)": {
            **_time(lambda: m.all_reduce_(bucket_mb=bucket_mb), reps, device),
            "bytes": packed_bytes + 8 * len(m.moments)},
    }}
    m = _moments(layers, device)  # fresh, equal statistics for the bases
    costs = [lm.groups * float(lm.dim) ** 3 for lm in m.moments.values()]
    owner = ud.assign_layers(costs, world)
    mine = sum(c for c, o in zip(costs, owner) if o == rank)
    share = torch.tensor([mine / sum(costs)], dtype=torch.float64, device=device)
    dist.all_reduce(share, op=dist.ReduceOp.MAX)
    res["bases"] = {
        "every rank, every layer": _time(lambda: uf.NullSpace.from_moments(m, rule), reps,
                                         device),
        "distribute=True": {**_time(lambda: uf.NullSpace.from_moments(m, rule, distribute=True),
                                    reps, device), "max_rank_share_of_eigh_work": float(share)},
    }
    dims = [lm.dim for lm in m.moments.values()]
    return {"model": model, "layers": len(layers), "d_max": max(dims), "world": world,
            "backend": dist.get_backend(), "rule": rule, "bucket_mb": bucket_mb,
            "threads_per_rank": torch.get_num_threads(), "results": res}


def _markdown(r: dict) -> str:
    rows = [f"### unsc_fast distributed steps: {r['model']} ({r['layers']} layers, d up to"
            f" {r['d_max']}), {r['world']} ranks, {r['backend']},"
            f" {r['threads_per_rank']} thread(s) per rank",
            "", "| step | implementation | median s (slowest rank) | min s | bytes sent per"
            " rank | speed-up |", "|---|---|---|---|---|---|"]
    for step, impls in r["results"].items():
        base = next(iter(impls.values()))["median_s"]
        for name, v in impls.items():
            nbytes = f"{v['bytes'] / 2**20:.1f} MiB" if "bytes" in v else "–"
            rows.append(f"| {step} | {name} | {v['median_s']:.3f} | {v['min_s']:.3f} | {nbytes}"
                        f" | {base / v['median_s']:.2f}x |")
    share = r["results"]["bases"]["distribute=True"]["max_rank_share_of_eigh_work"]
    rows += ["", f"Largest share of the eigh work (groups · d³) on one rank: {share:.0%}"
             f" (ideal {1 / r['world']:.0%}); speed-up is against the first row of each step."]
    return "\n".join(rows) + "\n"


def _worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _main_rank(args, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def _main_rank(args: argparse.Namespace, device: torch.device) -> None:
    r = run(args.model, args.reps, args.rule, args.bucket_mb, device, args.layers)
    if dist.get_rank() == 0:
        r["machine"] = machine_info(device)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "distributed.json").write_text(json.dumps(r, indent=1))
        md = _markdown(r)
        (out / "distributed.md").write_text(md)
        print(md)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="allcnn", choices=sorted(MODELS))
    ap.add_argument("--world", type=int, default=2, help="local ranks to spawn (CPU, gloo);"
                    " ignored under torchrun")
    ap.add_argument("--layers", type=int, default=0, help="only the first N layers (0: all)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rule", default="energy:0.99")
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--out", default="distributed-out")
    args = ap.parse_args(argv)
    if "RANK" in os.environ:  # launched by torchrun: one process per rank already
        cuda = torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda \
            else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        try:
            _main_rank(args, device)
        finally:
            dist.destroy_process_group()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_worker, args=(args.world, port, args),
                                          nprocs=args.world, start_method="spawn")


if __name__ == "__main__":
    main()
