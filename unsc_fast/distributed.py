"""UNSC on ``torch.distributed``: the three steps, each split over ranks.

1. Statistics: every rank collects over its shard of D_r, then
   :func:`all_reduce_moments_` (what :meth:`SecondMoments.all_reduce_` calls) sums them. S is
   symmetric, so only its upper block rows travel (about half the bytes of S), packed into
   buckets of a bounded size (few collectives, bounded extra memory).
2. Bases: :func:`distributed_bases` (``NullSpace.from_moments(..., distribute=True)``) gives
   each rank a share of the layers, balanced by eigendecomposition cost (groups · d³), and
   broadcasts every basis from its owner: the eigh time drops to about 1/world.
3. Projection: :func:`unsc_fast.project_` accepts DTensor gradients sharded by rows
   (FSDP2's ``fully_shard`` shards dim 0) or replicated. ``G ← G − (GB)Bᵀ`` acts on each row
   on its own, so every rank projects its local rows with the full basis and no
   communication; with DDP the gradients are ordinary tensors and each rank projects its copy.

A mismatch between ranks (different layers, shapes, or statistics not yet summed) is detected
by one small collective before any data moves, and raised on every rank rather than hanging.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from . import helpers
from .layer_basis import LayerBasis, layer_basis
from .layer_moments import MomentSet


_BLOCK = 256  # largest block-row height of S's packed upper triangle


def _block_rows(d: int) -> int:
    """About 16 block rows a matrix: the lower half of the diagonal blocks, sent as zeros,
    stays near 1/32 of S; at least 32 rows a block, so small S take few copies."""
    return min(_BLOCK, max(32, d // 16))


def _dist():
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: call"
                           " torch.distributed.init_process_group first (or launch with torchrun)")
    return dist


def _signature(moments: MomentSet, with_counts: bool) -> str:
    parts = [f"{n}:{lm.kind}:{tuple(lm.S.shape)}:{lm.S.dtype}:{lm.colsum is not None}"
             + (f":{lm.n}" if with_counts else "") for n, lm in moments.moments.items()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _check_same(moments: MomentSet, group, with_counts: bool, what: str) -> None:
    """Raise on every rank unless all ranks hold statistics of the same layout."""
    dist = _dist()
    h = int(_signature(moments, with_counts)[:15], 16)  # < 2**60: exact in int64
    dev = _comm_device(moments, group)
    v = torch.tensor([h, -h], dtype=torch.int64, device=dev)
    dist.all_reduce(v, op=dist.ReduceOp.MAX, group=group)
    if int(v[0]) != h or int(v[1]) != -h:
        raise ValueError(what)


def _comm_device(moments: MomentSet, group) -> torch.device:
    """Where small control tensors live: the statistics' device (NCCL needs CUDA tensors)."""
    for lm in moments.moments.values():
        return lm.S.device
    return torch.device("cpu")


# -- 1. statistics ---------------------------------------------------------------------------


def _segments(moments: MomentSet) -> list[tuple[Tensor, Callable[[Tensor], None]]]:
    """(payload, write_back) pairs: S's upper block rows and the column sums of every layer.

    A payload is ``triu`` of the block row, so the lower triangle (unspecified, may differ
    between backends and ranks) never enters the sum.
    """
    segs = []
    for lm in moments.moments.values():
        if lm.diagonal:                # an embedding's token counts: one int64 vector
            segs.append((lm.S[0], lm.S[0].copy_))
            continue
        for g in range(lm.groups):
            S, d = lm.S[g], lm.dim
            h = _block_rows(d)
            for i0 in range(0, d, h):
                view = S[i0:i0 + h, i0:]
                segs.append((view, view.copy_))
            if lm.colsum is not None:
                segs.append((lm.colsum[g], lm.colsum[g].copy_))
    return segs


