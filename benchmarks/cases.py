"""Inputs, runners and the cost model of each benchmark case.

For a :class:`~benchmarks.shapes.CaseSpec` this module builds the inputs (seeded, on the
device), a *runner* per implementation (a dispatch backend forced with ``backend=``, or
``torch``: the best plain-torch primitive for the same math) and the FLOP / byte counts of
the cost model (spec §4 of the design notes, restated here):

- ``accumulate`` ``S += XᵀX``, X n x d: FLOPs ``2 n d²`` (dense-equivalent; a symmetric
  kernel does about half of them, but is credited the full count so that rates compare);
  bytes ``n d s_x + 2 d² s_S`` (X read once, S read and written).
- ``accumulate_conv``: the same with n = N·L patch rows and d = C/g·k², per group; bytes count
  the compulsory traffic only: the input x read once and S read and written (an ``unfold``
  based implementation moves k² times more; that is the point of implicit im2col).
- ``project`` ``G ← G − (G B)Bᵀ``, G out x d, B d x m: FLOPs ``4 out d m``; bytes
  ``2 out d s_g + d m s_u``, summed over the layers (and conv groups) of the model.
- ``eigh`` of a d x d covariance (fp64): FLOPs ``4.5 d³`` (the spec's 4-5 d³); bytes
  ``2 d² s``. Context only: one torch runner.

The ``torch`` runner per op (the baseline every fast backend must beat):

- ``accumulate``: ``S.addmm_(X.T, X)`` (fp32 inputs; for fp16/bf16 inputs on
  CUDA ``addmm(..., out_dtype=float32)`` when torch has it, else an fp32 copy of X first);
- ``accumulate_conv``: ``F.unfold`` (padding and stride in the call) → one (g, d, N·L) copy →
  ``baddbmm_`` into S;
- ``project``: per layer ``G.addmm_(G @ B, B.T, alpha=-1)`` in a Python loop.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from unsc_fast import dispatch, ops
from unsc_fast.geometry import ConvGeometry

from .shapes import CaseSpec

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}
OPS_WITH_BACKENDS = ("accumulate", "accumulate_conv", "project_grads")
TORCH = "torch"

TORCH_PRIMITIVE = {
    "accumulate": "S.addmm_(X.T, X)",
    "accumulate_conv": "F.unfold + permute copy + baddbmm_",
    "project_grads": "per layer: G.addmm_(G @ B, B.T, alpha=-1)",
    "eigh": "torch.linalg.eigh (float64)",
}


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def geometry(p: dict) -> ConvGeometry:
    k, s, pad = p["k"], p["stride"], p["pad"]
    return ConvGeometry((k, k), (s, s), (pad, pad, pad, pad), (1, 1), p["groups"])


def _rank(frac: float, d: int) -> int:
    return max(1, min(d, round(frac * d)))


def _project_entries(p: dict) -> list[tuple[int, int, int]]:
    """(rows, d, m) of every (layer, group) entry the project_ call sees."""
    out = []
    for _key, rows, d, groups in p["layers"]:
        m = _rank(p["rank_frac"], d)
        out += [(rows // groups, d, m)] * groups
    return out


# ---- cost model -----------------------------------------------------------------------------

def cost(spec: CaseSpec) -> dict:
    """FLOPs, bytes, input bytes and the dtype whose matmul peak bounds the case."""
    p, dt = spec.params, DTYPES[spec.dtype]
    s_in = itemsize(dt)
    if spec.op == "accumulate":
        n, d = p["n"], p["d"]
        flops = 2.0 * n * d * d
        nbytes = n * d * s_in + 2 * d * d * 4
        inputs = n * d * s_in + d * d * 4
    elif spec.op == "accumulate_conv":
        g = p["groups"]
        oh = (p["h"] + 2 * p["pad"] - p["k"]) // p["stride"] + 1
        ow = (p["w"] + 2 * p["pad"] - p["k"]) // p["stride"] + 1
        rows = p["batch"] * oh * ow
        d = p["c_in"] // g * p["k"] ** 2
        flops = 2.0 * g * rows * d * d
        x_bytes = p["batch"] * p["c_in"] * p["h"] * p["w"] * s_in
        nbytes = x_bytes + 2 * g * d * d * 4
        inputs = x_bytes + g * d * d * 4
    elif spec.op == "project_grads":
        flops, nbytes, inputs = 0.0, 0, 0
        for rows, d, m in _project_entries(p):
            flops += 4.0 * rows * d * m
            nbytes += 2 * rows * d * s_in + d * m * s_in
            inputs += rows * d * s_in + d * m * s_in
    elif spec.op == "eigh":
        d = p["d"]
        flops, nbytes, inputs = 4.5 * d ** 3, 2 * d * d * 8, d * d * 8
    else:
        raise ValueError(f"unknown op {spec.op!r}")
    # fp16/bf16 inputs run on the matching matmul units; everything else on fp32 (fp64: eigh)
    compute = spec.dtype if spec.dtype in ("float16", "bfloat16", "float64") else "float32"
    return {"flops": float(flops), "bytes": float(nbytes), "input_bytes": int(inputs),
            "compute_dtype": compute}


# ---- inputs and runners ---------------------------------------------------------------------

@dataclass
class Inputs:
    """Read-only inputs shared by every runner of a case."""
    spec: CaseSpec
    device: torch.device
    tensors: dict


def make_inputs(spec: CaseSpec, device: torch.device, seed: int = 0) -> Inputs:
    gen = torch.Generator(device=device).manual_seed(seed)   # on the device: fast for GPU sizes
    dt = DTYPES[spec.dtype]
    p = spec.params

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32, device=device).to(dt)

    if spec.op == "accumulate":
        t = {"X": randn(p["n"], p["d"])}
    elif spec.op == "accumulate_conv":
        t = {"x": randn(p["batch"], p["c_in"], p["h"], p["w"])}
    elif spec.op == "project_grads":
        grads, bases = [], []
        for _key, rows, d, groups in p["layers"]:
            grads.append(randn(rows, d))
            m = _rank(p["rank_frac"], d)
            for _ in range(groups):
                A = torch.randn(d, m, generator=gen, dtype=torch.float32, device=device)
                bases.append(torch.linalg.qr(A)[0].to(dt).contiguous())
        t = {"grads": grads, "bases": bases}
    elif spec.op == "eigh":
        d = p["d"]
        A = torch.randn(d, 2 * d, generator=gen, dtype=torch.float64, device=device)
        t = {"C": (A @ A.mT) / (2 * d)}
    else:
        raise ValueError(f"unknown op {spec.op!r}")
    return Inputs(spec, device, t)


@dataclass
class Runner:
    """One implementation of a case: ``fn()`` runs the op once, in place on ``state``."""
    name: str
    fn: Callable[[], object]
    result: Callable[[], Tensor]   # the output to compare (S, or the concatenated grads)


def _torch_accumulate(S: Tensor, X: Tensor) -> Callable[[], object]:
    if X.dtype == S.dtype:
        return lambda: S.addmm_(X.mT, X)
    if X.is_cuda:
        try:  # mixed-precision GEMM straight into the fp32 accumulator (torch >= 2.8, CUDA)
            probe = torch.zeros(2, 2, dtype=S.dtype, device=S.device)
            torch.addmm(probe, X[:1, :2].mT, X[:1, :2], out_dtype=S.dtype, out=probe)
            return lambda: torch.addmm(S, X.mT, X, out_dtype=S.dtype, out=S)
        except (TypeError, RuntimeError):
            pass

    def upcast():
        Xf = X.to(S.dtype)
        torch.addmm(S, Xf.mT, Xf, out=S)
    return upcast


def _torch_accumulate_conv(S: Tensor, x: Tensor, p: dict) -> Callable[[], object]:
    g, k = p["groups"], p["k"]

    def run():
        xs = x.to(S.dtype)
        cols = F.unfold(xs, k, padding=p["pad"], stride=p["stride"])  # (N, C·k², L)
        n, _, length = cols.shape
        P = cols.view(n, g, -1, length).permute(1, 2, 0, 3).reshape(g, -1, n * length)
        S.baddbmm_(P, P.mT)
    return run


def _torch_project(grads: list[Tensor], bases: list[Tensor]) -> Callable[[], object]:
    def run():
        for G, B in zip(grads, bases):
            G.addmm_(G @ B, B.mT, alpha=-1)
    return run


def _split_groups(grads: list[Tensor], p: dict) -> list[Tensor]:
    views = []
    for G, (_key, _rows, _d, groups) in zip(grads, p["layers"]):
        views += list(G.chunk(groups, 0))
    return views


def make_runner(inp: Inputs, name: str) -> Runner:
    """A runner with its own fresh state (zero S, or a fresh copy of the gradients)."""
    spec, dev, t, p = inp.spec, inp.device, inp.tensors, inp.spec.params
    if spec.op == "accumulate":
        S = torch.zeros(p["d"], p["d"], dtype=torch.float32, device=dev)
        X = t["X"]
        fn = _torch_accumulate(S, X) if name == TORCH else \
            (lambda: ops.accumulate_(S, X, backend=name))
        return Runner(name, fn, lambda: torch.triu(S))
    if spec.op == "accumulate_conv":
        d = p["c_in"] // p["groups"] * p["k"] ** 2
        S = torch.zeros(p["groups"], d, d, dtype=torch.float32, device=dev)
        x, geom = t["x"], geometry(p)
        fn = _torch_accumulate_conv(S, x, p) if name == TORCH else \
            (lambda: ops.accumulate_conv_(S, x, geom, backend=name))
        return Runner(name, fn, lambda: torch.triu(S))
    if spec.op == "project_grads":
        grads = [G.clone() for G in t["grads"]]
        views = _split_groups(grads, p)
        bases = t["bases"]
        subtract = [True] * len(views)
        fn = _torch_project(views, bases) if name == TORCH else \
            (lambda: ops.project_grads_(views, bases, subtract, backend=name))
        return Runner(name, fn, lambda: torch.cat([G.flatten() for G in grads]))
    if spec.op == "eigh":
        C = t["C"]
        out: dict = {}

        def run():
            out["w"] = torch.linalg.eigh(C)[0]
        return Runner(name, run, lambda: out["w"])
    raise ValueError(f"unknown op {spec.op!r}")


def backend_args(inp: Inputs) -> tuple:
    """The argument tuple dispatch's ``supports`` predicates see for this case."""
    spec, t, p = inp.spec, inp.tensors, inp.spec.params
    if spec.op == "accumulate":
        return (torch.zeros(p["d"], p["d"], device=inp.device), t["X"])
    if spec.op == "accumulate_conv":
        d = p["c_in"] // p["groups"] * p["k"] ** 2
        return (torch.zeros(p["groups"], d, d, device=inp.device), t["x"], geometry(p))
    if spec.op == "project_grads":
        views = _split_groups(t["grads"], p)
        return (views, t["bases"], [True] * len(views))
    return ()


