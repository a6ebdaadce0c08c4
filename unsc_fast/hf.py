"""Hugging Face ``transformers.Trainer`` support: :class:`NullSpaceCallback`.

The Trainer clips gradients *before* a callback sees them (``_clip_grad_norm``, then
``on_pre_optimizer_step``, then ``optimizer.step()``). Clipping then projecting would give a
step whose norm is not the clip norm, and clipping must see the gradient that is applied, so
the callback turns the Trainer's clipping off for the run and does both itself, in the
right order: project, then clip to the Trainer's ``max_grad_norm``.

``transformers`` is imported by this module only, and only when :class:`NullSpaceCallback`
is first used (``import unsc_fast`` and ``import unsc_fast.hf`` never import it): the class
is built on first access through the module's ``__getattr__``.

Example::

    from unsc_fast.hf import NullSpaceCallback

    moments = unsc_fast.SecondMoments(model).collect(retain_batches)
    bases = unsc_fast.NullSpace.from_moments(moments, "energy:0.99")
    params = unsc_fast.freeze_for_unlearning(model, bases)   # train covered weights only
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=forget_dataset,
        optimizers=(torch.optim.SGD(params, lr=1e-2), None),
        callbacks=[NullSpaceCallback(bases)])
    trainer.train()
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .bases import NullSpace
from .project import project_

if TYPE_CHECKING:  # for type checkers only: the runtime class is built lazily
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

__all__ = ["NullSpaceCallback"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers (their parameters are its parameters)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _build() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("unsc_fast.hf.NullSpaceCallback needs transformers"
                          " (pip install transformers accelerate)") from exc

    class NullSpaceCallback(TrainerCallback):
        """Project the gradients onto the null spaces of ``bases`` before each optimizer step
        of a ``transformers.Trainer``, then clip them.

        ``bases``: a :class:`unsc_fast.NullSpace` (layer names as in the Trainer's model).
        ``model``: the model to project (default: the ``model`` the Trainer passes to its
        callbacks; a DDP / DataParallel wrapper is unwrapped). ``backend``: passed to
        :func:`unsc_fast.project_`. ``dropout``: False (default) sets every ``nn.Dropout``'s
        probability to 0 for the run and restores it at the end: the Trainer calls
        ``model.train()`` each step, and the bases describe the clean (eval-mode) inputs, so
        updates fitted through dropout noise forget less (see :func:`unsc_fast.unlearn`).

        Order: ``on_train_begin`` remembers ``args.max_grad_norm`` and sets it to 0 so the
        Trainer does not clip; ``on_pre_optimizer_step`` projects with
        :func:`unsc_fast.project_`, then clips with ``torch.nn.utils.clip_grad_norm_`` to the
        remembered norm (when it is > 0); ``on_train_end`` restores ``args.max_grad_norm``.
        The ``grad_norm`` the Trainer logs is therefore that of the unprojected gradient.

        Gradient accumulation: the projection is linear, so projecting the accumulated
        gradient once per optimizer step equals projecting every micro-batch's gradient;
        it is exact and costs one projection per step.

        Train only the covered weights (:func:`unsc_fast.freeze_for_unlearning`): any other
        trainable parameter moves the outputs on the retained data. Not for DeepSpeed (its
        engine clips and steps by itself). Example::

            trainer = transformers.Trainer(model=model, args=args, train_dataset=forget,
                                           optimizers=(torch.optim.SGD(params, lr=1e-2), None),
                                           callbacks=[NullSpaceCallback(bases)])
            trainer.train()
        """

        def __init__(self, bases: NullSpace, *, model: nn.Module | None = None,
                     backend: str | None = None, dropout: bool = False) -> None:
            if not isinstance(bases, NullSpace):
                raise TypeError(f"bases must be a NullSpace, got {type(bases).__name__}")
            self.bases = bases
            self.model = model
            self.backend = backend
            self.dropout = dropout
            self._dropout_p: list[tuple[nn.Module, float]] = []
            #: the Trainer's ``max_grad_norm`` while training runs (None outside a run)
            self.max_grad_norm: float | None = None

        def _model(self, kwargs: dict[str, Any]) -> nn.Module:
            model = self.model if self.model is not None else kwargs.get("model")
            if model is None:
                raise ValueError("NullSpaceCallback: the Trainer passed no model; give"
                                 " NullSpaceCallback(bases, model=...)")
            return _unwrap(model)

        def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                           control: TrainerControl, **kwargs: Any) -> None:
            """Check the bases against the model; take over gradient clipping."""
            if getattr(args, "deepspeed", None):
                raise ValueError("NullSpaceCallback does not support DeepSpeed: its engine"
                                 " clips and steps before a callback can project")
            self.bases.check(self._model(kwargs))
            self.max_grad_norm = args.max_grad_norm
            args.max_grad_norm = 0.0
            if not self.dropout:
                self._dropout_p = [(m, m.p) for m in self._model(kwargs).modules()
                                   if isinstance(m, nn.modules.dropout._DropoutNd)]
                for m, _ in self._dropout_p:
                    m.p = 0.0

        def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                                  control: TrainerControl, **kwargs: Any) -> None:
            """Project the (accumulated) gradients, then clip them."""
            model = self._model(kwargs)
            project_(model, self.bases, backend=self.backend)
            norm = self.max_grad_norm
            if norm is not None and norm > 0:
                grads = [p for p in model.parameters() if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(grads, norm)

        def on_train_end(self, args: TrainingArguments, state: TrainerState,
                         control: TrainerControl, **kwargs: Any) -> None:
            """Give the Trainer its ``max_grad_norm`` and the model its dropout back."""
            for m, p in self._dropout_p:
                m.p = p
            self._dropout_p = []
            if self.max_grad_norm is not None:
                args.max_grad_norm = self.max_grad_norm
                self.max_grad_norm = None

    NullSpaceCallback.__module__ = __name__          # pickles as unsc_fast.hf.NullSpaceCallback
    NullSpaceCallback.__qualname__ = "NullSpaceCallback"
    return NullSpaceCallback


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    global _CLASS
    if name == "NullSpaceCallback":
        if _CLASS is None:
            _CLASS = _build()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    class NullSpaceCallback(TrainerCallback):  # noqa: D101 - the signature type checkers see
        def __init__(self, bases: NullSpace, *, model: nn.Module | None = None,
                     backend: str | None = None, dropout: bool = False) -> None: ...
