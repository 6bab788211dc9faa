"""A tiny synthetic segmentation set written as a real Pascal VOC layout.

Coloured shapes on noise: class ``c`` is always the same shape kind and colour
(rectangle, ellipse, triangle, ring...), so a small network learns it in a minute on a
CPU and the mIoU means something. Each object gets a one-pixel void (255) border, as
VOC's annotations have. Everything is written through the real formats (JPEG images,
palette PNG masks, split files), so tests and the demo exercise the VOC loader exactly
as a user's data would. Deterministic for a given ``seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from cv_tasks.semantic_segmentation.datasets.io import write_label_png
from cv_tasks.semantic_segmentation.metrics import IGNORE_INDEX

__all__ = ["SHAPE_KINDS", "synthetic_class_names", "write_synthetic_voc"]

SHAPE_KINDS = ("rectangle", "ellipse", "triangle", "ring")
_COLOURS = ((0.85, 0.2, 0.2), (0.2, 0.75, 0.25), (0.25, 0.35, 0.9), (0.9, 0.8, 0.2),
            (0.8, 0.3, 0.8), (0.2, 0.8, 0.8), (0.95, 0.55, 0.15), (0.5, 0.5, 0.5))
MAX_CLASSES = 1 + len(_COLOURS)


def synthetic_class_names(num_classes: int) -> List[str]:
    """``background`` then ``<colour index>-<shape>`` for each object class."""
    return ["background"] + [f"{SHAPE_KINDS[(c - 1) % len(SHAPE_KINDS)]}{c}" for c in range(1, num_classes)]


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    if kind == "rectangle":
        return (np.abs(yy - cy) <= 0.7 * r) & (np.abs(xx - cx) <= r)
    if kind == "ellipse":
        return ((yy - cy) / r) ** 2 + ((xx - cx) / (0.7 * r)) ** 2 <= 1.0
    if kind == "triangle":
        top = cy - r
        return (yy >= top) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - top) / 2)
    d = np.hypot(yy - cy, xx - cx)  # ring
    return (d <= r) & (d >= 0.5 * r)


def _border(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _sample(rng: np.random.Generator, size: int, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = rng.uniform(0.35, 0.65) + 0.12 * rng.standard_normal((size, size, 3)).astype(np.float32)
    labels = np.zeros((size, size), dtype=np.int64)
    for _ in range(int(rng.integers(1, 4))):
        c = int(rng.integers(1, num_classes))
        r = float(rng.uniform(0.12, 0.25)) * size
        cy, cx = rng.uniform(r, size - r, 2)
        region = _shape_mask(SHAPE_KINDS[(c - 1) % len(SHAPE_KINDS)], yy, xx, cy, cx, r)
        colour = np.array(_COLOURS[c - 1], dtype=np.float32)
        image[region] = colour + 0.06 * rng.standard_normal((int(region.sum()), 3)).astype(np.float32)
        labels[region] = c
        labels[_border(region)] = IGNORE_INDEX
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), labels


def write_synthetic_voc(root: str | Path, num_train: int = 32, num_val: int = 16, size: int = 64,
                        num_classes: int = 4, seed: int = 0) -> Path:
    """Write ``root/VOC2012`` (JPEGImages, SegmentationClass, ImageSets/Segmentation) and
    return that folder; ``num_classes`` counts the background."""
    from PIL import Image

    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 2..{MAX_CLASSES}, got {num_classes}")
    if num_train < 1 or num_val < 1 or size < 16:
        raise ValueError(f"need num_train, num_val >= 1 and size >= 16, got {num_train}, {num_val}, {size}")
    voc = Path(root) / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        ids = [f"{split}_{i:05d}" for i in range(count)]
        for image_id in ids:
            image, labels = _sample(rng, size, num_classes)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            write_label_png(voc / "SegmentationClass" / f"{image_id}.png", labels)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return voc