def all_reduce_moments_(moments: MomentSet, group=None, bucket_mb: float = 64.0
                        ) -> MomentSet:
    """Sum ``moments`` over the ranks of ``group`` in place; every rank gets the total.

    Sends the upper triangle of S by block rows (about half of S) in buckets of at most
    ``bucket_mb`` MiB (the extra memory bound), plus the row counts in one small collective.
    The lower triangle of S is unspecified afterwards, as after any accumulate.
    """
    dist = _dist()
    if bucket_mb <= 0:
        raise ValueError(f"bucket_mb must be positive, got {bucket_mb}")
    _check_same(moments, group, with_counts=False,
                what="ranks hold statistics of different layers, shapes or dtypes: build"
                     " SecondMoments from the same model and options on every rank")
    segs = _segments(moments)
    by_kind: dict[tuple, list] = {}
    for payload, back in segs:
        by_kind.setdefault((payload.dtype, payload.device), []).append((payload, back))
    for (dtype, _), items in by_kind.items():
        cap = max(1, int(bucket_mb * 2 ** 20) // torch.empty((), dtype=dtype).element_size())
        bucket: list = []
        size = 0
        for payload, back in items:
            if bucket and size + payload.numel() > cap:
                _reduce_bucket(bucket, group)
                bucket, size = [], 0
            bucket.append((payload, back))
            size += payload.numel()
        if bucket:
            _reduce_bucket(bucket, group)
    dev = _comm_device(moments, group)
    n = torch.tensor([float(lm.n) for lm in moments.moments.values()], dtype=torch.float64,
                     device=dev)
    dist.all_reduce(n, group=group)
    for lm, total in zip(moments.moments.values(), n.tolist()):
        lm.n = int(total)
    return moments


def _reduce_bucket(bucket: list, group) -> None:
    dist = _dist()
    first = bucket[0][0]
    flat = torch.empty(sum(p.numel() for p, _ in bucket), dtype=first.dtype, device=first.device)
    offset = 0
    for payload, _ in bucket:
        k = payload.numel()
        dst = flat[offset:offset + k].view(payload.shape)
        dst.copy_(payload)
        if dst.dim() == 2:
            dst.triu_()
        offset += k
    dist.all_reduce(flat, group=group)
    offset = 0
    for payload, back in bucket:
        k = payload.numel()
        back(flat[offset:offset + k].view(payload.shape))
        offset += k


# -- 2. bases --------------------------------------------------------------------------------


def assign_layers(costs: list[float], world: int) -> list[int]:
    """Owner rank of each layer: longest job first onto the least loaded rank (deterministic)."""
    load = [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner


def distributed_bases(moments: MomentSet, rule, *, include_bias: bool, store: str,
                      dtype: torch.dtype | Mapping[str, torch.dtype], group=None,
                      progress: bool = False, method: str = "eigh") -> dict:
    """Per-layer bases, each decomposed on one rank and broadcast to all (see module doc).

    ``dtype``: the stored bases' dtype, one for all layers or one per layer name. An
    embedding's basis (token ids, int64) costs a sort, not an eigh, and is weighed so.

    Every rank must pass the same, already summed statistics; that is checked (layers, shapes
    and row counts) before any work. A failure on the rank that owns a layer is raised on
    every rank.
    """
    dist = _dist()
    _check_same(moments, group, with_counts=True,
                what="ranks hold different statistics (layers, shapes or row counts): sum them"
                     " with SecondMoments.all_reduce_() before building distributed bases")
    world, me = dist.get_world_size(group), dist.get_rank(group)
    names = list(moments.moments)
    lms = list(moments.moments.values())
    extra = 1 if include_bias else 0
    dtypes = dtype if isinstance(dtype, Mapping) else {n: dtype for n in names}
    owner = assign_layers([float(lm.dim) if lm.diagonal else
                           lm.groups * float(lm.dim + extra) ** 3 for lm in lms], world)

    mine: dict[int, LayerBasis] = {}
    error: BaseException | None = None
    owned = [i for i in range(len(lms)) if owner[i] == me]
    with helpers.progress(owned, progress, f"bases (rank {me})") as todo:
        for i in todo:
            try:
                mine[i] = layer_basis(names[i], lms[i], rule, include_bias=include_bias,
                                      store=store, dtype=dtypes[names[i]], method=method)
            except Exception as exc:  # raised on every rank below, after the collective
                error = exc
                break

    # One collective for every layer's (columns stored, core rank, subtract) per group, and a
    # failure flag per rank: all ranks learn the layout, or all raise.
    dev = _comm_device(moments, group)
    offsets = [0]
    for lm in lms:
        offsets.append(offsets[-1] + lm.groups)
    meta = torch.zeros(offsets[-1] * 3 + world, dtype=torch.int64, device=dev)
    for i, lb in mine.items():
        for g in range(lb.groups):
            meta[3 * (offsets[i] + g):3 * (offsets[i] + g + 1)] = torch.tensor(
                [lb.bases[g].shape[-1], lb.ranks[g], int(lb.subtract[g])])
    if error is not None:
        meta[offsets[-1] * 3 + me] = 1
    dist.all_reduce(meta, group=group)
    failed = [r for r in range(world) if int(meta[offsets[-1] * 3 + r])]
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"building the bases failed on rank(s) {failed}; see their error")
    meta = meta[: offsets[-1] * 3].view(-1, 3).tolist()

    layers = {}
    for i, (name, lm) in enumerate(zip(names, lms)):
        rows = meta[offsets[i]:offsets[i + 1]]
        d = lm.dim if lm.diagonal else lm.dim + extra
        widths = [m for m, _, _ in rows]
        if owner[i] == me:
            buf = torch.cat(mine[i].bases, 1 - int(lm.diagonal)).contiguous()
        elif lm.diagonal:
            buf = torch.empty(sum(widths), dtype=torch.int64, device=lm.S.device)
        else:
            buf = torch.empty(d, sum(widths), dtype=dtypes[name], device=lm.S.device)
        if buf.numel():
            src = owner[i] if group is None else dist.get_global_rank(group, owner[i])
            dist.broadcast(buf, src=src, group=group)
        layers[name] = LayerBasis(lm.kind, d, list(buf.split(widths, -1)),
                                  [bool(s) for _, _, s in rows], [r for _, r, _ in rows],
                                  include_bias and not lm.diagonal)
    return layers


# -- 3. projection ---------------------------------------------------------------------------


def local_rows(grad: Tensor, name: str) -> tuple[Tensor, int]:
    """``(local tensor, first global row)`` of a gradient: itself for a plain tensor, the local
    shard for a DTensor sharded on dim 0 or replicated (any other placement is refused)."""
    try:
        from torch.distributed.tensor import DTensor, Replicate, Shard
    except ImportError:  # torch without distributed
        return grad, 0
    if not isinstance(grad, DTensor):
        return grad, 0
    for p in grad.placements:
        if not (isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim == 0)):
            raise ValueError(f"layer {name!r}: gradient is a DTensor with placements"
                             f" {grad.placements}; only Shard(0) (FSDP2) and Replicate can be"
                             " projected locally")
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    _, offset = compute_local_shape_and_global_offset(grad.shape, grad.device_mesh,
                                                      grad.placements)
    return grad.to_local(), int(offset[0]) if offset else 0
