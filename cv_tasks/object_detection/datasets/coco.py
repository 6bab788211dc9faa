"""COCO-format detection data (``instances_*.json`` + an image folder), read with pycocotools.

Targets are torchvision's: ``boxes`` (x1, y1, x2, y2) in pixels, ``labels`` in 1..K (the
data set's categories in id order; 0 is the background), plus ``image_id``, ``area``,
``iscrowd`` and ``orig_size``. How irregular annotations are handled:

* an image without annotations is kept, with empty ``(0, 4)`` boxes (torchvision trains
  on it as background); ``drop_empty=True`` leaves such images out;
* a box with zero or negative width or height is dropped (torchvision's detectors
  refuse such boxes in training) and counted in ``dropped_boxes``;
* crowd annotations are kept with ``iscrowd=1`` (COCOeval ignores detections on them);
* a ``category_id`` that is not among the file's categories raises ``AnnotationError``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch.utils.data import Dataset

from cv_tasks.object_detection.datasets.errors import AnnotationError, DatasetNotFoundError
from cv_tasks.object_detection.datasets.images import read_image

__all__ = ["CocoDetection"]


class CocoDetection(Dataset):
    """Images of ``image_dir`` with the boxes of ``ann_file``; ``transforms(image, target)`` applied."""

    def __init__(self, image_dir: Union[str, Path], ann_file: Union[str, Path],
                 transforms: Optional[Callable[[Any, Dict[str, Any]], Tuple[Any, Dict[str, Any]]]] = None,
                 drop_empty: bool = False) -> None:
        from pycocotools.coco import COCO

        self.image_dir, ann_path = Path(image_dir), Path(ann_file)
        if not ann_path.is_file():
            raise DatasetNotFoundError(f"no COCO annotation file at {ann_path}; expected e.g. "
                                       "annotations/instances_train2017.json")
        if not self.image_dir.is_dir():
            raise DatasetNotFoundError(f"no image folder at {self.image_dir}; pass the folder the "
                                       "annotations' file_name entries are relative to")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(ann_path))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AnnotationError(f"{ann_path} is not valid JSON ({exc})") from exc
        except (KeyError, TypeError, AssertionError) as exc:
            raise AnnotationError(f"{ann_path} is not a COCO instances file (missing or wrong {exc}); "
                                  "it needs 'images', 'annotations' and 'categories'") from exc
        self.transforms = transforms
        self.category_ids: List[int] = sorted(self.coco.getCatIds())
        if not self.category_ids:
            raise AnnotationError(f"{ann_path} lists no categories")
        self.categories: List[str] = [self.coco.cats[c].get("name", str(c)) for c in self.category_ids]
        self._label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}
        for ann in self.coco.dataset.get("annotations", []):
            if ann.get("category_id") not in self._label_of:
                raise AnnotationError(
                    f"{ann_path}: annotation {ann.get('id')} has category_id {ann.get('category_id')!r}, "
                    f"which is not among the file's categories {self.category_ids}; fix the annotation or "
                    "add the category")
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4):
                raise AnnotationError(f"{ann_path}: annotation {ann.get('id')} has bbox {bbox!r}; "
                                      "expected [x, y, width, height]")
        ids = sorted(self.coco.getImgIds())
        if drop_empty:
            ids = [i for i in ids if self.coco.getAnnIds(imgIds=i)]
        self.ids = ids
        self.dropped_boxes = sum(1 for a in self.coco.dataset.get("annotations", [])
                                 if a["bbox"][2] <= 0 or a["bbox"][3] <= 0)

    @property
    def num_classes(self) -> int:
        """Categories plus the background: the ``num_classes`` a torchvision detector needs."""
        return len(self.category_ids) + 1

    def label_to_category_id(self, label: int) -> int:
        """The COCO ``category_id`` of model label ``label`` (1..K)."""
        return self.category_ids[label - 1]

    def __len__(self) -> int:
        return len(self.ids)

    def _target(self, image_id: int, height: int, width: int) -> Dict[str, Any]:
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        return {
            "boxes": boxes,
            "labels": torch.tensor([self._label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": image_id,
            "area": torch.tensor([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "orig_size": (height, width),
        }

    def __getitem__(self, index: int) -> Tuple[Any, Dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = read_image(self.image_dir / info["file_name"])
        target = self._target(image_id, image.height, image.width)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
