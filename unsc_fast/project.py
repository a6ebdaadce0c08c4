"""``project_``: the call a user puts between ``loss.backward()`` and ``optimizer.step()``."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from . import ops
from .bases import LayerBasis, NullSpace


def _params_by_module(model_or_params: nn.Module | Mapping[str, Tensor] | Iterable
                      ) -> dict[str, dict[str, Tensor]]:
    if isinstance(model_or_params, nn.Module):
        named = model_or_params.named_parameters()
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

    grads, mats, subtract, write_back = [], [], [], []
    for name, lb in bases.items():
        W, b = params[name]["weight"], params[name].get("bias")
        if W.grad is None:
            continue
        G = _gradient_matrix(name, lb, W, b)
        for g, rows in enumerate(G.chunk(lb.groups, 0)):
            grads.append(rows)
            mats.append(lb.bases[g])
            subtract.append(lb.subtract[g])
        if G.data_ptr() != W.grad.data_ptr() or lb.include_bias:
            write_back.append((G, W, b))
    ops.project_(grads, mats, subtract, backend=backend)
    for G, W, b in write_back:
        k = W.grad[0].numel()
        W.grad.copy_(G[:, :k].view_as(W.grad))
        if b is not None and b.grad is not None and G.shape[1] > k:
            b.grad.copy_(G[:, k])


def _gradient_matrix(name: str, lb: LayerBasis, W: Tensor, b: Tensor | None) -> Tensor:
    """The (out, d) gradient of one layer: a view of ``W.grad`` where possible, a copy (with
    the bias column appended) otherwise. Validates against the basis first."""
    grad = W.grad
    out = grad.shape[0]
    k = grad[0].numel() if out else 0
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
    if lb.include_bias:
        if b is None or b.grad is None:
            raise ValueError(f"layer {name!r}: bases include the bias but it has no gradient")
        return torch.cat([grad.reshape(out, k), b.grad.view(out, 1)], 1)
    if grad.is_contiguous():
        return grad.view(out, k)
    return grad.reshape(out, k).contiguous()
