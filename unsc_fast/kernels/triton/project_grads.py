"""Triton kernel of ``project_grads_``: ``G_i ← G_i − (G_i B_i)B_iᵀ`` (or ``(G_i B_i)B_iᵀ``) for many layers.

One persistent launch per gradient dtype covers every layer (two when some ranks fit on chip
and others do not: each path is its own compiled kernel, which keeps register pressure down):
the host builds a work table of (layer, first row) items, ``BLOCK_M`` rows each, and a layer
table of pointers, shapes, strides and the mode, all int64 in one device tensor; programs walk
the items grid-stride.
Per item, with ``T = G_tile B`` kept on chip (``BLOCK_M x BLOCK_R``, fp32, fp64 for fp64):

* pass 1 loops over d in ``BLOCK_D`` chunks: ``T += G[:, chunk] @ B[chunk, :]``;
* pass 2 loops over d again: ``G[:, chunk] ← G[:, chunk] − T @ B[chunk, :]ᵀ`` (or ``T @ B[chunk, :]ᵀ``).

Layers whose rank m exceeds ``BLOCK_R`` take the same two passes over m chunks, with T parked in
an fp32/fp64 global workspace (``rows x m`` per such layer, written and read back by the same
program, with a barrier between the passes): G is only overwritten once all of T is known, so
the result does not rely on B being exactly orthonormal.

Precision: pass 1 multiplies in G's dtype (fp16/bf16 tensor cores, exact products) with fp32
sums; pass 2 feeds T rounded to G's dtype for fp16/bf16 (an error of the order of the output
rounding), fp32 T for fp32 (TF32 only when torch's fp32 matmul precision allows it), fp64 for
fp64. Layers with m = 0 are skipped (subtract) or zeroed (null mode) on the host.

The op (``torch.ops.unsc_fast_triton.project_grads_``) is a :func:`torch.library.custom_op`, opaque to ``torch.compile``: a table of raw
pointers cannot be built from the fake tensors compile traces with, so the op is not a
``triton_op``; compile still keeps it in the graph (no graph break).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import INTERPRET, allow_tf32, compute_mode, convert, dot_precision

NF = 12  # int64 fields per layer in the table
(F_G, F_B, F_ROWS, F_D, F_M, F_SGR, F_SGC, F_SBR, F_SBC, F_SUB, F_WS, _F_PAD) = range(NF)


@dataclass(frozen=True)
class ProjectConfig:
    BLOCK_M: int
    BLOCK_D: int
    BLOCK_R: int  # ranks up to BLOCK_R stay on chip; larger ones use the workspace path
    num_warps: int = 4
    num_stages: int = 2


def candidates_for(dtype: torch.dtype, major: int | None) -> list[ProjectConfig]:
    """Candidate tilings by compute capability (None: the interpreter) and dtype.

    The first is the default when tuning is off. T (BLOCK_M x BLOCK_R, fp32) lives in
    registers: BLOCK_M * BLOCK_R / (32 * num_warps) <= 64 values per thread in every config.
    """
    if major is None:
        return [ProjectConfig(16, 32, 32, 4, 1)]
    # All spill-free in ``ptxas -v`` for sm90 and sm80 (not timed: no GPU when written).
    if dtype == torch.float64:
        return [ProjectConfig(32, 32, 32, 4, 2), ProjectConfig(32, 32, 64, 8, 2),
                ProjectConfig(64, 32, 32, 8, 2)]
    half = dtype in (torch.float16, torch.bfloat16)
    stages = 3 if major >= 9 else 2
    if major >= 8 and half:  # Hopper, Ampere / Ada
        shapes = [(64, 64, 128, 8), (64, 32, 128, 8), (128, 32, 128, 8), (64, 64, 64, 8),
                  (128, 32, 64, 8), (64, 32, 64, 8)]
    elif major >= 8:
        shapes = [(64, 32, 128, 8), (64, 32, 64, 8)]
    else:
        return [ProjectConfig(32, 32, 64, 4, 2)]
    return [ProjectConfig(bm, bd, br, w, stages) for bm, bd, br, w in shapes]


@triton.jit
def _onchip_tile(G, B, offs_m, mask_m, sgr, sgc, sbr, sbc, d, m, sub,
                 ACC: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < m
    g_row = offs_m.to(tl.int64) * sgr
    b_col = offs_r.to(tl.int64) * sbc
    t = tl.zeros((BLOCK_M, BLOCK_R), dtype=ACC)
    for d0 in range(0, d, BLOCK_D):  # pass 1: T = G_tile B over all d chunks
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < d
        g = tl.load(G + g_row[:, None] + offs_d.to(tl.int64)[None, :] * sgc,
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        b = tl.load(B + offs_d.to(tl.int64)[:, None] * sbr + b_col[None, :],
                    mask=mask_d[:, None] & mask_r[None, :], other=0.0)
        t = tl.dot(convert(g, COMPUTE), convert(b, COMPUTE), t,
                   input_precision=DOT_PRECISION, out_dtype=ACC)
    if COMPUTE == 0:
        t_in = t.to(G.dtype.element_ty)  # fp16/bf16 tensor cores for T Bᵀ
    else:
        t_in = t
    for d0 in range(0, d, BLOCK_D):  # pass 2: G_chunk ← G_chunk − T B_chunkᵀ, chunk by chunk
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < d
        bt = tl.load(B + b_col[:, None] + offs_d.to(tl.int64)[None, :] * sbr,
                     mask=mask_r[:, None] & mask_d[None, :], other=0.0)
        u = tl.dot(t_in, convert(bt, COMPUTE), input_precision=DOT_PRECISION, out_dtype=ACC)
        ptrs = G + g_row[:, None] + offs_d.to(tl.int64)[None, :] * sgc
        mask = mask_m[:, None] & mask_d[None, :]
        g = tl.load(ptrs, mask=mask, other=0.0).to(ACC)
        res = tl.where(sub != 0, g - u, u)
        tl.store(ptrs, res.to(G.dtype.element_ty), mask=mask)


@triton.jit
def _workspace_tile(G, B, WS, offs_m, mask_m, sgr, sgc, sbr, sbc, d, m, sub,
                    ACC: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    g_row = offs_m.to(tl.int64) * sgr
    ws_row = offs_m.to(tl.int64) * m
    for r0 in range(0, m, BLOCK_R):  # pass 1, chunk of ranks by chunk: T[:, r0:r0+R]
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < m
        b_col = offs_r.to(tl.int64) * sbc
        t = tl.zeros((BLOCK_M, BLOCK_R), dtype=ACC)
        for d0 in range(0, d, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < d
            g = tl.load(G + g_row[:, None] + offs_d.to(tl.int64)[None, :] * sgc,
                        mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            b = tl.load(B + offs_d.to(tl.int64)[:, None] * sbr + b_col[None, :],
                        mask=mask_d[:, None] & mask_r[None, :], other=0.0)
            t = tl.dot(convert(g, COMPUTE), convert(b, COMPUTE), t,
                       input_precision=DOT_PRECISION, out_dtype=ACC)
        tl.store(WS + ws_row[:, None] + offs_r[None, :], t,
                 mask=mask_m[:, None] & mask_r[None, :])
    tl.debug_barrier()  # T written by some threads is read by others below
    for d0 in range(0, d, BLOCK_D):  # pass 2: G_chunk ← G_chunk − Σ_r T_r B[chunk, r]ᵀ
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < d
        u = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
        for r0 in range(0, m, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            mask_r = offs_r < m
            t = tl.load(WS + ws_row[:, None] + offs_r[None, :],
                        mask=mask_m[:, None] & mask_r[None, :], other=0.0)
            if COMPUTE == 0:
                t = t.to(G.dtype.element_ty)
            bt = tl.load(B + offs_r.to(tl.int64)[:, None] * sbc
                         + offs_d.to(tl.int64)[None, :] * sbr,
                         mask=mask_r[:, None] & mask_d[None, :], other=0.0)
            u = tl.dot(t, convert(bt, COMPUTE), u, input_precision=DOT_PRECISION,
                       out_dtype=ACC)
        ptrs = G + g_row[:, None] + offs_d.to(tl.int64)[None, :] * sgc
        mask = mask_m[:, None] & mask_d[None, :]
        g = tl.load(ptrs, mask=mask, other=0.0).to(ACC)
        res = tl.where(sub != 0, g - u, u)
        tl.store(ptrs, res.to(G.dtype.element_ty), mask=mask)


@triton.jit
def project_grads_kernel(tab_ptr, work_ptr, n_work, ws_ptr, witness_ptr,
                   NF: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   WORKSPACE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """Persistent: program p handles work items p, p + P, p + 2P, ... (P programs).

    WORKSPACE selects the path for every layer of the launch (the host splits layers by
    rank): one path per compiled kernel keeps register pressure down.
    """
    ACC: tl.constexpr = ws_ptr.dtype.element_ty
    for w in range(tl.program_id(0), n_work, tl.num_programs(0)):
        layer = tl.load(work_ptr + 2 * w)
        row0 = tl.load(work_ptr + 2 * w + 1)
        base = tab_ptr + layer * NF
        G = tl.load(base + 0).to(witness_ptr.dtype)
        B = tl.load(base + 1).to(witness_ptr.dtype)
        rows = tl.load(base + 2)
        d = tl.load(base + 3)
        m = tl.load(base + 4)
        sgr = tl.load(base + 5)
        sgc = tl.load(base + 6)
        sbr = tl.load(base + 7)
        sbc = tl.load(base + 8)
        sub = tl.load(base + 9)
        offs_m = row0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < rows
        if WORKSPACE:
            ws_off = tl.load(base + 10)
            _workspace_tile(G, B, ws_ptr + ws_off, offs_m, mask_m, sgr, sgc, sbr, sbc, d, m,
                            sub, ACC, COMPUTE, DOT_PRECISION, BLOCK_M, BLOCK_D, BLOCK_R)
        else:
            _onchip_tile(G, B, offs_m, mask_m, sgr, sgc, sbr, sbc, d, m, sub,
                         ACC, COMPUTE, DOT_PRECISION, BLOCK_M, BLOCK_D, BLOCK_R)


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """T and the workspace are fp64 for fp64 gradients, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_TABLES: OrderedDict = OrderedDict()  # host description -> device table, most recent last
_TABLE_CACHE_SIZE = 32
TUNED: dict = {}  # (device, dtype, tf32, shape buckets) -> the measured best config


