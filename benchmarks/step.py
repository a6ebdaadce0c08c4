"""One UNSC unlearning step (forward, backward, projection) on the paper's models, per way of
projecting, timed in the same run:

- ``no projection``: forward + backward only, the floor;
- ``project_[<backend>]``: backward, then :func:`unsc_fast.project_` over every layer;
- ``projected_backward[<backend>]``: Linear layers projected inside backward (from their inputs
  when the batch has fewer rows than the layer has outputs), the rest by ``project_``; what
  :func:`unsc_fast.unlearn` does.

    python -m benchmarks.step --device cpu --out DIR        # writes step.md and step.json

Bases come from 256 random inputs (energy 0.99); the step uses a forget batch of 64 and the
parameters UNSC trains. Medians of interleaved repetitions.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

import unsc_fast as uf
from unsc_fast.lab.models import build_model

from .cases import device_backends
from .timing import machine_info, time_interleaved

MODELS = {  # name: (model, input shape, width)
    "small_cnn": ("small_cnn", (1, 28, 28), 1.0),
    "alexnet": ("alexnet", (1, 28, 28), 1.0),
    "allcnn": ("allcnn", (3, 32, 32), 1.0),
}


def _setup(name: str, device: torch.device, batch: int):
    arch, shape, width = MODELS[name]
    torch.manual_seed(0)
    model = build_model(arch, shape, 10, width=width).to(device)
    moments = uf.SecondMoments(model).collect(torch.randn(256, *shape).split(64), device=device,
                                              progress=False)
    bases = uf.NullSpace.from_moments(moments, "energy:0.99").to(device)
    uf.freeze_for_unlearning(model, bases)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, bases, x, y


def step_fns(model: nn.Module, bases: uf.NullSpace, x, y, backends: list[str]) -> dict:
    def backward():
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    def project(backend):
        def run():
            backward()
            uf.project_(model, bases, backend=backend)
        return run

    def in_backward(backend):
        def run():
            with uf.projected_backward(model, bases, backend=backend) as rest:
                backward()
                uf.project_(model, rest, backend=backend)
        return run

    fns = {"no projection": backward}
    for b in backends:
        fns[f"project_[{b}]"] = project(b)
        fns[f"projected_backward[{b}]"] = in_backward(b)
    return fns


def run(device: torch.device, models: list[str], reps: int, batch: int) -> dict:
    backends = device_backends(device)
    rows = []
    for name in models:
        model, bases, x, y = _setup(name, device, batch)
        res = time_interleaved(step_fns(model, bases, x, y, backends), device, reps=reps,
                               max_case_s=30.0)
        floor = res["no projection"]["median_s"]
        for impl, r in res.items():
            rows.append({"model": name, "impl": impl, "median_ms": r["median_s"] * 1e3,
                         "iqr_ms": r["iqr_s"] * 1e3, "reps": r["reps"],
                         "overhead_vs_no_projection": r["median_s"] / floor - 1})
    return {"batch": batch, "reps": reps, "backends": backends, "rows": rows,
            "machine": machine_info(device)}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"### One UNSC step (forward + backward + projection), forget batch {res['batch']},"
             f" {m['device']} ({m['cpu_model']}, {m['torch_threads']} threads)", "",
             "| model | implementation | median ms | IQR ms | projection overhead |",
             "|---|---|---|---|---|"]
    for r in res["rows"]:
        over = "–" if r["impl"] == "no projection" else f"{r['overhead_vs_no_projection']:+.0%}"
        lines.append(f"| {r['model']} | {r['impl']} | {r['median_ms']:.1f} | {r['iqr_ms']:.1f}"
                     f" | {over} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=None, help="folder for step.md and step.json")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    res = run(torch.device(args.device), models, args.reps, args.batch)
    md = markdown(res)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "step.json").write_text(json.dumps(res, indent=1))
        (out / "step.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
