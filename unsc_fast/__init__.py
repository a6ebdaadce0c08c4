"""unsc_fast: machine unlearning via null space calibration (UNSC), fast."""
from . import dispatch, ops, reference
from .ops import accumulate_, accumulate_conv_
from .reference import ConvGeometry

__version__ = "0.1.0"
