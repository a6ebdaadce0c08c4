"""What storing the bases in a bf16/fp16 model's dtype costs in protection.

    python -m benchmarks.basis_dtype --dims 1024 --out DIR      # basis_dtype.md and .json

For D_r inputs X (n x d, activation-like spectrum: the singular values of a random Gaussian
matrix scaled by i^-alpha, optionally rank-deficient) and a forget gradient G (out x d, dense
Gaussian), the bases come from a float64 ``eigh`` of C = XᵀX/n under an energy rule and are
stored (the smaller of U_r and U_0) in float32 or in bf16/fp16. The protection measure is the
relative residual of the projected gradient on D_r, ``|X P(G)ᵀ| / |X Gᵀ|`` (float64 norms):
how much of the step reaches the retained outputs. Columns:

- ``fp32 G, fp32 B``: the float32 path (the floor the measurement is about);
- ``fp32 G, bf16 B``: only the basis rounded (upcast for the product): the basis's own loss;
- ``bf16 G, bf16 B``: what ``project_`` does on a bf16 model with bases in its dtype;
- ``bf16 G, fp32 B``: the projection computed in float32 and rounded back to the gradient;
- ``bf16 W step``: a bf16 weight W (|W| ~ 0.02) after ``W - lr·P(G)`` with an exact
  (float64) P(G) and lr·|P(G)| ~ 1e-3·|W|: ``|X ΔWᵀ| / |X (lr·G)ᵀ|`` for the step ΔW the
  rounded weight really took, i.e. what the rounding of the *weights* alone lets through;
  whatever the basis, a bf16 model updated in bf16 moves this much.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unsc_fast import ops
from unsc_fast import reference as ref
from unsc_fast.rules import Energy

from .timing import machine_info


def inputs(d: int, n: int, alpha: float, rank: int | None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = d if rank is None else rank
    Z = torch.randn(n, k, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return (Z * torch.arange(1, k + 1, dtype=torch.float64) ** -alpha) @ Q.mT


def residual(X: torch.Tensor, G: torch.Tensor, PG: torch.Tensor) -> float:
    return float((X @ PG.double().mT).norm() / (X @ G.double().mT).norm())


def project(G: torch.Tensor, B: torch.Tensor, sub: bool) -> torch.Tensor:
    out = G.clone()
    ops.project_grads_([out], [B], [sub])
    return out


def one(d: int, eps: float, rank: int | None, alpha: float = 1.0, dtype=torch.bfloat16
        ) -> dict:
    X = inputs(d, 4 * d, alpha, rank)
    evals, evecs = ref.eigh_desc(X.mT @ X / len(X))
    r = Energy(eps).rank(evals)
    sub = r <= d - r
    B64 = (evecs[:, :r] if sub else evecs[:, r:]).contiguous()
    G = torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = ref.project(G, B64, sub)
    G32, B32 = G.float(), B64.float()
    Gh, Bh = G.to(dtype), B64.to(dtype)
    W = 0.02 * torch.randn(d, d, generator=torch.Generator().manual_seed(2),
                           dtype=torch.float64)
    lr = 1e-3 * 0.02 / float(exact.abs().mean())          # lr·|P(G)| ~ 1e-3 of |W|
    Wh = W.to(dtype)
    moved = (Wh - (lr * exact).to(dtype)).double() - Wh.double()  # the step W took
    ortho = float((Bh.double().mT @ Bh.double() - torch.eye(B64.shape[1],
                  dtype=torch.float64)).abs().max()) if B64.shape[1] else 0.0
    return {
        "d": d, "rule": f"energy:{eps:g}", "inputs": "full rank" if rank is None
        else f"rank {rank}", "core_rank": r, "stored": "U_r" if sub else "U_0",
        "float64": residual(X, G, exact),
        "fp32 G, fp32 B": residual(X, G, project(G32, B32, sub)),
        "fp32 G, low B": residual(X, G, project(G32, Bh.float(), sub)),
        "low G, low B": residual(X, G, project(Gh, Bh, sub)),
        "low G, fp32 B": residual(X, G, project(G32, B32, sub).to(dtype)),
        "low W step": residual(X, lr * G, moved),
        "max abs(BᵀB−I) low": ortho,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[1024])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    rows = []
    for d in a.dims:
        for eps, rank in ((0.99, None), (0.999, None), (1.0, d // 4)):
            rows.append(one(d, eps, rank, dtype=dtype))
    low = {"bfloat16": "bf16", "float16": "fp16"}[a.dtype]
    cols = [k for k in rows[0] if k not in ("d", "rule", "inputs", "core_rank", "stored")]
    head = [c.replace("low", low) for c in cols]
    lines = ["| d | rule | inputs | r | stored | " + " | ".join(head) + " |",
             "|" + "---|" * (5 + len(cols))]
    for r in rows:
        lines.append(f"| {r['d']} | {r['rule']} | {r['inputs']} | {r['core_rank']} |"
                     f" {r['stored']} | " + " | ".join(f"{r[c]:.2e}" for c in cols) + " |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "basis_dtype.md").write_text(
            f"# Protection of a {low} basis\n\n`python -m benchmarks.basis_dtype --dims"
            f" {' '.join(map(str, a.dims))} --dtype {a.dtype}`\n\n{table}\n\n"
            f"machine: {json.dumps(machine_info(torch.device('cpu')))}\n")
        (a.out / "basis_dtype.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
