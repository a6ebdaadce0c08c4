"""BASELINE RE-IMPLEMENTATION: UNSC computed the way the authors' original pipeline is built.

This is *not* the authors' code and copies none of it. It was written for this benchmark, from
the published description of the original notebooks (which build on GPM's code), to reproduce
their *cost structure* so that end-to-end timings have an honest "before" to compare with:

1. Statistics from **one batch of 256 samples** of D_r (not a stream over all of D_r).
2. Per layer, a **representation matrix** filled by a Python loop over samples and output
   positions, copying each receptive-field patch into one column of a float64 numpy array of
   shape (d, 256 * L) (d = C_in * k * k; a Linear layer uses its 256 input rows as columns).
3. **SVD of that wide sample matrix** (numpy, float64, ``full_matrices=False``); the core rank
   is the smallest r whose squared singular values reach a share ε of the total.
4. A **dense d x d projector** ``P = U_r U_rᵀ`` per layer; after every backward,
   ``G ← G − G P`` (a d x d matmul per layer and step).

The unlearning loop around it (pseudo-labels from the frozen original model with the
forgotten classes masked, plain SGD, BatchNorm in eval mode, only covered weights trained) is
the same as :func:`unsc_fast.unlearn`, so the two differ in the pipeline, not the method.

One deliberate difference from the original: the patch loop uses the layer's real stride and
padding (the original assumed stride 1 and no padding), so the bases match unsc_fast's
geometry and the accuracies are comparable. Grouped and dilated convs are not supported.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unsc_fast.reference import pseudo_labels

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class AuthorsStyleReport:
    time_stats: float = 0.0      # forward over the one batch + the patch loop
    time_bases: float = 0.0      # SVDs + dense projectors
    time_unlearn: float = 0.0
    ranks: dict = field(default_factory=dict)
    dims: dict = field(default_factory=dict)


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


@torch.no_grad()
def representation_matrices(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per layer, the (d, columns) float64 matrix of its inputs on the batch ``x``."""
    layers = _layers(model)
    acts: dict[str, np.ndarray] = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, name=n: acts.__setitem__(name, args[0].detach().cpu().numpy()))
        for n, m in layers.items()]
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    mats = {}
    for name, m in layers.items():
        a = acts[name]
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or tuple(m.dilation) != (1, 1) or isinstance(m.padding, str):
                raise NotImplementedError(f"{name}: authors-style loop handles plain convs only")
            kh, kw = m.kernel_size
            sh, sw = m.stride
            ph, pw = m.padding
            a = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            n, c, h, w = a.shape
            oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
            mat = np.zeros((c * kh * kw, n * oh * ow))
            col = 0
            for s in range(n):                      # the per-sample, per-position loop
                for i in range(oh):
                    for j in range(ow):
                        mat[:, col] = a[s, :, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(-1)
                        col += 1
            mats[name] = mat
        else:
            mats[name] = a.reshape(a.shape[0], -1).T.astype(np.float64)
    return mats


def svd_projectors(mats: dict[str, np.ndarray], eps: float, device: torch.device
                   ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Dense core projectors U_r U_rᵀ (d x d, float32 on ``device``) from SVDs of the mats."""
    projectors, ranks = {}, {}
    for name, mat in mats.items():
        U, s, _ = np.linalg.svd(mat, full_matrices=False)
        energy = s ** 2
        total = energy.sum()
        r = int(np.sum(np.cumsum(energy) / total < eps)) + 1 if total > 0 else 0
        r = min(r, U.shape[1])
        Ur = U[:, :r]
        projectors[name] = torch.tensor(Ur @ Ur.T, dtype=torch.float32, device=device)
        ranks[name] = r
    return projectors, ranks


def unlearn(model: nn.Module, forget: Iterable, retain_batch: torch.Tensor, *,
            forget_classes: Sequence[int], eps: float = 0.99, lr: float = 0.04,
            epochs: int = 20) -> tuple[nn.Module, AuthorsStyleReport]:
    """The authors-style pipeline end to end; returns the unlearned copy and the timings."""
    device = next(model.parameters()).device
    rep = AuthorsStyleReport()
    t = time.perf_counter()
    mats = representation_matrices(model, retain_batch.to(device))
    rep.time_stats = time.perf_counter() - t
    t = time.perf_counter()
    projectors, rep.ranks = svd_projectors(mats, eps, device)
    rep.dims = {n: P.shape[0] for n, P in projectors.items()}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rep.time_bases = time.perf_counter() - t

    original = model.eval()
    unlearned = copy.deepcopy(model)
    unlearned.train()
    for m in unlearned.modules():
        if isinstance(m, _BN):
            m.eval()
    for p in unlearned.parameters():
        p.requires_grad_(False)
    layers = _layers(unlearned)
    for m in layers.values():
        m.weight.requires_grad_(True)
    opt = torch.optim.SGD([m.weight for m in layers.values()], lr=lr, momentum=0.0)

    t = time.perf_counter()
    for _ in range(epochs):
        for x, y in forget:
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                target = pseudo_labels(original(x), y, list(forget_classes))
            loss = F.cross_entropy(unlearned(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for name, m in layers.items():          # dense in x in projector per layer
                g = m.weight.grad
                g2 = g.view(g.shape[0], -1)
                g.copy_((g2 - g2 @ projectors[name]).view_as(g))
            opt.step()
            loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rep.time_unlearn = time.perf_counter() - t
    unlearned.eval()
    return unlearned, rep
