"""UNSC and the baselines of the evaluation protocol, in one harness.

Every method is a function ``method(task, **hyperparameters) -> MethodResult`` registered in
``METHODS`` by name; hyperparameters come from a config's ``[methods.<name>]`` table. The
defaults of the baselines are the settings chosen on MNIST 5k / AlexNet (half width) in
docs/reproduction.md; other models and data sets need their own. The
original model in ``task`` is never modified. All methods that train on D_f (UNSC included)
keep BatchNorm in eval mode, switch dropout off and train only the ``nn.Linear`` /
``nn.Conv2d`` weights (the same parameter set UNSC may move), so the comparison isolates the
labels, the loss and the projection.

Why dropout off: the null space is computed from D_r's clean layer inputs, but with dropout
on, the inputs seen while unlearning are clean + noise, and the noise lies largely in that
null space; the projected updates then fit the noise instead of moving D_f's clean outputs
(on MNIST 5k / AlexNet, UNSC's Acc_f stays at 25% on average with dropout on, 0.3% with it
off; docs/reproduction.md). ``unsc_fast.unlearn`` switches dropout off by default too.
"""
from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import helpers
from ..reference import pseudo_labels
from ..unlearn import freeze_for_unlearning, unlearn
from .data import loader
from .scenarios import ScenarioSplit


@dataclass
class Task:
    """What every method gets: the original model, the scenario's data, and settings."""

    model: nn.Module                 # θ_o, left untouched
    split: ScenarioSplit
    model_name: str
    width: float
    input_shape: tuple[int, ...]
    train: dict                      # epochs, lr, batch_size, optimizer, weight_decay, momentum
    unlearn: dict                    # lr, epochs, batch_size, rule, max_retain_samples, ...
    seed: int = 0
    progress: bool = True
    backend: str | None = None
    moments: object | None = None    # precomputed SecondMoments (unsc)
    bases: object | None = None      # precomputed NullSpace (unsc)
    holdout: object | None = None    # held-out Dataset (unsc mode="sample")

    @property
    def forget_classes(self) -> list[int] | None:
        return self.split.forget_classes

    def forget_loader(self, batch_size: int | None = None, shuffle: bool = True):
        return loader(self.split.forget, batch_size or self.unlearn["batch_size"], shuffle,
                      self.seed)

    def retain_loader(self, batch_size: int | None = None, shuffle: bool = False):
        return loader(self.split.retain, batch_size or self.unlearn["batch_size"], shuffle,
                      self.seed)


@dataclass
class MethodResult:
    model: nn.Module
    times: dict[str, float] = field(default_factory=dict)   # seconds per phase
    info: dict = field(default_factory=dict)                # JSON-able extras
    bases: object | None = None                              # NullSpace (UNSC)


METHODS: dict[str, Callable[..., MethodResult]] = {}


def registrar(methods: dict[str, Callable[..., MethodResult]]) -> Callable:
    """A ``@register(name)`` decorator that records methods in ``methods``."""
    def register(name: str):
        def deco(fn):
            methods[name] = fn
            return fn
        return deco
    return register


register = registrar(METHODS)


def run_method(name: str, task: Task, **hp) -> MethodResult:
    """Run method ``name`` with hyperparameters ``hp`` (unknown ones are an error)."""
    return call_method(METHODS, name, task, **hp)


def call_method(methods: dict[str, Callable[..., MethodResult]], name: str, task, **hp
                ) -> MethodResult:
    """Run ``methods[name](task, **hp)`` from ``task.seed``'s RNG state, timed; unknown names
    and hyperparameters are an error."""
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(methods)}")
    fn = methods[name]
    params = inspect.signature(fn).parameters
    allowed = [p for p in params if p != "task"]
    unknown = sorted(set(hp) - set(allowed))
    if unknown:
        raise ValueError(f"method {name!r} has no hyperparameter {unknown}; it takes {allowed}")
    torch.manual_seed(task.seed)       # each method starts from the same RNG state
    t = time.perf_counter()
    res = fn(task, **hp)
    res.times["total"] = time.perf_counter() - t
    return res


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """UNSC's parameter set without projection: BN eval, dropout off, Linear/Conv weights."""
    return freeze_for_unlearning(model, None, dropout=False)


