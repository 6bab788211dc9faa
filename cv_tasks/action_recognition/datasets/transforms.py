"""Frames -> normalised clip tensor: resize the short side, crop, maybe flip, normalise.

Training crops at a random place (and flips when allowed); testing crops the centre. The
same crop and flip apply to every frame of a clip, so motion is kept intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["KINETICS_MEAN", "KINETICS_STD", "ClipTransform"]

#: per-channel RGB statistics of Kinetics-400, as torchvision's video models use them
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class ClipTransform:
    """Turns ``(T, H, W, 3)`` uint8 RGB frames into a ``(3, T, size, size)`` float clip.

    ``resize`` is the short side before cropping (default ``size * 8 / 7``, the usual
    128 -> 112 ratio). ``flip`` enables random horizontal flips in training: turn it off
    when left/right carries the class (e.g. "swipe left" vs "swipe right").
    """

    size: int = 112
    resize: Optional[int] = None
    train: bool = False
    flip: bool = True
    mean: Tuple[float, float, float] = KINETICS_MEAN
    std: Tuple[float, float, float] = KINETICS_STD

    def __post_init__(self) -> None:
        if self.size < 1 or (self.resize is not None and self.resize < self.size):
            raise ValueError(f"need size >= 1 and resize >= size, got size={self.size}, resize={self.resize}")

    def __call__(self, frames: np.ndarray, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (T, H, W, 3) RGB frames, got shape {frames.shape}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255)
        short = self.resize if self.resize is not None else round(self.size * 8 / 7)
        h, w = x.shape[-2:]
        scale = short / min(h, w)
        new = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
        x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
        if self.train:
            top = int(torch.randint(0, new[0] - self.size + 1, (1,), generator=generator))
            left = int(torch.randint(0, new[1] - self.size + 1, (1,), generator=generator))
        else:
            top, left = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        if self.train and self.flip and bool(torch.rand((), generator=generator) < 0.5):
            x = x.flip(-1)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x - mean) / std).permute(1, 0, 2, 3).contiguous()
