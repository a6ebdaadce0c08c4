"""Triton kernels for ``S += XᵀX`` (dense) and ``S[g] += P_gᵀP_g`` (conv, implicit im2col).

Both are symmetric rank-k updates ("syrk"): the grid enumerates only the upper-triangular
``BLOCK_D x BLOCK_D`` tiles of S (``ti <= tj``) on axis 0, splits the n rows (patches) into
``SPLIT`` contiguous ranges on axis 1, and each program adds its partial product to S: a plain
read-add-write when ``SPLIT == 1``, ``tl.atomic_add`` otherwise. Only the upper triangle of S
(diagonal included) is meaningful afterwards; diagonal tiles also write their lower half.

Precision: products are summed in S's dtype (fp32, or fp64 when S is fp64). fp16/bf16 inputs go
to ``tl.dot`` as they are (exact products, fp32 sums); fp32 inputs use TF32 only when torch's
``float32_matmul_precision`` is not ``"highest"`` (the same switch as ``torch.matmul``);
fp64 inputs to an fp32 S are rounded to fp32 first, like the reference.

The conv kernel gathers patch elements straight from x by pointer arithmetic over its four
strides (so NCHW, channels_last or any other layout), with stride, symmetric zero padding,
dilation and groups; nothing of size ``N·L x d`` is ever materialised.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# UNSC_FAST_TRITON_AUTOTUNE=0: no measuring, the last (smallest, always fitting) tiling is used.
AUTOTUNE = os.environ.get("UNSC_FAST_TRITON_AUTOTUNE", "1") != "0"

# How the loaded tiles are converted before tl.dot: keep the input dtype, or cast.
KEEP, TO_FP32, TO_FP64 = 0, 1, 2
# Each split of the rows should cover at least this many BLOCK_K steps, so the cost of adding
# a tile into S (atomics) stays small against the work that produced it.
_MIN_STEPS_PER_SPLIT = 4


def configs_for(major: int | None) -> list[triton.Config]:
    """Candidate tilings for a GPU of compute capability ``major`` (None: the interpreter).

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


def _arch() -> int | None:
    if INTERPRET or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability()[0]


CONFIGS = configs_for(_arch())
CONV_CONFIGS = conv_configs_for(_arch())
if not AUTOTUNE:  # the last tiling fits every GPU's shared memory, fp64 included
    CONFIGS, CONV_CONFIGS = CONFIGS[-1:], CONV_CONFIGS[-1:]


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _num_splits(requested: int, rows: int, tiles: int, block_k: int, sms: int) -> int:
    """Row splits per S tile: enough programs for ~2 waves, few enough to amortise atomics."""
    steps = max(1, triton.cdiv(rows, block_k))
    if requested > 0:
        return max(1, min(requested, steps))
    want = triton.cdiv(2 * sms, max(1, tiles))
    return max(1, min(want, triton.cdiv(steps, _MIN_STEPS_PER_SPLIT)))


def _compute_mode(s_dtype: torch.dtype, x_dtype: torch.dtype) -> int:
    if s_dtype == torch.float64:
        return TO_FP64
    if x_dtype in (torch.float32, torch.float64):
        return TO_FP32
    if x_dtype == torch.bfloat16 and INTERPRET:
        return TO_FP32  # Triton's interpreter returns garbage for bf16 tl.dot (triton 3.7)
    return KEEP  # fp16/bf16 tensor-core products, fp32 accumulation


def dot_precision(compute: int, allow_tf32: bool) -> str:
    """``input_precision`` of tl.dot: "ieee" for fp32 operands unless TF32 is allowed; other
    operand types get Triton's default ("tf32", which only affects fp32 operands)."""
    return "ieee" if compute == TO_FP32 and not allow_tf32 else "tf32"


def allow_tf32() -> bool:
    """TF32 for fp32 inputs exactly when torch.matmul would use it."""
    return torch.get_float32_matmul_precision() != "highest"


@triton.jit
def _upper_tile(pid, T):
    """(ti, tj) of the pid-th tile of the upper triangle of a T x T grid, row by row."""
    ti = pid * 0
    r = pid
    while r >= T - ti:
        r -= T - ti
        ti += 1
    return ti, ti + r


@triton.jit
def _convert(t, COMPUTE: tl.constexpr):
    if COMPUTE == 1:
        t = t.to(tl.float32)
    elif COMPUTE == 2:
        t = t.to(tl.float64)
    return t


