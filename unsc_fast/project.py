"""``project_``: the call a user puts between ``loss.backward()`` and ``optimizer.step()``;
``projected_backward``: the same projection done inside ``backward()`` for Linear layers,
from their inputs when that is cheaper."""
from __future__ import annotations

import collections
import contextlib
import math
import types
from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .bases import LayerBasis, NullSpace
from .distributed import local_rows


def _params_by_module(model_or_params: nn.Module | Mapping[str, Tensor] | Iterable
                      ) -> dict[str, dict[str, Tensor]]:
    if isinstance(model_or_params, nn.Module):  # a tied weight under each module's name
        named = model_or_params.named_parameters(remove_duplicate=False)
    elif isinstance(model_or_params, Mapping):
        named = model_or_params.items()
    else:
        named = model_or_params
    out: dict[str, dict[str, Tensor]] = {}
    for name, p in named:
        module, _, leaf = name.rpartition(".")
        out.setdefault(module, {})[leaf] = p
    return out


@torch.no_grad()
def project_(model_or_params: nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
             bases: NullSpace, *, backend: str | None = None) -> None:
    """Project the weight gradients of every layer in ``bases`` onto its null space, in place.

    ``model_or_params`` is a model, or its ``named_parameters()`` (any subset, as a dict or
    pairs). For each layer ``name`` in ``bases`` the gradient of ``name.weight`` (and of
    ``name.bias`` when the bases include the bias feature) is replaced by its projection, so
    an SGD step leaves the layer's outputs on D_r (nearly) unchanged. Parameters whose
    ``.grad`` is None are skipped. Every layer is checked before any gradient is touched.

    An embedding's basis (``embeddings=True``) is a set of token rows: its gradient rows of
    the core tokens are zeroed (a row mask, done in PyTorch for every backend). A weight
    tied between an embedding and a head is projected by both bases (the two act on
    opposite sides of the one gradient and commute).

    Distributed: with DDP pass the wrapped module (``ddp.module``); each rank projects its
    copy of the all-reduced gradients. With FSDP2 (``fully_shard``) the gradients are DTensors
    sharded by rows and each rank projects its own rows, with no communication (a row's
    projection needs only that row and the basis).

    Example::

        loss.backward()
        unsc_fast.project_(model, bases)
        optimizer.step()
    """
    if not isinstance(bases, NullSpace):
        raise TypeError(f"bases must be a NullSpace, got {type(bases).__name__}")
    params = _params_by_module(model_or_params)
    missing = [n for n in bases if "weight" not in params.get(n, {})]
    if missing:
        raise KeyError(f"bases name layers with no weight parameter here: {missing}")

    grads, mats, subtract, write_back, row_masks = [], [], [], [], []
    for name, lb in bases.items():
        W, b = params[name]["weight"], params[name].get("bias")
        if W.grad is None:
            continue
        # Rows are projected independently, so a row shard (FSDP2) is projected locally.
        grad, row0 = local_rows(W.grad, name)
        if lb.diagonal:
            _check_embedding(name, lb, W.grad, grad)
            row_masks.append((grad, row0, lb))
            continue
        rows_total = W.grad.shape[0]
        if lb.kind == "conv1d":
            grad, rows_total = _conv1d_rows(name, W.grad, grad), W.grad.shape[1]
        bgrad = _bias_rows(name, lb, b, grad, row0)
        G = _gradient_matrix(name, lb, grad, bgrad, rows_total)
        per_group = rows_total // lb.groups
        for g in range(lb.groups):
            lo, hi = max(row0, g * per_group), min(row0 + len(G), (g + 1) * per_group)
            if hi > lo:
                grads.append(G[lo - row0:hi - row0])
                mats.append(lb.bases[g])
                subtract.append(lb.subtract[g])
        # G is projected in place: it is copied back unless it is a view of the gradient.
        # Told from the view relation, not by comparing data pointers, which torch.compile
        # cannot trace (fullgraph=True would fail on it).
        view_of = G._base
        is_view = view_of is not None and (view_of is grad or view_of is grad._base)
        if not is_view or bgrad is not None:
            write_back.append((G, grad, bgrad))
    ops.project_grads_(grads, mats, subtract, backend=backend)
    for grad, row0, lb in row_masks:
        _mask_rows_(grad, row0, lb)
    for G, grad, bgrad in write_back:
        k = grad[0].numel() if len(grad) else 0
        grad.copy_(G[:, :k].view_as(grad))
        if bgrad is not None:
            bgrad.copy_(G[:, k])


