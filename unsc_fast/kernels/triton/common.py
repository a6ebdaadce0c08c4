"""What the Triton kernels of the three ops share: switches, tilings, precision, jit helpers.

* switches: ``INTERPRET`` (``TRITON_INTERPRET=1``: CPU tensors through Triton's interpreter),
  ``AUTOTUNE`` (``UNSC_FAST_TRITON_AUTOTUNE=0``: no measuring, the last, always fitting,
  tiling is used);
* compute modes (how loaded tiles are converted before ``tl.dot``): ``KEEP``, ``TO_FP32``,
  ``TO_FP64``, chosen by :func:`compute_mode`; :func:`dot_precision` and :func:`allow_tf32`
  (TF32 for fp32 inputs exactly when ``torch.matmul`` would use it);
* the tilings of the two symmetric rank-k update kernels (:func:`configs_for`,
  :func:`conv_configs_for`, :func:`tilings`) and their grid helpers (:func:`num_splits`,
  :func:`upper_tiles`, :func:`sm_count`);
* jit helpers: :func:`upper_tile` (tile enumeration), :func:`convert`, :func:`add_tile`,
  :func:`row_range`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# UNSC_FAST_TRITON_AUTOTUNE=0: no measuring, the last (smallest, always fitting) tiling is used.
AUTOTUNE = os.environ.get("UNSC_FAST_TRITON_AUTOTUNE", "1") != "0"

# How the loaded tiles are converted before tl.dot: keep the input dtype, or cast.
KEEP, TO_FP32, TO_FP64 = 0, 1, 2
# Each split of the rows should cover at least this many BLOCK_K steps, so the cost of adding
# a tile into S (atomics) stays small against the work that produced it.
MIN_STEPS_PER_SPLIT = 4
# Grid axes 1 and 2 hold at most 65535 programs (CUDA's limit, which Triton inherits).
MAX_GRID_YZ = 65535


# ---- precision ------------------------------------------------------------------------------

def compute_mode(acc_dtype: torch.dtype, in_dtype: torch.dtype) -> int:
    """How tiles of ``in_dtype`` are fed to ``tl.dot`` that sums in ``acc_dtype``."""
    if acc_dtype == torch.float64:
        return TO_FP64
    if in_dtype in (torch.float32, torch.float64):
        return TO_FP32
    if in_dtype == torch.bfloat16 and INTERPRET:
        return TO_FP32  # Triton's interpreter returns garbage for bf16 tl.dot (triton 3.7)
    return KEEP  # fp16/bf16 tensor-core products, fp32 accumulation


def dot_precision(compute: int, allow_tf32: bool) -> str:
    """``input_precision`` of tl.dot: "ieee" for fp32 operands unless TF32 is allowed; other
    operand types get Triton's default ("tf32", which only affects fp32 operands)."""
    return "ieee" if compute == TO_FP32 and not allow_tf32 else "tf32"


def allow_tf32() -> bool:
    """TF32 for fp32 inputs exactly when torch.matmul would use it."""
    return torch.get_float32_matmul_precision() != "highest"


# ---- tilings of the symmetric rank-k update kernels (accumulate, accumulate_conv) -----------