def _device_table(values: tuple, device: torch.device) -> Tensor:
    """The int64 table on the device; cached, since the same grads recur step after step."""
    key = (device, values)
    tab = _TABLES.get(key)
    if tab is None:
        tab = torch.tensor(values, dtype=torch.int64).to(device)
        _TABLES[key] = tab
        if len(_TABLES) > _TABLE_CACHE_SIZE:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    return tab


def _plan(grads: list[Tensor], bases: list[Tensor], subtract: list[bool],
          cfg: ProjectConfig) -> tuple[tuple, int, int, int]:
    """(table values, number of layers, number of work items, workspace elements)."""
    layers, ws_total = [], 0
    for G, B, sub in zip(grads, bases, subtract):
        rows, d = G.shape
        m = B.shape[1]
        ws_off = -1
        if m > cfg.BLOCK_R:
            ws_off, ws_total = ws_total, ws_total + rows * m
        layers.append((G.data_ptr(), B.data_ptr(), rows, d, m, G.stride(0), G.stride(1),
                       B.stride(0), B.stride(1), int(sub), ws_off, 0))
    # Heaviest layers first, so the grid-stride walk ends on small items (load balance).
    order = sorted(range(len(layers)), key=lambda i: -layers[i][F_D] * max(layers[i][F_M], 1))
    work = []
    for i in order:
        for row0 in range(0, layers[i][F_ROWS], cfg.BLOCK_M):
            work += [i, row0]
    values = tuple(v for layer in layers for v in layer) + tuple(work)
    return values, len(layers), len(work) // 2, ws_total