def _check_embedding(name: str, lb: LayerBasis, full: Tensor, local: Tensor) -> None:
    """An embedding's gradient (vocab, dim) must be dense, with vocab = the basis's d."""
    if full.is_sparse or local.is_sparse:
        raise ValueError(f"layer {name!r}: a sparse embedding gradient cannot be projected;"
                         " build the embedding with sparse=False")
    if full.dim() != 2 or full.shape[0] != lb.d:
        raise ValueError(f"layer {name!r}: gradient {tuple(full.shape)} is not (vocab, dim)"
                         f" for a vocabulary of d = {lb.d} tokens")
    if local.device != lb.device:
        raise ValueError(f"layer {name!r}: gradient is on {local.device}, basis on"
                         f" {lb.device}; use bases.to(device)")


def _mask_rows_(grad: Tensor, row0: int, lb: LayerBasis) -> None:
    """An embedding's projection: the basis is the one-hot columns e_t of a token set, so
    ``G − G U_r U_rᵀ`` zeroes the gradient rows of the core tokens (``subtract``) and
    ``G U_0 U_0ᵀ`` keeps only those of the null tokens. ``grad`` holds rows row0.. of it."""
    ids = lb.bases[0]
    if row0 != 0 or len(grad) != lb.d:   # a row shard: the ids that fall in it, made local
        ids = ids[(ids >= row0) & (ids < row0 + len(grad))] - row0
    if lb.subtract[0]:
        grad.index_fill_(0, ids, 0)
    else:   # keep the null tokens' rows, zero the rest: no vocabulary-sized mask per step
        kept = grad.index_select(0, ids)
        grad.zero_()
        grad.index_copy_(0, ids, kept)


def _conv1d_rows(name: str, full: Tensor, local: Tensor) -> Tensor:
    """The (out, in) view Wᵀ of a transformers Conv1D gradient (weight (in, out)): its rows
    are what the basis acts on. A shard of the input dimension cannot be projected locally."""
    if local.shape != full.shape:
        raise ValueError(f"layer {name!r}: a Conv1D gradient sharded on its input dimension"
                         " cannot be projected locally; shard it on dim 1 or replicate it")
    return local.mT


def _bias_rows(name: str, lb: LayerBasis, b: Tensor | None, grad: Tensor, row0: int
               ) -> Tensor | None:
    """The local bias gradient that goes with the local weight rows, when the bases cover it."""
    if not lb.include_bias:
        return None
    if b is None or b.grad is None:
        raise ValueError(f"layer {name!r}: bases include the bias but it has no gradient")
    bgrad, b0 = local_rows(b.grad, name)
    if b0 != row0 or len(bgrad) != len(grad):
        raise ValueError(f"layer {name!r}: the local shards of weight (rows {row0}.."
                         f"{row0 + len(grad)}) and bias (rows {b0}..{b0 + len(bgrad)}) differ")
    return bgrad