def configs_for(major: int | None) -> list[triton.Config]:
    """Candidate tilings of the dense kernel for a GPU of compute capability ``major`` (None:
    the interpreter).

    Hopper (9.x) has 228 KB of shared memory per SM and gets large tiles and deeper pipelines;
    Ampere/Ada (8.x, 100-164 KB) smaller ones. ``ptxas -v`` shows no spills in the main loop
    for any of them (the 128-wide ones spill a little in the one-off epilogue). Autotuning
    picks among them per (d, n bucket, dtypes), skipping those that do not fit (Triton reports
    OutOfResources for them). The interpreter runs one program at a time in numpy: one small
    config.
    """
    if major is None:
        return [triton.Config({"BLOCK_D": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    # (BLOCK_D, BLOCK_K, num_warps, num_stages); the last one fits any GPU (fp64 included).
    if major >= 9:
        shapes = [(128, 64, 8, 3), (128, 32, 8, 4), (64, 64, 4, 4), (64, 32, 4, 5),
                  (32, 64, 4, 4), (32, 32, 4, 2)]
    elif major == 8:
        shapes = [(128, 32, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (64, 32, 4, 4),
                  (32, 64, 4, 4), (32, 32, 4, 2)]
    else:
        shapes = [(64, 32, 4, 2), (32, 32, 4, 2)]
    return [triton.Config({"BLOCK_D": bd, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bd, bk, w, s in shapes]


def conv_configs_for(major: int | None) -> list[triton.Config]:
    """Tilings for the conv kernel: its gathered tiles carry 2-D offsets and masks, so it
    gets smaller tiles than the dense kernel (chosen spill-free by ``ptxas -v`` for sm90/sm80,
    except the last large Hopper one)."""
    if major is None:
        return configs_for(None)
    if major >= 9:
        shapes = [(64, 64, 8, 3), (64, 32, 8, 3), (64, 32, 4, 3), (32, 64, 4, 3),
                  (128, 32, 8, 3), (32, 32, 4, 2)]
    elif major == 8:
        shapes = [(64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 4, 2), (32, 64, 4, 2), (32, 32, 4, 2)]
    else:
        shapes = [(64, 32, 4, 2), (32, 32, 4, 2)]
    return [triton.Config({"BLOCK_D": bd, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bd, bk, w, s in shapes]


def arch() -> int | None:
    """The current GPU's compute capability major, or None (interpreter, no GPU)."""
    if INTERPRET or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability()[0]


def tilings(configs: list[triton.Config]) -> list[triton.Config]:
    """The configs autotuning chooses among: all, or without tuning only the last one (it
    fits every GPU's shared memory, fp64 included)."""
    return configs if AUTOTUNE else configs[-1:]


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def num_splits(requested: int, rows: int, tiles: int, block_k: int, sms: int) -> int:
    """Row splits per S tile: enough programs for ~2 waves, few enough to amortise atomics."""
    steps = max(1, triton.cdiv(rows, block_k))
    if requested > 0:
        return max(1, min(requested, steps, MAX_GRID_YZ))
    want = triton.cdiv(2 * sms, max(1, tiles))
    return max(1, min(want, triton.cdiv(steps, MIN_STEPS_PER_SPLIT), MAX_GRID_YZ))


def upper_tiles(d: int, block_d: int) -> int:
    """Number of tiles in the upper triangle (diagonal included) of a d x d matrix."""
    t = triton.cdiv(d, block_d)
    return t * (t + 1) // 2


# ---- jit helpers ----------------------------------------------------------------------------

@triton.jit
def upper_tile(pid, T):
    """(ti, tj) of the pid-th tile of the upper triangle of a T x T grid, row by row."""
    ti = pid * 0
    r = pid
    while r >= T - ti:
        r -= T - ti
        ti += 1
    return ti, ti + r


@triton.jit
def convert(t, COMPUTE: tl.constexpr):
    """A loaded tile converted for tl.dot as the compute mode says (KEEP, TO_FP32, TO_FP64)."""
    if COMPUTE == 1:
        t = t.to(tl.float32)
    elif COMPUTE == 2:
        t = t.to(tl.float64)
    return t


@triton.jit
def add_tile(S_ptr, acc, offs_i, offs_j, d, n_splits):
    """S[offs_i, offs_j] += acc (S row-major d x d): plain RMW alone, atomics when split."""
    ptrs = S_ptr + offs_i.to(tl.int64)[:, None] * d + offs_j[None, :]  # d*d may pass 2^31
    mask = (offs_i < d)[:, None] & (offs_j < d)[None, :]
    if n_splits == 1:
        tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + acc, mask=mask)
    else:
        tl.atomic_add(ptrs, acc, mask=mask)


@triton.jit
def row_range(rows, BLOCK_K: tl.constexpr):
    """This program's rows [lo, hi): the rows split over grid axis 1 in BLOCK_K multiples."""
    per_split = tl.cdiv(tl.cdiv(rows, BLOCK_K), tl.num_programs(1)) * BLOCK_K
    lo = tl.program_id(1) * per_split
    return lo, tl.minimum(rows, lo + per_split)
