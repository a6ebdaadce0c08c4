"""Triton kernel of ``accumulate_conv_``: ``S[g] += P_gᵀP_g`` by implicit im2col.

The same symmetric rank-k update as :mod:`.accumulate` (upper-triangular tiles of S on grid
axis 0, row splits on axis 1, one group per index of axis 2), with the patch rows P_g gathered
straight from x by pointer arithmetic over its four strides (so NCHW, channels_last or any
other layout), with stride, symmetric zero padding, dilation and groups; nothing of size
``N·L x d`` is ever materialised. The output size (OH, OW) is an argument, taken by the caller
from :meth:`unsc_fast.geometry.ConvGeometry.output_size`: no formula is repeated here.

Precision as in :mod:`.accumulate`. The op is a :func:`torch.library.triton_op`
(``torch.ops.unsc_fast_triton.accumulate_conv_``), so ``torch.compile`` sees the kernel.
"""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .common import (
    MAX_GRID_YZ, add_tile, arch, compute_mode, conv_configs_for, convert, dot_precision, num_splits,
    row_range, sm_count, tilings, upper_tile, upper_tiles,
)

CONFIGS = tilings(conv_configs_for(arch()))


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
def _accumulate_conv_kernel(S_ptr, x_ptr, M, d, Cg, H, W, OHW, OW, sxn, sxc, sxh, sxw,
                            KHW, KW, conv_sh, conv_sw, pad_h, pad_w, dil_h, dil_w, m_bucket,
                            COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    ti, tj = upper_tile(tl.program_id(0), tl.cdiv(d, BLOCK_D))
    g = tl.program_id(2)
    n_splits = tl.num_programs(1)
    row_lo, row_hi = row_range(M, BLOCK_K)

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
        acc = tl.dot(convert(a, COMPUTE), convert(b, COMPUTE), acc,
                     input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    add_tile(S_ptr + g.to(tl.int64) * d * d, acc, offs_i, offs_j, d, n_splits)


# S is accumulated into: the autotuner restores it after each trial. ``.fn``: the jit function.
accumulate_conv_kernel = triton.autotune(configs=CONFIGS, key=["d", "m_bucket"],
                                         restore_value=["S_ptr"])(_accumulate_conv_kernel)


@triton_op("unsc_fast_triton::accumulate_conv_", mutates_args={"S"})
def accumulate_conv_(S: Tensor, x: Tensor, kernel_size: list[int], stride: list[int],
                     padding: list[int], dilation: list[int], groups: int,
                     output_size: list[int], split: int, allow_tf32: bool) -> None:
    """``S[g] += P_gᵀP_g`` over the patches of x (symmetric zero ``padding`` = (pad_h, pad_w));
    ``output_size`` = (OH, OW) from ``ConvGeometry.output_size(H, W)``."""
    N, C, H, W = x.shape
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    OH, OW = output_size
    Cg = C // groups
    d = Cg * kh * kw
    M = N * OH * OW
    if OH <= 0 or OW <= 0 or M == 0 or d == 0:
        return
    if groups > MAX_GRID_YZ:   # unsc_fast.accumulate_conv_ slices the groups for us
        raise ValueError(f"unsc_fast_triton::accumulate_conv_: {groups} groups exceed the grid"
                         f" limit {MAX_GRID_YZ}; call unsc_fast.accumulate_conv_, which slices"
                         " them")
    sms = sm_count(S.device)
    compute = compute_mode(S.dtype, x.dtype)

    def grid(meta):
        tiles = upper_tiles(d, meta["BLOCK_D"])
        return (tiles, num_splits(split, M, tiles * groups, meta["BLOCK_K"], sms), groups)

    wrap_triton(accumulate_conv_kernel)[grid](
        S, x, M, d, Cg, H, W, OH * OW, OW, x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        kh * kw, kw, sh, sw, ph, pw, dh, dw, triton.next_power_of_2(M),
        COMPUTE=compute, DOT_PRECISION=dot_precision(compute, allow_tf32))