def _gradient_matrix(name: str, lb: LayerBasis, grad: Tensor, bgrad: Tensor | None,
                     out: int) -> Tensor:
    """The (rows, d) gradient of one layer (its local rows of ``out``): a view of ``grad``
    where possible, a copy (with the bias column appended) otherwise. Validates first."""
    rows = grad.shape[0]
    k = grad[0].numel() if rows else math.prod(grad.shape[1:])
    d = k + (1 if lb.include_bias else 0)
    if d != lb.d:
        raise ValueError(f"layer {name!r}: gradient has {k} input features"
                         f"{' + bias' if lb.include_bias else ''} = {d}, basis has d = {lb.d}")
    if out % lb.groups:
        raise ValueError(f"layer {name!r}: {out} output rows do not split into"
                         f" {lb.groups} groups")
    if grad.dtype != lb.dtype:
        raise TypeError(f"layer {name!r}: gradient is {grad.dtype}, basis is {lb.dtype};"
                        " use bases.to(dtype=...)")
    if grad.device != lb.device:
        raise ValueError(f"layer {name!r}: gradient is on {grad.device}, basis on {lb.device};"
                         " use bases.to(device)")
    if bgrad is not None:
        return torch.cat([grad.reshape(rows, k), bgrad.view(rows, 1)], 1)
    if grad.is_contiguous():
        return grad.view(rows, k)
    if grad.dim() == 2:  # a strided view (e.g. Conv1D's Wᵀ): the op takes it as it is
        return grad
    return grad.reshape(rows, k).contiguous()


# -- projection inside backward, from the layer inputs --------------------------------------


class _NullSpaceLinear(torch.autograd.Function):
    """``F.linear`` whose weight (and bias) gradient comes out of backward already projected.

    ``G = δᵀX`` (δ: output gradients, X: inputs, rows = batch·tokens), so
    ``G − (GB)Bᵀ = δᵀ(X − (XB)Bᵀ)``: projecting the rows × d inputs instead of the out × d
    gradient gives the same matrix at ``rows/out`` of the cost. Backward projects whichever of
    the two has fewer rows, through :func:`unsc_fast.ops.project_grads_`, in the weight's dtype
    (under autocast the output gradient is half precision, the weight and basis are not).

    A backward that builds a graph (``create_graph=True``, e.g. a gradient penalty) returns
    plain differentiable gradients and hands the layer back to ``route`` (so the bases left
    for :func:`project_` project it, second-order terms included).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lb: LayerBasis, backend, route):
        ctx.save_for_backward(x, weight)
        ctx.lb, ctx.backend, ctx.route = lb, backend, route
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x = ctx.saved_tensors[0]
        with torch.autocast(x.device.type, enabled=False):  # a backward run inside autocast
            return _NullSpaceLinear._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        x, weight = ctx.saved_tensors
        lb, need_x, need_w, need_b = ctx.lb, *ctx.needs_input_grad[:3]
        dt = weight.dtype
        gx = (g.to(dt) @ weight).to(x.dtype) if need_x else None
        if not (need_w or need_b):
            return gx, None, None, None, None, None
        g2, x2 = g.reshape(-1, g.shape[-1]).to(dt), x.reshape(-1, x.shape[-1]).to(dt)
        d = x2.shape[1]
        if torch.is_grad_enabled():  # create_graph: differentiable, projected by project_
            ctx.route.unroute()
            return (gx, g2.mT @ x2 if need_w else None, g2.sum(0) if need_b else None,
                    None, None, None)
        B = lb.bases[0].to(dt)
        if len(x2) < len(weight):   # project the inputs
            X = torch.cat([x2, x2.new_ones(len(x2), 1)], 1) if lb.include_bias else x2.clone()
            ops.project_grads_([X], [B], [lb.subtract[0]], backend=ctx.backend)
            G = g2.mT @ X
        else:                       # project the gradient
            G = g2.mT @ x2
            if lb.include_bias:
                G = torch.cat([G, g2.sum(0).unsqueeze(1)], 1)
            ops.project_grads_([G], [B], [lb.subtract[0]], backend=ctx.backend)
        gw = G[:, :d] if need_w else None
        gb = (G[:, d] if lb.include_bias else g2.sum(0)) if need_b else None
        return gx, gw, gb, None, None, None


class _Route:
    """One Linear layer inside :func:`projected_backward`: its routing and patched forward."""

    def __init__(self, name: str, m: nn.Linear, lb: LayerBasis, rest: NullSpace, backend,
                 allowed: bool, saved):
        self.name, self.m, self.lb, self.rest, self.backend = name, m, lb, rest, backend
        self.allowed, self.saved = allowed, saved
        self.routed: bool | None = None  # decided by the first forward in the block

    def unroute(self) -> None:
        """Project this layer after backward again (idempotent: P(Pa + b) = Pa + Pb)."""
        self.routed = False
        self.rest._layers[self.name] = self.lb


class _Forward:
    """The forward patched onto a routed Linear. A copy of the module (``deepcopy``, pickle)
    gets the module's own forward back, never this one (which would run the original)."""

    def __init__(self, route: _Route):
        self.route = route

    def __call__(self, x: Tensor) -> Tensor:
        r = self.route
        if r.routed is None:
            r.routed = r.allowed and x.numel() // max(x.shape[-1], 1) < r.m.out_features
            if r.routed:
                del r.rest._layers[r.name]
        if r.routed:
            return _NullSpaceLinear.apply(x, r.m.weight, r.m.bias, r.lb, r.backend, r)
        return F.linear(x, r.m.weight, r.m.bias)

    def __reduce__(self):
        return _own_forward, (self.route.m, self.route.saved)


