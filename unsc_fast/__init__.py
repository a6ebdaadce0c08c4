"""unsc_fast: machine unlearning via null space calibration (UNSC), fast.

The pieces, in the order UNSC uses them::

    moments = unsc_fast.SecondMoments(model).collect(retain_loader)   # S += XᵀX per layer
    bases = unsc_fast.NullSpace.from_moments(moments, "energy:0.99")  # core / null bases
    loss.backward(); unsc_fast.project_(model, bases); optimizer.step()

or the whole job: ``unsc_fast.unlearn(model, forget_loader, retain_loader, forget_classes=[3])``
(a classifier) or ``unsc_fast.unlearn_lm(model, forget, retain, holdout=...)`` (a causal LM).

Floors: this package is the library core; :mod:`unsc_fast.lab` (data, models, metrics,
baselines) and :mod:`unsc_fast.cli` (the command line) sit above it and are imported only on
request. ``unsc_fast.project_`` projects a model's gradients; ``unsc_fast.ops.project_grads_``
is the grouped op underneath it.
"""
import sys as _sys

if _sys.argv[:1] == ["-m"]:   # `python -m unsc_fast` is importing us: Ctrl-C before the command
    import signal as _signal  # line is ready is one line and exit 130 (cli.main restores it)

    def _interrupted(*_):
        _sys.stderr.write("unsc-fast: interrupted\n")
        _sys.stderr.flush()
        import os as _os
        _os._exit(130)
    _signal.signal(_signal.SIGINT, _interrupted)
from . import dispatch, ops, reference
from .bases import NullSpace
from .geometry import ConvGeometry
from .layer_basis import LayerBasis
from .ops import accumulate_, accumulate_conv_, project_grads_
from .project import project_, projected_backward
from .reference import pseudo_labels
from .rules import EigenFloor, Energy, FixedRank, Threshold, parse_rule
from .stats import LayerMoments, SecondMoments
from .unlearn import UnlearnReport, UnlearnResult, freeze_for_unlearning, unlearn
from .unlearn_lm import LMUnlearnReport, LMUnlearnResult, unlearn_lm

__version__ = "0.1.0"
__all__ = [
    "SecondMoments", "LayerMoments", "NullSpace", "LayerBasis", "Energy", "EigenFloor",
    "Threshold", "FixedRank", "parse_rule", "project_", "projected_backward", "unlearn",
    "UnlearnResult", "UnlearnReport", "freeze_for_unlearning", "unlearn_lm", "LMUnlearnResult",
    "LMUnlearnReport", "pseudo_labels",
    "accumulate_", "accumulate_conv_", "project_grads_", "ConvGeometry", "dispatch", "ops", "reference",
]
