"""Pascal VOC 2012 segmentation, read from its standard layout on disk.

::

    VOC2012/                      (or VOCdevkit/VOC2012, or the folder you pass)
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png  palette PNG: 0 background, 1..20 classes, 255 void
      ImageSets/Segmentation/{train,val}.txt   one <id> per line

Every mask is checked when loaded: same size as its image, labels below ``num_classes``
or 255, so a wrong file fails with its name instead of corrupting a loss or a score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple

from torch import Tensor
from torch.utils.data import Dataset

from cv_tasks.semantic_segmentation.datasets.errors import (
    DatasetNotFoundError,
    SegmentationDataError,
)
from cv_tasks.semantic_segmentation.datasets.io import read_image, read_label_map
from cv_tasks.semantic_segmentation.metrics import IGNORE_INDEX

__all__ = ["VOC_CLASSES", "VOCSegmentation", "check_mask"]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

Transform = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]


def check_mask(mask: Tensor, image: Tensor, num_classes: int, path: Path,
               ignore_index: int = IGNORE_INDEX) -> None:
    """Raise :class:`SegmentationDataError` if ``mask`` does not fit ``image`` or the classes."""
    if tuple(mask.shape) != tuple(image.shape[-2:]):
        raise SegmentationDataError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is "
            f"{image.shape[-1]}x{image.shape[-2]}: masks must have their image's size"
        )
    bad = mask[(mask >= num_classes) & (mask != ignore_index)]
    if bad.numel():
        labels = sorted(set(bad.unique().tolist()))[:8]
        raise SegmentationDataError(
            f"mask {path} has labels {labels} >= num_classes={num_classes} (only {ignore_index} may exceed it, as void); "
            "pass the right num_classes or fix the mask"
        )


def _find_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise DatasetNotFoundError(
        f"no Pascal VOC segmentation data under {root}: expected JPEGImages/ and SegmentationClass/ "
        "there, or in VOC2012/ or VOCdevkit/VOC2012/ below it"
    )


class VOCSegmentation(Dataset):
    """``(image, mask)`` pairs of one split: image ``(3, H, W)`` in [0, 1] and mask
    ``(H, W)`` int64, passed through ``transforms(image, mask)`` when given."""

    def __init__(self, root: str | Path, split: str = "train", num_classes: int = len(VOC_CLASSES),
                 transforms: Optional[Transform] = None) -> None:
        self.root = _find_root(Path(root))
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetNotFoundError(f"no split file {split_file}: list the ids of split {split!r} there, one per line")
        self.ids: List[str] = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise SegmentationDataError(f"split file {split_file} lists no images")
        missing = [i for i in self.ids if not (self.root / "JPEGImages" / f"{i}.jpg").is_file()
                   or not (self.root / "SegmentationClass" / f"{i}.png").is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"{len(missing)} ids of {split_file} lack JPEGImages/<id>.jpg or SegmentationClass/<id>.png, "
                f"e.g. {missing[:3]}"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.split, self.num_classes, self.transforms = split, num_classes, transforms

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image = read_image(self.root / "JPEGImages" / f"{self.ids[index]}.jpg")
        mask_path = self.root / "SegmentationClass" / f"{self.ids[index]}.png"
        mask = read_label_map(mask_path)
        check_mask(mask, image, self.num_classes, mask_path)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask
