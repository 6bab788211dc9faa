"""COCO instance masks as semantic label maps (one class index per pixel).

Reads the standard layout (``<images>/<file_name>`` and an ``instances_*.json``) with
pycocotools, which decodes polygons and RLE (compressed or not). COCO category ids
(1..90, with gaps) map to contiguous labels 1..K in sorted id order; 0 is background.
How overlaps and special cases become pixels:

- crowd regions (``iscrowd=1``) are painted 255 (void): they are many objects at once
  with no per-pixel truth, so they count in neither loss nor metric;
- instances are painted largest first, so a small object on top of a big one stays
  visible, and they override crowd regions;
- annotations of categories not selected through ``categories`` are background;
- an image without annotations is all background (kept unless ``skip_empty=True``).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cv_tasks.semantic_segmentation.datasets.errors import (
    DatasetNotFoundError,
    SegmentationDataError,
)
from cv_tasks.semantic_segmentation.datasets.io import read_image
from cv_tasks.semantic_segmentation.metrics import IGNORE_INDEX

__all__ = ["COCOSegmentation"]

Transform = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]


def _load_coco(annotation_file: Path, verbose: bool) -> Any:
    from pycocotools.coco import COCO

    if not annotation_file.is_file():
        raise DatasetNotFoundError(f"no COCO annotation file at {annotation_file}")
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet:
            return COCO(str(annotation_file))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SegmentationDataError(f"{annotation_file} is not valid JSON ({exc})") from exc
    except (KeyError, TypeError, AssertionError) as exc:
        raise SegmentationDataError(
            f"{annotation_file} is not a COCO instances file (needs 'images', 'annotations' and 'categories'): {exc!r}"
        ) from exc


class COCOSegmentation(Dataset):
    """``(image, mask)`` pairs: image ``(3, H, W)`` in [0, 1], mask ``(H, W)`` int64 labels.

    ``categories`` picks (and orders) the COCO category ids to keep; by default all of
    the file's. ``num_classes`` is their number plus one (background);
    ``label_of_category`` maps a COCO id to its label, ``class_names`` names each label.
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path,
                 categories: Optional[Sequence[int]] = None, transforms: Optional[Transform] = None,
                 skip_empty: bool = False, verbose: bool = False) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise DatasetNotFoundError(f"no image folder at {self.image_dir}")
        self.coco = _load_coco(Path(annotation_file), verbose)
        known = sorted(self.coco.cats)
        if categories is None:
            categories = known
        unknown = sorted(set(categories) - set(known))
        if unknown:
            raise ValueError(
                f"category ids {unknown} are not in {annotation_file} (its ids: {known[:10]}"
                f"{'...' if len(known) > 10 else ''}); pick categories from that file"
            )
        if len(set(categories)) != len(categories) or not categories:
            raise ValueError(f"categories must be distinct COCO category ids, at least one; got {list(categories)}")
        for ann in self.coco.anns.values():
            if ann.get("category_id") not in self.coco.cats:
                raise SegmentationDataError(
                    f"annotation {ann.get('id')} of image {ann.get('image_id')} has category_id "
                    f"{ann.get('category_id')}, which {annotation_file} does not define under 'categories'"
                )
        self.label_of_category: Dict[int, int] = {c: i + 1 for i, c in enumerate(categories)}
        self.class_names: List[str] = ["background"] + [self.coco.cats[c]["name"] for c in categories]
        self.num_classes = len(self.class_names)
        self.ids: List[int] = sorted(self.coco.imgs)
        if skip_empty:
            self.ids = [i for i in self.ids if any(
                a["category_id"] in self.label_of_category and not a.get("iscrowd", 0)
                for a in self.coco.imgToAnns.get(i, []))]
        if not self.ids:
            raise SegmentationDataError(f"{annotation_file} has no images{' with annotations' if skip_empty else ''}")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.ids)

    def load_mask(self, index: int) -> Tensor:
        """The label map of image ``index``, from its annotations alone (no image decode)."""
        info = self.coco.imgs[self.ids[index]]
        h, w = int(info["height"]), int(info["width"])
        mask = np.zeros((h, w), dtype=np.int64)
        anns = [a for a in self.coco.imgToAnns.get(info["id"], []) if a["category_id"] in self.label_of_category]
        anns.sort(key=lambda a: (not a.get("iscrowd", 0), -float(a.get("area", 0.0))))
        for ann in anns:
            mask[self._ann_mask(ann, info) > 0] = IGNORE_INDEX if ann.get("iscrowd", 0) else \
                self.label_of_category[ann["category_id"]]
        return torch.from_numpy(mask)

    def _ann_mask(self, ann: Dict[str, Any], info: Dict[str, Any]) -> np.ndarray:
        seg = ann.get("segmentation")
        where = f"annotation {ann.get('id')} of image {info['file_name']}"
        if not seg:
            raise SegmentationDataError(f"{where} has no segmentation (polygons or RLE); it cannot be painted")
        if isinstance(seg, dict) and list(seg.get("size", [])) != [info["height"], info["width"]]:
            raise SegmentationDataError(
                f"{where}: its RLE mask is {seg.get('size')} (HxW) but the image is "
                f"[{info['height']}, {info['width']}]; the RLE must have the image's size"
            )
        try:
            return self.coco.annToMask(ann)
        except Exception as exc:  # pycocotools raises bare TypeErrors/IndexErrors on bad geometry
            raise SegmentationDataError(f"{where} has an unreadable segmentation ({type(exc).__name__}: {exc})") from exc

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        info = self.coco.imgs[self.ids[index]]
        path = self.image_dir / info["file_name"]
        image = read_image(path)
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise SegmentationDataError(
                f"image {path} is {image.shape[-1]}x{image.shape[-2]} (WxH) but the annotation file says "
                f"{info['width']}x{info['height']}: the masks would not fit it"
            )
        mask = self.load_mask(index)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask
