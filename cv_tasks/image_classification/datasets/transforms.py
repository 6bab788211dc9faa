"""Data augmentation and normalisation on image tensors, with torch alone.

The data sets here hand a ``(C, H, W)`` float tensor in [0, 1] to their transform, so
these and torchvision's tensor transforms both work; torchvision is not needed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip"]


class Compose:
    """Apply transforms one after another."""

    def __init__(self, transforms: Sequence[Callable[[Tensor], Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Tensor) -> Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCrop:
    """Pad each side with ``padding`` zeros, then crop a random ``size`` x ``size`` window."""

    def __init__(self, size: int, padding: int = 0) -> None:
        if size < 1 or padding < 0:
            raise ValueError(f"RandomCrop needs size >= 1 and padding >= 0, got size={size}, padding={padding}")
        self.size = size
        self.padding = padding

    def __call__(self, x: Tensor) -> Tensor:
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        h, w = x.shape[-2:]
        if h < self.size or w < self.size:
            raise ValueError(f"RandomCrop({self.size}) on an image of {h}x{w} (after padding)")
        top = int(torch.randint(0, h - self.size + 1, ()))
        left = int(torch.randint(0, w - self.size + 1, ()))
        return x[..., top : top + self.size, left : left + self.size]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror the image left to right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        return x.flip(-1) if float(torch.rand(())) < self.p else x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Subtract the per-channel ``mean`` and divide by ``std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"Normalize needs one positive std per mean, got mean={mean}, std={std}")
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