def runnable_backends(inp: Inputs, include_interpreted: bool = False) -> tuple[list[str], dict]:
    """Backends that run this case here, discovered at run time through ``dispatch``.

    Returns (names, skipped) where skipped maps a backend to the reason it is left out.
    Triton on a CPU tensor runs in Triton's interpreter (about 1000x slow): left out of
    timings unless ``include_interpreted``.
    """
    if inp.spec.op not in OPS_WITH_BACKENDS:
        return [], {}
    avail = dispatch.availability()
    args = backend_args(inp)
    names, skipped = [], {}
    for b in dispatch.BACKENDS:
        if avail.get(b) != "available":
            skipped[b] = avail.get(b, "unknown")
            continue
        if b == "triton" and inp.device.type == "cpu" and not include_interpreted:
            skipped[b] = "Triton interpreter on CPU (not timed)"
            continue
        try:
            dispatch.resolve(inp.spec.op, inp.device, args, b)
        except RuntimeError as exc:
            skipped[b] = str(exc)
            continue
        names.append(b)
    return names, skipped


def device_backends(device: torch.device, include_interpreted: bool = False) -> list[str]:
    """Backends that run all three ops on ``device`` (probed on tiny tensors), reference first."""
    avail = dispatch.availability()
    S = torch.zeros(4, 4, device=device)
    X = torch.randn(3, 4, device=device)
    Sc = torch.zeros(1, 9, 9, device=device)
    xc = torch.randn(1, 1, 4, 4, device=device)
    geom = ConvGeometry((3, 3), pad=(1, 1, 1, 1))
    G, B = torch.randn(2, 4, device=device), torch.linalg.qr(torch.randn(4, 2))[0].to(device)
    probes = {"accumulate": (S, X), "accumulate_conv": (Sc, xc, geom),
              "project_grads": ([G], [B], [True])}
    names = []
    for b in dispatch.BACKENDS:
        if avail.get(b) != "available":
            continue
        if b == "triton" and device.type == "cpu" and not include_interpreted:
            continue
        try:
            for op, args in probes.items():
                dispatch.resolve(op, device, args, b)
        except RuntimeError:
            continue
        names.append(b)
    return names


def runner_names(inp: Inputs, include_interpreted: bool = False) -> tuple[list[str], dict]:
    """Every runner of a case: reference first, the other backends, then ``torch``."""
    if inp.spec.op == "eigh":
        return [TORCH], {}
    names, skipped = runnable_backends(inp, include_interpreted)
    return names + [TORCH], skipped


def rel_error(out: Tensor, ref: Tensor) -> float:
    """max |out - ref| / max |ref| (in float64)."""
    out, ref = out.double(), ref.double()
    den = ref.abs().max().item()
    err = (out - ref).abs().max().item()
    return err / den if den > 0 else err


def nbytes_of(obj) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(nbytes_of(o) for o in obj)
    if isinstance(obj, dict):
        return sum(nbytes_of(o) for o in obj.values())
    return 0


def gmean(xs: list[float]) -> float:
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")
