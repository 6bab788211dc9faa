"""Joint image + target transforms that keep boxes right: to tensor, resize, horizontal flip.

Each transform takes and returns ``(image, target)``, with the image a float ``(C, H, W)``
tensor in [0, 1] (after :class:`ToTensor`) and boxes ``(x1, y1, x2, y2)`` in pixels.
Written with torch alone, so they also run where torchvision's v2 transforms are absent.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Compose", "RandomHorizontalFlip", "Resize", "ToTensor", "detection_transforms"]

Target = Dict[str, Any]
Pair = Tuple[Any, Target]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any, Target], Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> Pair:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class ToTensor:
    """PIL image (or HWC uint8 array) -> float ``(3, H, W)`` tensor in [0, 1]."""

    def __call__(self, image: Any, target: Target) -> Pair:
        if not isinstance(image, torch.Tensor):
            array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
            image = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
        return image, target


class Resize:
    """Resize to ``size`` = (height, width), or make the shorter side ``size`` (an int), scaling boxes."""

    def __init__(self, size: Union[int, Tuple[int, int]]) -> None:
        sizes = (size,) if isinstance(size, int) else tuple(size)
        if len(sizes) not in (1, 2) or min(sizes) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        self.size = size

    def _out_size(self, h: int, w: int) -> Tuple[int, int]:
        if isinstance(self.size, int):
            scale = self.size / min(h, w)
            return max(1, round(h * scale)), max(1, round(w * scale))
        return int(self.size[0]), int(self.size[1])

    def __call__(self, image: torch.Tensor, target: Target) -> Pair:
        h, w = image.shape[-2:]
        nh, nw = self._out_size(h, w)
        if (nh, nw) != (h, w):
            image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                                  antialias=True)[0].clamp_(0.0, 1.0)
        target = dict(target)
        if "boxes" in target and len(target["boxes"]):
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=target["boxes"].dtype)
            target["boxes"] = target["boxes"] * scale
            if "area" in target:
                target["area"] = target["area"] * (nw / w) * (nh / h)
        return image, target


class RandomHorizontalFlip:
    """Mirror the image and its boxes with probability ``p`` (``generator`` makes it reproducible)."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> Pair:
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return image, target
        w = image.shape[-1]
        target = dict(target)
        if "boxes" in target and len(target["boxes"]):
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        return image.flip(-1), target


def detection_transforms(size: Optional[Union[int, Tuple[int, int]]] = None, train: bool = False,
                         flip_p: float = 0.5) -> Compose:
    """ToTensor, then Resize (if ``size``), then a random flip when ``train``."""
    steps: list = [ToTensor()]
    if size is not None:
        steps.append(Resize(size))
    if train:
        steps.append(RandomHorizontalFlip(flip_p))
    return Compose(steps)