@triton.jit
def _add_tile(S_ptr, acc, offs_i, offs_j, d, n_splits):
    """S[offs_i, offs_j] += acc (S row-major d x d): plain RMW alone, atomics when split."""
    ptrs = S_ptr + offs_i.to(tl.int64)[:, None] * d + offs_j[None, :]  # d*d may pass 2^31
    mask = (offs_i < d)[:, None] & (offs_j < d)[None, :]
    if n_splits == 1:
        tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + acc, mask=mask)
    else:
        tl.atomic_add(ptrs, acc, mask=mask)


@triton.jit
def _row_range(rows, BLOCK_K: tl.constexpr):
    """This program's rows [lo, hi): the rows split over grid axis 1 in BLOCK_K multiples."""
    per_split = tl.cdiv(tl.cdiv(rows, BLOCK_K), tl.num_programs(1)) * BLOCK_K
    lo = tl.program_id(1) * per_split
    return lo, tl.minimum(rows, lo + per_split)


@triton.jit
def _syrk_dense_kernel(S_ptr, X_ptr, n, d, stride_xn, stride_xd, n_bucket,
                       COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    ti, tj = _upper_tile(tl.program_id(0), tl.cdiv(d, BLOCK_D))
    n_splits = tl.num_programs(1)
    row_lo, row_hi = _row_range(n, BLOCK_K)

    offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    col_i = offs_i.to(tl.int64) * stride_xd
    col_j = offs_j.to(tl.int64) * stride_xd
    mask_i = offs_i < d
    mask_j = offs_j < d
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=S_ptr.dtype.element_ty)
    for k0 in range(row_lo, row_hi, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        mask_k = rows < row_hi
        row_off = rows.to(tl.int64) * stride_xn
        # a = X[rows, offs_i]ᵀ (BLOCK_D, BLOCK_K), b = X[rows, offs_j] (BLOCK_K, BLOCK_D)
        a = tl.load(X_ptr + col_i[:, None] + row_off[None, :],
                    mask=mask_i[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(X_ptr + row_off[:, None] + col_j[None, :],
                    mask=mask_k[:, None] & mask_j[None, :], other=0.0)
        acc = tl.dot(_convert(a, COMPUTE), _convert(b, COMPUTE), acc,
                     input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    _add_tile(S_ptr, acc, offs_i, offs_j, d, n_splits)


@triton.jit
def _patch_offsets(rows, cols, cmask, row_hi, g, Cg, OHW, OW, H, W,
                   sxn, sxc, sxh, sxw, KHW, KW, conv_sh, conv_sw, pad_h, pad_w, dil_h, dil_w,
                   ROWS_FIRST: tl.constexpr):
    """Pointer offsets and mask of the patch elements P_g[rows, cols] inside x.

    Row r = (image, oh, ow); column c = (ci, ki, kj) as in ``weight.view(out, -1)``.
    The tile is (rows, cols) when ROWS_FIRST, else (cols, rows).
    """
    img = rows // OHW
    rem = rows - img * OHW
    oh = rem // OW
    ow = rem - oh * OW
    ih0 = oh * conv_sh - pad_h
    iw0 = ow * conv_sw - pad_w
    row_off = img.to(tl.int64) * sxn + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw
    rmask = rows < row_hi

    ci = cols // KHW
    rem_c = cols - ci * KHW
    ki = rem_c // KW
    kj = rem_c - ki * KW
    dh = ki * dil_h
    dw = kj * dil_w
    col_off = (g * Cg + ci).to(tl.int64) * sxc + dh.to(tl.int64) * sxh + dw.to(tl.int64) * sxw

    if ROWS_FIRST:
        ih = ih0[:, None] + dh[None, :]
        iw = iw0[:, None] + dw[None, :]
        offs = row_off[:, None] + col_off[None, :]
        mask = rmask[:, None] & cmask[None, :]
    else:
        ih = dh[:, None] + ih0[None, :]
        iw = dw[:, None] + iw0[None, :]
        offs = col_off[:, None] + row_off[None, :]
        mask = cmask[:, None] & rmask[None, :]
    mask = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    return offs, mask


@triton.jit
def _syrk_conv_kernel(S_ptr, x_ptr, M, d, Cg, H, W, OHW, OW, sxn, sxc, sxh, sxw,
                      KHW, KW, conv_sh, conv_sw, pad_h, pad_w, dil_h, dil_w, m_bucket,
                      COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    ti, tj = _upper_tile(tl.program_id(0), tl.cdiv(d, BLOCK_D))
    g = tl.program_id(2)
    n_splits = tl.num_programs(1)
    row_lo, row_hi = _row_range(M, BLOCK_K)

    offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_i = offs_i < d
    mask_j = offs_j < d
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=S_ptr.dtype.element_ty)
    for k0 in range(row_lo, row_hi, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        offs_a, mask_a = _patch_offsets(rows, offs_i, mask_i, row_hi, g, Cg, OHW, OW, H, W,
                                        sxn, sxc, sxh, sxw, KHW, KW, conv_sh, conv_sw,
                                        pad_h, pad_w, dil_h, dil_w, ROWS_FIRST=False)
        offs_b, mask_b = _patch_offsets(rows, offs_j, mask_j, row_hi, g, Cg, OHW, OW, H, W,
                                        sxn, sxc, sxh, sxw, KHW, KW, conv_sh, conv_sw,
                                        pad_h, pad_w, dil_h, dil_w, ROWS_FIRST=True)
        a = tl.load(x_ptr + offs_a, mask=mask_a, other=0.0)  # (BLOCK_D, BLOCK_K) = P_gᵀ
        b = tl.load(x_ptr + offs_b, mask=mask_b, other=0.0)  # (BLOCK_K, BLOCK_D) = P_g
        acc = tl.dot(_convert(a, COMPUTE), _convert(b, COMPUTE), acc,
                     input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    _add_tile(S_ptr + g.to(tl.int64) * d * d, acc, offs_i, offs_j, d, n_splits)


# S is accumulated into: the autotuner restores it after each trial.
syrk_dense_kernel = triton.autotune(configs=CONFIGS, key=["d", "n_bucket"],
                                    restore_value=["S_ptr"])(_syrk_dense_kernel)
syrk_conv_kernel = triton.autotune(configs=CONV_CONFIGS, key=["d", "m_bucket"],
                                   restore_value=["S_ptr"])(_syrk_conv_kernel)


def _upper_tiles(d: int, block_d: int) -> int:
    t = triton.cdiv(d, block_d)
    return t * (t + 1) // 2


@triton_op("unsc_fast_triton::syrk_", mutates_args={"S"})
def syrk_(S: Tensor, X: Tensor, split: int, allow_tf32: bool) -> None:
    """``S += XᵀX`` on the upper-triangular tiles of S; ``split`` > 0 forces the row splits."""
    n, d = X.shape
    if n == 0 or d == 0:
        return
    sms = _sm_count(S.device)
    compute = _compute_mode(S.dtype, X.dtype)

    def grid(meta):
        tiles = _upper_tiles(d, meta["BLOCK_D"])
        return (tiles, _num_splits(split, n, tiles, meta["BLOCK_K"], sms))

    wrap_triton(syrk_dense_kernel)[grid](
        S, X, n, d, X.stride(0), X.stride(1), triton.next_power_of_2(n),
        COMPUTE=compute, DOT_PRECISION=dot_precision(compute, allow_tf32))


@triton_op("unsc_fast_triton::syrk_conv_", mutates_args={"S"})
def syrk_conv_(S: Tensor, x: Tensor, kernel_size: list[int], stride: list[int],
               padding: list[int], dilation: list[int], groups: int, split: int,
               allow_tf32: bool) -> None:
    """``S[g] += P_gᵀP_g`` over the patches of x (symmetric zero ``padding`` = (pad_h, pad_w))."""
    N, C, H, W = x.shape
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    Cg = C // groups
    d = Cg * kh * kw
    M = N * OH * OW
    if OH <= 0 or OW <= 0 or M == 0 or d == 0:
        return
    sms = _sm_count(S.device)
    compute = _compute_mode(S.dtype, x.dtype)

    def grid(meta):
        tiles = _upper_tiles(d, meta["BLOCK_D"])
        return (tiles, _num_splits(split, M, tiles * groups, meta["BLOCK_K"], sms), groups)

    wrap_triton(syrk_conv_kernel)[grid](
        S, x, M, d, Cg, H, W, OH * OW, OW, x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        kh * kw, kw, sh, sw, ph, pw, dh, dw, triton.next_power_of_2(M),
        COMPUTE=compute, DOT_PRECISION=dot_precision(compute, allow_tf32))
