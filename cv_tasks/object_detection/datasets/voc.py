"""Pascal VOC detection data: ``Annotations/*.xml``, ``ImageSets/Main/<set>.txt``, ``JPEGImages/``.

Targets are torchvision's (``boxes`` x1, y1, x2, y2 in pixels as written in the XML,
``labels`` 1..K in the order of ``classes``) plus ``difficult``, which VOC mAP ignores.
An image without objects is kept with empty boxes; a box with zero or negative size is
dropped and counted in ``dropped_boxes``; a class name not in ``classes`` raises
``AnnotationError`` (pass ``classes=`` for a data set with other names).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from cv_tasks.object_detection.datasets.errors import AnnotationError, DatasetNotFoundError
from cv_tasks.object_detection.datasets.images import read_image

__all__ = ["VOC_CLASSES", "VOCDetection", "parse_voc_xml"]

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def parse_voc_xml(path: Path) -> Dict[str, Any]:
    """``{"filename", "objects": [{"name", "bbox", "difficult"}]}`` from one VOC annotation file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"{path} is not valid XML ({exc})") from exc
    objects = []
    for i, obj in enumerate(root.iter("object")):
        box = obj.find("bndbox")
        name = obj.findtext("name")
        try:
            if box is None or name is None:
                raise ValueError("no <name> or <bndbox>")
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise AnnotationError(f"{path}: object {i} needs <name> and <bndbox> with numeric "
                                  f"xmin/ymin/xmax/ymax ({exc})") from exc
        objects.append({"name": name.strip(), "bbox": coords,
                        "difficult": int(obj.findtext("difficult", "0").strip() or 0)})
    return {"filename": root.findtext("filename"), "objects": objects}


class VOCDetection(Dataset):
    """The images of ``root/ImageSets/Main/<image_set>.txt`` with their boxes."""

    def __init__(self, root: Union[str, Path], image_set: str = "train", classes: Sequence[str] = VOC_CLASSES,
                 transforms: Optional[Callable[[Any, Dict[str, Any]], Tuple[Any, Dict[str, Any]]]] = None) -> None:
        self.root = Path(root)
        list_file = self.root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not list_file.is_file():
            raise DatasetNotFoundError(f"no image set list at {list_file}; root must be a VOC folder "
                                       "(e.g. VOCdevkit/VOC2012) holding ImageSets/Main/<image_set>.txt")
        self.ids: List[str] = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise AnnotationError(f"{list_file} lists no images")
        self.classes = tuple(classes)
        self.transforms = transforms
        label_of = {c: i + 1 for i, c in enumerate(self.classes)}
        self._records: List[Dict[str, Any]] = []
        self.dropped_boxes = 0
        for image_id in self.ids:
            xml = self.root / "Annotations" / f"{image_id}.xml"
            if not xml.is_file():
                raise DatasetNotFoundError(f"{list_file} lists {image_id!r} but {xml} does not exist")
            record = parse_voc_xml(xml)
            kept = []
            for obj in record["objects"]:
                if obj["name"] not in label_of:
                    raise AnnotationError(f"{xml}: class {obj['name']!r} is not in classes {list(self.classes)}; "
                                          "pass classes= with every class name of the data set")
                x1, y1, x2, y2 = obj["bbox"]
                if x2 <= x1 or y2 <= y1:
                    self.dropped_boxes += 1
                    continue
                kept.append({**obj, "label": label_of[obj["name"]]})
            self._records.append({"file": record["filename"] or f"{image_id}.jpg", "objects": kept})

    @property
    def num_classes(self) -> int:
        """Classes plus the background: the ``num_classes`` a torchvision detector needs."""
        return len(self.classes) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Tuple[Any, Dict[str, Any]]:
        record = self._records[index]
        image = read_image(self.root / "JPEGImages" / record["file"])
        objs = record["objects"]
        target = {
            "boxes": torch.tensor([o["bbox"] for o in objs], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([o["label"] for o in objs], dtype=torch.int64),
            "difficult": torch.tensor([o["difficult"] for o in objs], dtype=torch.int64),
            "image_id": self.ids[index],
            "orig_size": (image.height, image.width),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