def _own_forward(module: nn.Module, saved):
    return saved if saved is not None else types.MethodType(type(module).forward, module)


@contextlib.contextmanager
def projected_backward(model: nn.Module, bases: NullSpace, *, backend: str | None = None
                       ) -> Iterator[NullSpace]:
    """Inside this block, ``backward()`` yields already projected gradients for the
    ``nn.Linear`` layers of ``bases`` whose batch has fewer rows than the layer has outputs;
    the block gives the bases left for :func:`project_` (the other layers).

    Same result as :func:`project_` (the same matrix, associated differently): for such a
    layer (small forget batches, wide classifiers) projecting the inputs (rows × d) is cheaper
    than projecting the gradient (out × d). Each Linear layer is routed by its first forward in
    the block, and stays so. A layer whose weight (or bias, when the bases cover it) is shared
    with another module (weight tying) is never routed: its gradient has other terms. The
    weight must enter the loss only through the layer's forward (no penalty on the weight in
    the loss; an optimizer's weight decay is fine). Use it between ``zero_grad()`` and
    ``step()``; not for FSDP-sharded modules (use :func:`project_`). Example::

        with unsc_fast.projected_backward(model, bases) as rest:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            unsc_fast.project_(model, rest)      # every layer not done in backward
            optimizer.step()
    """
    if not isinstance(bases, NullSpace):
        raise TypeError(f"bases must be a NullSpace, got {type(bases).__name__}")
    bases.check(model)
    modules = dict(model.named_modules())
    linear = {n: lb for n, lb in bases.items() if isinstance(modules[n], nn.Linear)}
    for name, lb in linear.items():
        m = modules[name]
        if lb.include_bias and (m.bias is None or not m.bias.requires_grad):
            raise ValueError(f"layer {name!r}: bases include the bias but it has no gradient")
        if lb.device != m.weight.device:
            raise ValueError(f"layer {name!r}: weight is on {m.weight.device}, basis on"
                             f" {lb.device}; use bases.to(device)")
    uses = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    rest = NullSpace(bases)

    saved = {n: modules[n].__dict__.get("forward") for n in linear}
    try:
        for name, lb in linear.items():
            m = modules[name]
            tied = uses[id(m.weight)] > 1 or (lb.include_bias and uses[id(m.bias)] > 1)
            m.forward = _Forward(_Route(name, m, lb, rest, backend, not tied, saved[name]))
        yield rest
    finally:
        for name, fwd in saved.items():
            if fwd is None:
                modules[name].__dict__.pop("forward", None)
            else:
                modules[name].forward = fwd