def _allowed_labels(task: Task, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return pseudo_labels(logits, y, task.forget_classes)


def _random_labels(task: Task, y: torch.Tensor, num_classes: int,
                   gen: torch.Generator) -> torch.Tensor:
    return pseudo_labels(torch.rand(len(y), num_classes, generator=gen), y, task.forget_classes)


# -- the methods ---------------------------------------------------------------------------------

@register("original")
def original(task: Task) -> MethodResult:
    """The original model, unchanged."""
    return MethodResult(task.model)


@register("retrain")
def retrain(task: Task, epochs: int | None = None, lr: float | None = None) -> MethodResult:
    """Train a fresh model on D_r from scratch (training settings of the original)."""
    return _from_scratch(task, task.seed, epochs, lr, "retrain")


@register("retrain_reseeded")
def retrain_reseeded(task: Task, seed_offset: int = 1000, epochs: int | None = None,
                     lr: float | None = None) -> MethodResult:
    """A second retrained model: as ``retrain``, but its initialisation and data order come
    from seed ``task.seed + seed_offset``.

    Not a method to forget with: its gap to ``retrain`` is the noise floor of every gap. Two
    models that both never saw D_f differ this much by chance alone, so a method whose gap is
    below it is as close to retraining as retraining itself is."""
    if isinstance(seed_offset, bool) or not isinstance(seed_offset, int) or seed_offset == 0:
        raise ValueError(f"seed_offset must be a non-zero integer (0 would repeat retrain),"
                         f" got {seed_offset!r}")
    return _from_scratch(task, task.seed + seed_offset, epochs, lr, "retrain (reseeded)")


def _from_scratch(task: Task, seed: int, epochs: int | None, lr: float | None, desc: str
                  ) -> MethodResult:
    from .train import train_from_scratch
    tr = dict(task.train)
    tr["epochs"] = tr["epochs"] if epochs is None else epochs
    tr["lr"] = tr["lr"] if lr is None else lr
    model, seconds = train_from_scratch(task.model_name, task.input_shape,
                                        task.split.num_classes, task.width, task.split.retain,
                                        tr, seed, device=helpers.model_device(task.model),
                                        progress=task.progress, desc=desc)
    return MethodResult(model, {"train": seconds})


@register("unsc")
def unsc(task: Task, lr: float | None = None, epochs: int | None = None,
         rule: str | None = None, max_retain_samples: int | None = None,
         include_bias: bool | None = None, batch_size: int | None = None,
         dropout: bool = False, mode: str | None = None,
         calibration: str | None = None) -> MethodResult:
    """UNSC: pseudo-labels from θ_o, every weight gradient projected onto D_r's null space.

    ``dropout=True`` leaves dropout active while unlearning (plain ``model.train()``
    behaviour); the default switches it off (see the module docstring). ``mode``:
    ``"paper"`` or ``"sample"`` (held-out-calibrated sample-level forgetting, see
    :func:`unsc_fast.unlearn`; needs ``task.holdout`` and a sample-level scenario); default
    the ``[unlearn] mode`` setting, else ``"paper"``. ``calibration`` (sample mode):
    ``"proximity"`` or ``"class"``, default the ``[unlearn] calibration`` setting.
    """
    u = task.unlearn
    mode = mode or u.get("mode") or "paper"
    if mode == "sample" and (task.holdout is None or task.forget_classes is not None):
        raise ValueError("unsc mode 'sample' needs a sample-level scenario (subclass or"
                         " random) and held-out data")
    holdout = loader(task.holdout, 256) if mode == "sample" else None
    res = unlearn(task.model, task.forget_loader(batch_size), task.retain_loader(256),
                  forget_classes=task.forget_classes, bases=task.bases, moments=task.moments,
                  rule=rule or u["rule"], lr=lr or u["lr"],
                  epochs=u["epochs"] if epochs is None else epochs,
                  max_retain_samples=max_retain_samples or u.get("max_retain_samples"),
                  include_bias=u.get("include_bias", False) if include_bias is None
                  else include_bias, seed=task.seed, dropout=dropout, backend=task.backend,
                  progress=task.progress, mode=mode, holdout=holdout,
                  calibration=calibration or u.get("calibration", "proximity"),
                  stats_dtype=getattr(torch, u.get("stats_dtype", "float32")))
    r = res.report
    info = {"ranks": r.ranks, "dims": r.dims, "epoch_loss": r.epoch_loss,
            "warnings": r.warnings}
    if mode == "sample":
        info.update(mode=mode, active=r.active, n_holdout=len(task.holdout))
    return MethodResult(res.model, {"stats": r.time_stats, "bases": r.time_bases,
                                    "unlearn": r.time_unlearn}, info, res.bases)


def _random_relabel(task: Task, project: bool, lr, epochs, batch_size) -> MethodResult:
    u = task.unlearn
    res = unlearn(task.model, task.forget_loader(batch_size), task.retain_loader(256),
                  forget_classes=task.forget_classes, bases=task.bases if project else None,
                  moments=task.moments if project else None, rule=u["rule"],
                  lr=lr or u["lr"], epochs=u["epochs"] if epochs is None else epochs,
                  project=project, max_retain_samples=u.get("max_retain_samples"),
                  relabel="random", seed=task.seed, backend=task.backend,
                  progress=task.progress,
                  stats_dtype=getattr(torch, u.get("stats_dtype", "float32")))
    r = res.report
    return MethodResult(res.model, {"stats": r.time_stats, "bases": r.time_bases,
                                    "unlearn": r.time_unlearn}, {"epoch_loss": r.epoch_loss})


@register("random_labels")
def random_labels(task: Task, lr: float | None = None, epochs: int | None = None,
                  batch_size: int | None = None) -> MethodResult:
    """Fine-tune on D_f with random allowed labels, unprojected."""
    return _random_relabel(task, False, lr, epochs, batch_size)


@register("random_labels_proj")
def random_labels_proj(task: Task, lr: float | None = None, epochs: int | None = None,
                       batch_size: int | None = None) -> MethodResult:
    """Random allowed labels inside the null space of D_r (ablation of UNSC's labels)."""
    return _random_relabel(task, True, lr, epochs, batch_size)


@register("finetune")
def finetune(task: Task, lr: float = 0.02, epochs: int = 2, momentum: float = 0.9,
             batch_size: int | None = None) -> MethodResult:
    """Fine-tune every parameter on D_r only (SGD with momentum)."""
    from .train import train
    model = copy.deepcopy(task.model)
    t = time.perf_counter()
    train(model, task.retain_loader(batch_size or task.train["batch_size"], shuffle=True),
          epochs=epochs, lr=lr, optimizer="sgd", momentum=momentum, progress=task.progress,
          desc="finetune")
    return MethodResult(model, {"unlearn": time.perf_counter() - t})


def _df_loop(task: Task, model: nn.Module, params: list, epochs: int, lr: float,
             momentum: float, batch_size: int | None, step: Callable, desc: str,
             mask: list[torch.Tensor] | None = None) -> tuple[float, bool]:
    """SGD over D_f batches: ``step(x, y) -> loss`` computes the loss to minimise; gradients
    are multiplied by ``mask`` when given. Stops early (and says so) if the loss turns
    non-finite. Returns (seconds, diverged)."""
    device = helpers.model_device(model)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    data = task.forget_loader(batch_size)
    t = time.perf_counter()
    with helpers.progress(range(epochs), task.progress and epochs > 1, desc) as bar:
        for _ in bar:
            for x, y in data:
                loss = step(x.to(device), y.to(device))
                if not torch.isfinite(loss):
                    return time.perf_counter() - t, True
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if mask is not None:
                    for p, m in zip(params, mask):
                        if p.grad is not None:
                            p.grad.mul_(m)
                opt.step()
    return time.perf_counter() - t, False


def _forever(data):
    while True:
        yield from data


def _finish(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@register("grad_ascent")
def grad_ascent(task: Task, lr: float = 5e-3, epochs: int = 1, momentum: float = 0.0,
                batch_size: int | None = None) -> MethodResult:
    """Gradient ascent on the cross-entropy of D_f with its true labels."""
    model = copy.deepcopy(task.model)
    params = _trainable(model)
    secs, diverged = _df_loop(task, model, params, epochs, lr, momentum, batch_size,
                              lambda x, y: -F.cross_entropy(model(x), y), "grad ascent")
    return MethodResult(_finish(model), {"unlearn": secs}, {"diverged": diverged})


@register("boundary_shrink")
def boundary_shrink(task: Task, lr: float = 3e-5, epochs: int = 5, eps: float = 0.1,
                    momentum: float = 0.9, batch_size: int | None = None) -> MethodResult:
    """Fine-tune D_f towards the labels of its FGSM neighbours (original model's view)."""
    original = task.model
    original.eval()
    model = copy.deepcopy(original)
    params = _trainable(model)

    def step(x, y):
        xa = x.clone().requires_grad_(True)
        with torch.enable_grad():
            g, = torch.autograd.grad(F.cross_entropy(original(xa), y), xa)
        with torch.no_grad():
            target = _allowed_labels(task, original(x + eps * g.sign()), y)
        return F.cross_entropy(model(x), target)
    secs, diverged = _df_loop(task, model, params, epochs, lr, momentum, batch_size, step,
                              "boundary shrink")
    return MethodResult(_finish(model), {"unlearn": secs}, {"diverged": diverged})


@register("salun")
def salun(task: Task, lr: float = 3e-3, epochs: int = 5, sparsity: float = 0.5,
          retain_weight: float = 1.0, momentum: float = 0.9,
          batch_size: int | None = None) -> MethodResult:
    """Saliency-masked random labels on D_f, plus true-labelled D_r batches (SalUn, RL)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"salun sparsity must lie in [0, 1), got {sparsity}")
    device = helpers.model_device(task.model)
    model = copy.deepcopy(task.model)
    params = _trainable(model)
    t = time.perf_counter()
    # Saliency: |gradient of the D_f loss| at θ_o, summed over D_f; keep the top share.
    grads = [torch.zeros_like(p) for p in params]
    for x, y in task.forget_loader(batch_size, shuffle=False):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum").backward()
        for g, p in zip(grads, params):
            g += p.grad.abs()
    flat = torch.cat([g.flatten() for g in grads])
    k = int(round((1.0 - sparsity) * flat.numel()))
    thr = flat.kthvalue(max(1, flat.numel() - k + 1)).values if k > 0 else flat.max() + 1
    masks = [(g >= thr).to(g.dtype) for g in grads]
    t_mask = time.perf_counter() - t

    gen = torch.Generator().manual_seed(task.seed)
    retain = _forever(task.retain_loader(batch_size, shuffle=True))
    k_classes = task.split.num_classes

    def step(x, y):
        loss = F.cross_entropy(model(x), _random_labels(task, y.cpu(), k_classes, gen).to(device))
        if retain_weight > 0:
            xr, yr = next(retain)
            loss = loss + retain_weight * F.cross_entropy(model(xr.to(device)), yr.to(device))
        return loss
    secs, diverged = _df_loop(task, model, params, epochs, lr, momentum, batch_size, step,
                              "salun", mask=masks)
    kept = float(sum(m.sum() for m in masks) / flat.numel())
    return MethodResult(_finish(model), {"mask": t_mask, "unlearn": secs},
                        {"mask_share": kept, "diverged": diverged})
