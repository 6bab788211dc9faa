"""Reading images and label maps, writing palette PNGs (the VOC label format).

PIL is imported when a file is read or written. A label map is a single-channel PNG
whose pixel values are class indices: a palette ("P") PNG as in VOC, where the palette
only colours the indices for viewing, or a plain grayscale ("L") PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import torch
from torch import Tensor

from cv_tasks.semantic_segmentation.datasets.errors import (
    DatasetNotFoundError,
    SegmentationDataError,
)

__all__ = ["read_image", "read_label_map", "voc_palette", "write_label_png"]


def _open(path: Path):  # -> PIL.Image.Image
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DatasetNotFoundError(f"missing file {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SegmentationDataError(f"cannot decode {path} as an image ({exc}); the file is corrupt or not an image") from exc
    return img


def read_image(path: str | Path) -> Tensor:
    """An RGB image as a float tensor ``(3, H, W)`` in [0, 1]."""
    img = _open(Path(path)).convert("RGB")
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def read_label_map(path: str | Path) -> Tensor:
    """Class indices ``(H, W)`` (int64) of a palette or grayscale PNG.

    An RGB label image is refused: its colours would have to be mapped back to classes,
    and a silent guess would be wrong for any palette but VOC's.
    """
    path = Path(path)
    img = _open(path)
    if img.mode not in ("P", "L"):
        raise SegmentationDataError(
            f"{path} is a {img.mode} image; a label map must be a palette (P) or grayscale (L) PNG "
            "whose pixel values are class indices (save it with PIL's putpalette, as VOC does)"
        )
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).astype(np.int64))


def voc_palette(num_colors: int = 256) -> List[int]:
    """The Pascal VOC colour map (flat RGB list): index bits spread over the channels."""
    palette = []
    for i in range(num_colors):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_label_png(path: str | Path, labels: Tensor | np.ndarray) -> None:
    """Save class indices ``(H, W)`` in 0..255 as a VOC-palette PNG."""
    from PIL import Image

    array = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 2 or array.min() < 0 or array.max() > 255:
        raise ValueError(f"a label map must be 2-D with values in 0..255, got shape {array.shape}")
    img = Image.fromarray(array.astype(np.uint8))  # mode "L"; putpalette makes it "P"
    img.putpalette(voc_palette())
    img.save(Path(path))

