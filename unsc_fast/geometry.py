"""Which input patches a 2-D convolution sees: the one home of conv geometry.

Every backend takes its geometry, and its output size, from here; no kernel recomputes the
output-size formula (kernels are handed ``output_size``).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ConvGeometry"]


@dataclass(frozen=True)
class ConvGeometry:
    """Everything that decides which input patches a 2-D convolution sees.

    ``pad`` is ``(left, right, top, bottom)`` as ``F.pad`` takes it, which covers symmetric,
    asymmetric (``padding="same"`` with even kernels) and non-zero padding modes alike.
    """

    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "ConvGeometry":
        """The geometry of an ``nn.Conv2d`` layer."""
        return cls(
            kernel_size=tuple(conv.kernel_size), stride=tuple(conv.stride),
            pad=tuple(conv._reversed_padding_repeated_twice), dilation=tuple(conv.dilation),
            groups=conv.groups, padding_mode=conv.padding_mode,
        )

    @property
    def symmetric_padding(self) -> tuple[int, int] | None:
        """``(pad_h, pad_w)`` when the padding is zeros and the same on both sides, else None."""
        left, right, top, bottom = self.pad
        if self.padding_mode == "zeros" and left == right and top == bottom:
            return (top, left)
        return None

    def patch_dim(self, in_channels: int) -> int:
        """Length of one group's patch vector: C_in/groups · kh · kw."""
        return in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(OH, OW) of the conv on an (H, W) input; ≤ 0 where the window does not fit."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        left, right, top, bottom = self.pad
        return ((height + top + bottom - dh * (kh - 1) - 1) // sh + 1,
                (width + left + right - dw * (kw - 1) - 1) // sw + 1)
