"""Hugging Face models (random LLaMA-style weights, built from a config; nothing downloaded):

(a) statistics throughput: tokens/s of ``SecondMoments.collect`` over a LLaMA-style model
    (default: hidden 256, 2 layers, sequences of 128, batches of 8, float32) against a plain
    ``no_grad`` forward over the same batches, timed in the same run, interleaved;
(b) the projection's share of one training step on a tiny LLaMA: forward + backward against
    forward + backward + :func:`unsc_fast.project_` (the parameters UNSC trains).

    python -m benchmarks.hf --out DIR            # writes hf.md and hf.json
    python -m benchmarks.hf --tiny --out DIR     # seconds: the smoke test's sizes

Medians of 5 interleaved repetitions (``--reps``), after one warm-up. One ``collect`` call
streams ``--batches`` batches (it tries each new input shape once on one sample first, so a
call of one batch would time that trial too). ``os.getloadavg()`` is recorded before and after:
on a shared machine the numbers are only comparable within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: import the checkout's benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import unsc_fast as uf  # noqa: E402

from .timing import machine_info, time_interleaved  # noqa: E402

CPU = torch.device("cpu")


def _llama(hidden: int, layers: int, heads: int, inter: int, vocab: int, seq: int,
           dtype: torch.dtype) -> nn.Module:
    import transformers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=heads,
                                   intermediate_size=inter, vocab_size=vocab,
                                   max_position_embeddings=max(seq, 64))
    return transformers.LlamaForCausalLM(cfg).to(dtype)


def _batches(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, seq), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def _ms(r: dict) -> dict:
    return {"median_ms": r["median_s"] * 1e3, "iqr_ms": r["iqr_s"] * 1e3, "reps": r["reps"],
            "inner": r["inner"]}


def bench_stats(cfg: dict, reps: int) -> dict:
    model = _llama(cfg["hidden"], cfg["layers"], cfg["heads"], cfg["inter"], cfg["vocab"],
                   cfg["seq"], torch.float32).eval()
    data = _batches(cfg["batches"], cfg["batch"], cfg["seq"], cfg["vocab"], seed=0)
    tokens = cfg["batches"] * cfg["batch"] * cfg["seq"]
    moments = uf.SecondMoments(model)   # accumulates across calls: fine for timing

    @torch.no_grad()
    def forward():
        for b in data:
            model(**b)

    def collect():
        moments.collect(data, progress=False)

    res = time_interleaved({"forward": forward, "collect": collect}, CPU, reps=reps,
                           min_reps=reps, max_case_s=600.0)
    fwd, col = res["forward"]["median_s"], res["collect"]["median_s"]
    return {"config": cfg, "tokens_per_call": tokens, "layers_watched": len(moments.layers),
            "statistics_shared": len(moments.shared),
            "forward": _ms(res["forward"]), "collect": _ms(res["collect"]),
            "forward_tokens_per_s": tokens / fwd, "collect_tokens_per_s": tokens / col,
            "collect_over_forward": col / fwd}


def bench_step(cfg: dict, reps: int) -> dict:
    model = _llama(cfg["hidden"], cfg["layers"], cfg["heads"], cfg["inter"], cfg["vocab"],
                   cfg["seq"], torch.float32)
    retain = _batches(cfg["retain_batches"], cfg["batch"], cfg["seq"], cfg["vocab"], seed=1)
    moments = uf.SecondMoments(model).collect(retain, progress=False)
    bases = uf.NullSpace.from_moments(moments, "energy:0.99")
    uf.freeze_for_unlearning(model, bases)
    forget = _batches(1, cfg["batch"], cfg["seq"], cfg["vocab"], seed=2)[0]
    forget["labels"] = forget["input_ids"]

    def backward():
        model.zero_grad(set_to_none=True)
        model(**forget).loss.backward()

    def project():
        backward()
        uf.project_(model, bases)

    res = time_interleaved({"forward+backward": backward, "forward+backward+project_": project},
                           CPU, reps=reps, min_reps=reps, max_case_s=600.0)
    base = res["forward+backward"]["median_s"]
    full = res["forward+backward+project_"]["median_s"]
    return {"config": cfg, "layers_projected": len(bases),
            "null_dims": {n: lb.d - lb.ranks[0] for n, lb in list(bases.items())[:3]},
            "forward+backward": _ms(res["forward+backward"]),
            "forward+backward+project_": _ms(res["forward+backward+project_"]),
            "projection_share_of_step": (full - base) / full,
            "projection_overhead": full / base - 1}


def _markdown(out: dict) -> str:
    m, s, p = out["machine"], out["stats"], out["step"]
    c, d = s["config"], p["config"]
    lines = [
        f"### Hugging Face models on {m['device']} ({m.get('cpu_model') or '?'},"
        f" {m['torch_threads']} threads), torch {m['torch']}, transformers {out['transformers']}",
        "",
        f"Load average (1, 5, 15 min): before {out['loadavg_before']}, after"
        f" {out['loadavg_after']}. Medians of {out['reps']} interleaved repetitions.",
        "",
        *([out["note"], ""] if out.get("note") else []),
        f"(a) Statistics: LLaMA-style, hidden {c['hidden']}, {c['layers']} layers, intermediate"
        f" {c['inter']}, vocab {c['vocab']}, {c['batches']} batches of {c['batch']} x {c['seq']}"
        f" tokens per call, float32; {s['layers_watched']} layers watched,"
        f" {s['statistics_shared']} of them sharing another's statistic (q/k/v, gate/up).",
        "",
        "| run | median ms | IQR ms | tokens/s |",
        "|---|---|---|---|",
        f"| plain forward (no_grad) | {s['forward']['median_ms']:.1f}"
        f" | {s['forward']['iqr_ms']:.1f} | {s['forward_tokens_per_s']:,.0f} |",
        f"| SecondMoments.collect | {s['collect']['median_ms']:.1f} | {s['collect']['iqr_ms']:.1f}"
        f" | {s['collect_tokens_per_s']:,.0f} |",
        "",
        f"collect / forward time: {s['collect_over_forward']:.2f}x.",
        "",
        f"(b) One training step, tiny LLaMA (hidden {d['hidden']}, {d['layers']} layers,"
        f" intermediate {d['inter']}, vocab {d['vocab']}), batch {d['batch']} x {d['seq']},"
        f" float32, {p['layers_projected']} layers projected (energy 0.99):",
        "",
        "| step | median ms | IQR ms |",
        "|---|---|---|",
        f"| forward + backward | {p['forward+backward']['median_ms']:.2f}"
        f" | {p['forward+backward']['iqr_ms']:.2f} |",
        f"| forward + backward + project_ | {p['forward+backward+project_']['median_ms']:.2f}"
        f" | {p['forward+backward+project_']['iqr_ms']:.2f} |",
        "",
        f"Projection share of the step: {100 * p['projection_share_of_step']:.1f}%"
        f" (overhead +{100 * p['projection_overhead']:.1f}% over forward + backward).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batches", type=int, default=4, help="batches per collect call")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    ap.add_argument("--note", default="", help="a sentence for hf.md (e.g. why --threads)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tiny:
        stats = dict(hidden=32, layers=1, heads=4, inter=64, vocab=64, seq=16, batch=2,
                     batches=2)
        step = dict(hidden=32, layers=1, heads=4, inter=64, vocab=64, seq=16, batch=2,
                    retain_batches=2)
        reps = min(a.reps, 2)
    else:
        stats = dict(hidden=256, layers=2, heads=4, inter=1024, vocab=1024, seq=128, batch=8,
                     batches=a.batches)
        step = dict(hidden=64, layers=2, heads=4, inter=256, vocab=256, seq=64, batch=4,
                    retain_batches=8)
        reps = a.reps
    import transformers
    out: dict = {"benchmark": "hf", "transformers": transformers.__version__, "reps": reps,
                 "note": a.note,
                 "loadavg_before": list(os.getloadavg())}
    out["machine"] = machine_info(CPU)
    out["stats"] = bench_stats(stats, reps)
    out["step"] = bench_step(step, reps)
    out["loadavg_after"] = list(os.getloadavg())
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "hf.json").write_text(json.dumps(out, indent=2) + "\n")
    (a.out / "hf.md").write_text(_markdown(out))
    print(_markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
