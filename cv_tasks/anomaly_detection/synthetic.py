"""A tiny MVTec-AD-layout data set, generated: striped textures, some with painted defects.

For tests and demos without network: :func:`write_synthetic_mvtec` writes PNGs in the
exact MVTec AD layout (``train/good``, ``test/good``, ``test/<defect>``,
``ground_truth/<defect>/*_mask.png``), so it goes through the same loader as the real
data. Normal images are a woven texture (two sinusoidal gratings, a random phase and a
little noise per image); defects are a dark ``spot`` (a disc) or a bright ``scratch`` (a
thick line segment), and each mask is white exactly where the defect was painted. The
same ``seed`` gives the same files on every machine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

__all__ = ["DEFECTS", "synthetic_texture", "write_synthetic_mvtec"]

DEFECTS = ("scratch", "spot")


def synthetic_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A normal image: ``(size, size, 3)`` uint8, two gratings with random phases plus noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    f = 2 * math.pi / 8.0
    px, py = rng.uniform(0, 2 * math.pi, size=2)
    grey = 0.5 + 0.2 * np.sin(f * xx + px) + 0.2 * np.sin(f * yy + py) + rng.normal(0, 0.03, (size, size))
    tint = np.array([0.9, 0.75, 0.55], dtype=np.float32)  # a woven, fabric-like colour
    return (np.clip(grey, 0, 1)[:, :, None] * tint * 255).astype(np.uint8)


def _defect_mask(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one defect of ``kind``, away from the border."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.25 * size, 0.75 * size, size=2)
    if kind == "spot":
        r = rng.uniform(0.08, 0.15) * size
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    angle = rng.uniform(0, math.pi)
    half, width = rng.uniform(0.2, 0.3) * size, max(1.5, 0.04 * size)
    dy, dx = math.sin(angle), math.cos(angle)
    along = (yy - cy) * dy + (xx - cx) * dx
    across = (yy - cy) * dx - (xx - cx) * dy
    return (np.abs(along) <= half) & (np.abs(across) <= width)


def _paint(image: np.ndarray, mask: np.ndarray, kind: str) -> np.ndarray:
    out = image.copy()
    out[mask] = (40, 30, 25) if kind == "spot" else (250, 250, 240)
    return out


def write_synthetic_mvtec(
    root: Union[str, Path],
    category: str = "texture",
    image_size: int = 64,
    num_train: int = 40,
    num_test_good: int = 10,
    num_test_defect: int = 5,
    seed: int = 0,
) -> Path:
    """Write ``root/category`` in the MVTec AD layout and return that folder.

    ``num_test_defect`` images per defect kind (``DEFECTS``); PNG files, RGB images, L masks.
    """
    from PIL import Image

    if image_size < 16 or min(num_train, num_test_good, num_test_defect) < 1:
        raise ValueError("need image_size >= 16 and at least one image of each kind")
    rng = np.random.default_rng(seed)
    base = Path(root) / category
    counts: Dict[Tuple[str, str], int] = {("train", "good"): num_train, ("test", "good"): num_test_good}
    for split_kind, n in counts.items():
        folder = base.joinpath(*split_kind)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(synthetic_texture(rng, image_size)).save(folder / f"{i:03d}.png")
    for kind in DEFECTS:
        images, masks = base / "test" / kind, base / "ground_truth" / kind
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(num_test_defect):
            mask = _defect_mask(rng, image_size, kind)
            Image.fromarray(_paint(synthetic_texture(rng, image_size), mask, kind)).save(images / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{i:03d}_mask.png")
    return base
