"""Joint image/mask transforms: geometry applied identically to both, with torch alone.

Each transform maps ``(image, mask)`` to ``(image, mask)``: image ``(3, H, W)`` float,
mask ``(H, W)`` int64 class indices. Masks are resized with nearest neighbour (a blend
of two labels is no label) and padded with the ignore label, so padding never counts
as background in the metric or the loss.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cv_tasks.semantic_segmentation.metrics import IGNORE_INDEX

__all__ = [
    "Compose",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "segmentation_transforms",
]

Pair = Tuple[Tensor, Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size(size: int | Sequence[int]) -> Tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"a size must be positive, got {size}")
    return int(h), int(w)


class Compose:
    """Apply joint transforms one after another."""

    def __init__(self, transforms: Sequence[Callable[[Tensor, Tensor], Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Resize:
    """Resize to ``size`` (h, w), or an int for a square: bilinear image, nearest mask."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _size(size)

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        image = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
        mask = F.interpolate(mask[None, None].float(), size=self.size, mode="nearest-exact")[0, 0].long()
        return image, mask

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class RandomCrop:
    """A random ``size`` window of both; a smaller input is padded first (image with 0,
    mask with the ignore label)."""

    def __init__(self, size: int | Sequence[int], ignore_index: int = IGNORE_INDEX) -> None:
        self.size = _size(size)
        self.ignore_index = ignore_index

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        th, tw = self.size
        h, w = mask.shape
        pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
            h, w = mask.shape
        top = int(torch.randint(0, h - th + 1, ()))
        left = int(torch.randint(0, w - tw + 1, ()))
        return image[:, top : top + th, left : left + tw], mask[top : top + th, left : left + tw]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size})"


class RandomHorizontalFlip:
    """Mirror both left to right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability, got {p}")
        self.p = p

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        if float(torch.rand(())) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Standardise the image per channel; the mask is untouched."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"Normalize needs one positive std per mean, got mean={mean}, std={std}")
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        return (image - self.mean) / self.std, mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def segmentation_transforms(size: int | Sequence[int], train: bool) -> Compose:
    """The usual recipe at a fixed output size, so batches stack.

    Training: resize to 1.125x ``size``, random crop to ``size``, random flip, normalise.
    Evaluation: resize to ``size``, normalise.
    """
    h, w = _size(size)
    if not train:
        return Compose([Resize((h, w)), Normalize()])
    return Compose([Resize((h * 9 // 8, w * 9 // 8)), RandomCrop((h, w)), RandomHorizontalFlip(), Normalize()])