def _launch(grads, bases, subtract, cfg: ProjectConfig, tf32: bool) -> None:
    """One persistent launch for the layers whose rank fits on chip, one for the others."""
    small = [i for i, B in enumerate(bases) if B.shape[1] <= cfg.BLOCK_R]
    large = [i for i, B in enumerate(bases) if B.shape[1] > cfg.BLOCK_R]
    if small:
        _launch_one([grads[i] for i in small], [bases[i] for i in small],
                    [subtract[i] for i in small], cfg, tf32, False)
    if large:  # the workspace path holds more tiles at once: at most 64 x 64 (no spills)
        ws_cfg = replace(cfg, BLOCK_M=min(cfg.BLOCK_M, 64), BLOCK_R=min(cfg.BLOCK_R, 64))
        _launch_one([grads[i] for i in large], [bases[i] for i in large],
                    [subtract[i] for i in large], ws_cfg, tf32, True)


def _launch_one(grads, bases, subtract, cfg: ProjectConfig, tf32: bool, workspace: bool):
    G0 = grads[0]
    device = G0.device
    values, n_layers, n_work, ws_total = _plan(grads, bases, subtract, cfg)
    tab = _device_table(values, device)
    acc = accumulator_dtype(G0.dtype)
    ws = torch.empty(max(ws_total, 1), dtype=acc, device=device)
    if device.type == "cuda":
        programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        programs = 3  # interpreter: a few programs, so each walks several items
    grid = (max(1, min(n_work, programs)),)
    compute = compute_mode(acc, G0.dtype)
    project_grads_kernel[grid](
        tab, tab[n_layers * NF:], n_work, ws, G0,
        NF=NF, COMPUTE=compute, DOT_PRECISION=dot_precision(compute, tf32),
        WORKSPACE=workspace, BLOCK_M=cfg.BLOCK_M, BLOCK_D=cfg.BLOCK_D, BLOCK_R=cfg.BLOCK_R,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _bucket(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def pick_config(grads, bases, subtract, tf32: bool, bench=None) -> ProjectConfig:
    """The tiling for this group: measured once per (device, dtype, shape buckets) on CUDA.

    Each candidate runs on clones of the gradients (the op is in place), timed with
    ``triton.testing.do_bench``; a candidate that fails to compile (out of shared memory or
    registers) is skipped. With one candidate (the interpreter) nothing is measured.
    """
    G0 = grads[0]
    major = None
    if not INTERPRET and G0.device.type == "cuda":
        major = torch.cuda.get_device_capability(G0.device)[0]
    cands = candidates_for(G0.dtype, major)
    if len(cands) == 1 or not common.AUTOTUNE:
        return cands[0]
    max_m = max(B.shape[1] for B in bases)
    key = (G0.device, G0.dtype, tf32, _bucket(max_m), _bucket(max(G.shape[1] for G in grads)),
           _bucket(sum(G.shape[0] for G in grads)))
    if key in TUNED:
        return TUNED[key]
    if bench is None:
        def bench(fn):
            return triton.testing.do_bench(fn, warmup=5, rep=25)
    scratch = [G.clone() for G in grads]
    best, best_t = cands[0], float("inf")
    for cfg in cands:
        try:
            t = bench(lambda cfg=cfg: _launch(scratch, bases, subtract, cfg, tf32))
        except Exception:  # e.g. triton.runtime.errors.OutOfResources for this tiling
            continue
        if t < best_t:
            best, best_t = cfg, t
    TUNED[key] = best
    return best


def run_grouped(grads: list[Tensor], bases: list[Tensor], subtract: list[bool],
                    config: ProjectConfig | None = None, tf32: bool | None = None) -> None:
    """In place, for every i: ``G_i ← G_i − (G_i B_i)B_iᵀ`` or ``(G_i B_i)B_iᵀ``.

    One launch per gradient dtype and path. ``config`` forces a tiling (tests use it to
    exercise the workspace path with a small ``BLOCK_R``); ``tf32`` defaults to torch's setting.
    """
    if tf32 is None:
        tf32 = allow_tf32()
    groups: dict[torch.dtype, list[tuple[Tensor, Tensor, bool]]] = {}
    for G, B, sub in zip(grads, bases, subtract):
        if G.dtype != B.dtype or G.dim() != 2 or B.dim() != 2 or B.shape[0] != G.shape[1]:
            raise TypeError(f"project_grads_: G {G.dtype} {tuple(G.shape)} and B {B.dtype}"
                            f" {tuple(B.shape)} must be (rows, d) and (d, m) of one dtype")
        rows, d = G.shape
        if rows == 0 or d == 0:
            continue
        if B.shape[1] == 0:  # rank 0: nothing to remove, or nothing to keep
            if not sub:
                G.zero_()
            continue
        groups.setdefault(G.dtype, []).append((G, B, bool(sub)))
    for items in groups.values():
        gs, bs, ss = (list(t) for t in zip(*items))
        cfg = config or pick_config(gs, bs, ss, tf32)
        _launch(gs, bs, ss, cfg, tf32)


@torch.library.custom_op("unsc_fast_triton::project_grads_", mutates_args={"grads"})
def project_grads_(grads: list[Tensor], bases: list[Tensor], subtract: list[bool]) -> None:
    """The grouped projection as a torch op (see :func:`run_grouped`)."""
    run_grouped(grads, bases, subtract)


@project_grads_.register_fake
def _(grads, bases, subtract) -> None:
    return None
