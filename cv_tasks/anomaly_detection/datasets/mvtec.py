"""The MVTec AD layout: normal training images, labelled test images, defect masks.

::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png

Items are ``(image, label, mask)``: the image ``(3, S, S)`` in [0, 1] (grey images are
repeated over 3 channels), the label 0 (good) or 1 (any defect), the mask ``(1, S, S)``
in {0, 1} (all zeros for good images). The training split has good images only, so a
teacher and its retrained blocks never see a defect. Every file is checked when the data
set is built (headers only), so a missing folder or a mask that does not match its
image fails at once, naming the file. Pillow is imported when the data set is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cv_tasks.anomaly_detection.errors import (
    AnomalyDatasetError,
    DatasetNotFoundError,
    UndefinedMetricError,
)

__all__ = ["IMAGE_SUFFIXES", "MVTecAD", "list_images"]

PathLike = Union[str, Path]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LAYOUT = "<category>/train/good/*.png, <category>/test/<defect or good>/*.png, <category>/ground_truth/<defect>/*_mask.png"


def list_images(folder: Path) -> List[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("the MVTec AD loader reads images with Pillow: pip install pillow") from exc
    return Image


def _size(image_module: Any, path: Path) -> Tuple[int, int]:
    try:
        with image_module.open(path) as im:
            return im.size
    except Exception as exc:  # UnidentifiedImageError, truncated headers, permissions
        raise AnomalyDatasetError(f"cannot read the image {path} ({exc}); replace or remove the file") from exc


class MVTecAD(Dataset):
    """One category of an MVTec-AD-layout data set, ``split`` "train" or "test", resized to ``image_size``.

    ``root`` is the category folder itself or, with ``category``, the folder holding it.
    """

    def __init__(self, root: PathLike, category: Optional[str] = None, split: str = "train",
                 image_size: int = 64) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        base = Path(root).expanduser() / (category or "")
        if not base.is_dir():
            raise DatasetNotFoundError(f"{base} is not a directory; expected the MVTec AD layout {_LAYOUT}")
        self.root, self.split, self.image_size = base, split, image_size
        self.samples: List[Tuple[Path, int, Optional[Path]]] = []  # (image, label, mask or None)
        image_module = _pil()
        if split == "train":
            good = base / "train" / "good"
            images = list_images(good) if good.is_dir() else []
            if not images:
                raise DatasetNotFoundError(
                    f"no training images in {good}: the one-class protocol trains on normal images only, "
                    f"put them there (layout {_LAYOUT})"
                )
            self.samples = [(p, 0, None) for p in images]
        else:
            self.samples = self._test_samples(base)
        for image, _, mask in self.samples:
            size = _size(image_module, image)
            if mask is not None and _size(image_module, mask) != size:
                raise AnomalyDatasetError(
                    f"the mask {mask} is {_size(image_module, mask)} pixels but its image {image} is {size}: "
                    "a mask must have its image's width and height"
                )
        self.defects = sorted({p.parent.name for p, label, _ in self.samples if label == 1})

    @staticmethod
    def _test_samples(base: Path) -> List[Tuple[Path, int, Optional[Path]]]:
        test = base / "test"
        if not test.is_dir():
            raise DatasetNotFoundError(f"{test} is missing; expected the MVTec AD layout {_LAYOUT}")
        samples: List[Tuple[Path, int, Optional[Path]]] = []
        for folder in sorted(p for p in test.iterdir() if p.is_dir()):
            for image in list_images(folder):
                if folder.name == "good":
                    samples.append((image, 0, None))
                    continue
                masks = [base / "ground_truth" / folder.name / f"{image.stem}_mask{s}" for s in IMAGE_SUFFIXES]
                mask = next((m for m in masks if m.is_file()), None)
                if mask is None:
                    raise DatasetNotFoundError(
                        f"no mask for the defect image {image}: expected {masks[0]} (white where the defect is)"
                    )
                samples.append((image, 1, mask))
        labels = {label for _, label, _ in samples}
        if labels != {0, 1}:
            kind = "no images" if not labels else "only " + ("good" if labels == {0} else "defect") + " images"
            error = DatasetNotFoundError if not labels else UndefinedMetricError
            raise error(
                f"{test} has {kind}: image AUROC is undefined unless the test set has both test/good and at "
                "least one test/<defect> folder with images"
            )
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Tensor, int, Tensor]:
        image_module = _pil()
        path, label, mask_path = self.samples[index]
        s = self.image_size
        with image_module.open(path) as im:
            image = _to_tensor(im.convert("RGB").resize((s, s), image_module.BILINEAR))
        if mask_path is None:
            mask = torch.zeros(1, s, s)
        else:
            with image_module.open(mask_path) as im:
                mask = (_to_tensor(im.convert("L").resize((s, s), image_module.NEAREST)) > 0.5).float()
        return image, label, mask

    def __repr__(self) -> str:
        return f"MVTecAD({self.root}, {self.split}, {len(self)} images, defects {self.defects})"


def _to_tensor(image: Any) -> Tensor:
    """A PIL image as a float ``(C, H, W)`` tensor in [0, 1]."""
    import numpy as np

    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())
