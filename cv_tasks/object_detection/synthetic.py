"""A tiny synthetic detection set written in both standard formats, for tests and the demo.

Coloured rectangles and ellipses (two classes) on noise backgrounds, deterministic from
``seed``. The images are JPEGs; the boxes go to a real COCO instances JSON and to VOC XML
files with ``ImageSets/Main`` lists, so the real loaders read them::

    root/images/000000.jpg ...
    root/annotations/instances_train.json, instances_val.json     (COCO)
    root/VOC/JPEGImages/, Annotations/, ImageSets/Main/train.txt, val.txt   (Pascal VOC)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union
from xml.sax.saxutils import escape

import numpy as np

__all__ = ["SYNTHETIC_CLASSES", "make_synthetic_detection"]

SYNTHETIC_CLASSES: Tuple[str, ...] = ("rectangle", "ellipse")


def _draw(rng: np.random.Generator, size: int, max_objects: int) -> Tuple[Any, List[Dict[str, Any]]]:
    from PIL import Image, ImageDraw

    noise = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        w, h = (int(v) for v in rng.integers(size // 5, size // 2, 2))
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        label = int(rng.integers(1, len(SYNTHETIC_CLASSES) + 1))
        colour = tuple(int(c) for c in rng.integers(120, 256, 3))
        shape = draw.rectangle if label == 1 else draw.ellipse
        shape([x, y, x + w - 1, y + h - 1], fill=colour)
        objects.append({"label": label, "bbox": [x, y, w, h]})
    return image, objects


def _voc_xml(file_name: str, size: int, objects: List[Dict[str, Any]]) -> str:
    parts = [(f"<annotation><filename>{escape(file_name)}</filename>"
              f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>")]
    for o in objects:
        x, y, w, h = o["bbox"]
        parts.append(f"<object><name>{SYNTHETIC_CLASSES[o['label'] - 1]}</name><difficult>0</difficult>"
                     f"<bndbox><xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox>"
                     "</object>")
    return "".join(parts) + "</annotation>\n"


def make_synthetic_detection(root: Union[str, Path], num_train: int = 32, num_val: int = 16, image_size: int = 96,
                             max_objects: int = 3, seed: int = 0,
                             splits: Sequence[str] = ("train", "val")) -> Dict[str, Path]:
    """Write the data set under ``root`` and return its paths (COCO json per split, image dir, VOC root).

    Boxes are exact: a shape drawn over pixels x..x+w-1 has the COCO box ``[x, y, w, h]``.
    Later shapes may cover earlier ones partly, as objects occlude in real images.
    """
    if num_train < 1 or num_val < 1 or image_size < 16 or max_objects < 1:
        raise ValueError("need num_train, num_val, max_objects >= 1 and image_size >= 16; got "
                         f"{num_train}, {num_val}, {max_objects}, {image_size}")
    root = Path(root)
    images, voc = root / "images", root / "VOC"
    for d in (images, root / "annotations", voc / "JPEGImages", voc / "Annotations", voc / "ImageSets" / "Main"):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SYNTHETIC_CLASSES)]
    paths: Dict[str, Path] = {"images": images, "voc": voc}
    next_image, next_ann = 1, 1
    for split, count in zip(splits, (num_train, num_val)):
        coco: Dict[str, Any] = {"images": [], "annotations": [], "categories": categories}
        names = []
        for _ in range(count):
            image, objects = _draw(rng, image_size, max_objects)
            name = f"{next_image:06d}"
            image.save(images / f"{name}.jpg", quality=95)
            shutil.copyfile(images / f"{name}.jpg", voc / "JPEGImages" / f"{name}.jpg")
            (voc / "Annotations" / f"{name}.xml").write_text(_voc_xml(f"{name}.jpg", image_size, objects))
            coco["images"].append({"id": next_image, "file_name": f"{name}.jpg", "width": image_size,
                                   "height": image_size})
            for o in objects:
                w, h = o["bbox"][2:]
                coco["annotations"].append({"id": next_ann, "image_id": next_image, "category_id": o["label"],
                                            "bbox": o["bbox"], "area": w * h, "iscrowd": 0})
                next_ann += 1
            names.append(name)
            next_image += 1
        ann_file = root / "annotations" / f"instances_{split}.json"
        ann_file.write_text(json.dumps(coco))
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        paths[split] = ann_file
    return paths
