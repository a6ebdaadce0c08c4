"""Triton kernel of ``accumulate_``: ``S += XᵀX`` (dense), a symmetric rank-k update.

The grid enumerates only the upper-triangular ``BLOCK_D x BLOCK_D`` tiles of S (``ti <= tj``)
on axis 0, splits the n rows into ``SPLIT`` contiguous ranges on axis 1, and each program adds
its partial product to S: a plain read-add-write when ``SPLIT == 1``, ``tl.atomic_add``
otherwise. Only the upper triangle of S (diagonal included) is meaningful afterwards; diagonal
tiles also write their lower half.

Precision: products are summed in S's dtype (fp32, or fp64 when S is fp64). fp16/bf16 inputs go
to ``tl.dot`` as they are (exact products, fp32 sums); fp32 inputs use TF32 only when torch's
``float32_matmul_precision`` is not ``"highest"`` (the same switch as ``torch.matmul``);
fp64 inputs to an fp32 S are rounded to fp32 first, like the reference.

The op is a :func:`torch.library.triton_op` (``torch.ops.unsc_fast_triton.accumulate_``), so
``torch.compile`` sees the kernel.
"""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .common import (
    add_tile, arch, compute_mode, configs_for, convert, dot_precision, num_splits, row_range,
    sm_count, tilings, upper_tile, upper_tiles,
)

CONFIGS = tilings(configs_for(arch()))


@triton.jit
def _accumulate_kernel(S_ptr, X_ptr, n, d, stride_xn, stride_xd, n_bucket,
                       COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    ti, tj = upper_tile(tl.program_id(0), tl.cdiv(d, BLOCK_D))
    n_splits = tl.num_programs(1)
    row_lo, row_hi = row_range(n, BLOCK_K)

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
        acc = tl.dot(convert(a, COMPUTE), convert(b, COMPUTE), acc,
                     input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    add_tile(S_ptr, acc, offs_i, offs_j, d, n_splits)


# S is accumulated into: the autotuner restores it after each trial. ``accumulate_kernel.fn``
# is the plain jit function (compiled ahead of time by the tests).
accumulate_kernel = triton.autotune(configs=CONFIGS, key=["d", "n_bucket"],
                                    restore_value=["S_ptr"])(_accumulate_kernel)


@triton_op("unsc_fast_triton::accumulate_", mutates_args={"S"})
def accumulate_(S: Tensor, X: Tensor, split: int, allow_tf32: bool) -> None:
    """``S += XᵀX`` on the upper-triangular tiles of S; ``split`` > 0 forces the row splits."""
    n, d = X.shape
    if n == 0 or d == 0:
        return
    sms = sm_count(S.device)
    compute = compute_mode(S.dtype, X.dtype)

    def grid(meta):
        tiles = upper_tiles(d, meta["BLOCK_D"])
        return (tiles, num_splits(split, n, tiles, meta["BLOCK_K"], sms))

    wrap_triton(accumulate_kernel)[grid](
        S, X, n, d, X.stride(0), X.stride(1), triton.next_power_of_2(n),
        COMPUTE=compute, DOT_PRECISION=dot_precision(compute, allow_tf32))
