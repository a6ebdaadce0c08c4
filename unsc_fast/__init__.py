"""unsc_fast: machine unlearning via null space calibration (UNSC), fast.

The pieces, in the order UNSC uses them::

    moments = unsc_fast.SecondMoments(model).collect(retain_loader)   # S += XᵀX per layer
    bases = unsc_fast.NullSpace.from_moments(moments, "energy:0.99")  # core / null bases
    loss.backward(); unsc_fast.project_(model, bases); optimizer.step()

or the whole job: ``unsc_fast.unlearn(model, forget_loader, retain_loader, forget_classes=[3])``.
"""
from . import dispatch, ops, reference
from .bases import EigenFloor, Energy, FixedRank, LayerBasis, NullSpace, Threshold, parse_rule
from .ops import accumulate_, accumulate_conv_
from .project import project_, projected_backward
from .reference import ConvGeometry, pseudo_labels
from .stats import LayerMoments, SecondMoments
from .unlearn import UnlearnReport, UnlearnResult, freeze_for_unlearning, unlearn

__version__ = "0.1.0"
__all__ = [
    "SecondMoments", "LayerMoments", "NullSpace", "LayerBasis", "Energy", "EigenFloor",
    "Threshold", "FixedRank", "parse_rule", "project_", "projected_backward", "unlearn",
    "UnlearnResult", "UnlearnReport", "freeze_for_unlearning", "pseudo_labels",
    "accumulate_", "accumulate_conv_", "ConvGeometry", "dispatch", "ops", "reference",
]
