"""COCO person keypoints (``person_keypoints_*.json``) read with pycocotools.

Each annotation holds ``keypoints`` = 17 x (x, y, v) with v = 0 unlabelled, 1 labelled
but occluded, 2 visible, plus ``bbox`` [x, y, w, h], ``area``, ``num_keypoints`` and
``iscrowd``. Crowd regions and people with ``num_keypoints == 0`` are skipped, as
pycocotools' keypoint evaluation ignores them: they have nothing to train on or score.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np

from cv_tasks.pose_estimation.datasets.base import PersonRecord
from cv_tasks.pose_estimation.datasets.errors import DatasetNotFoundError, PoseAnnotationError
from cv_tasks.pose_estimation.keypoints import COCO_LAYOUT

__all__ = ["read_coco_keypoints"]


def read_coco_keypoints(ann_file: str, image_dir: str) -> tuple[list[PersonRecord], int]:
    """The people of a COCO keypoints file, and how many were skipped (crowd / no keypoints).

    Raises ``DatasetNotFoundError`` for a missing file and ``PoseAnnotationError`` for
    malformed content (not json, no person category, not 17 keypoints per person).
    """
    if not os.path.isfile(ann_file):
        raise DatasetNotFoundError(f"COCO keypoints file {ann_file} not found; pass the person_keypoints_*.json path")
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(ann_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PoseAnnotationError(f"{ann_file} is not valid json ({exc}); is it a COCO annotation file?") from None
    except (KeyError, TypeError, AssertionError) as exc:
        raise PoseAnnotationError(f"{ann_file} is not in COCO format (missing or bad {exc}); "
                                  "it needs 'images', 'annotations' and 'categories'") from None
    k = COCO_LAYOUT.num_joints
    people = [c for c in coco.loadCats(coco.getCatIds()) if c.get("name") == "person"]
    if not people:
        raise PoseAnnotationError(f"{ann_file} has no 'person' category; is it a person_keypoints file?")
    if len(people[0].get("keypoints", [])) not in (0, k):
        raise PoseAnnotationError(f"{ann_file}: the person category names {len(people[0]['keypoints'])} keypoints, "
                                  f"expected the {k} COCO keypoints")
    records: list[PersonRecord] = []
    skipped = 0
    for ann in coco.loadAnns(coco.getAnnIds(catIds=[people[0]["id"]])):
        values = ann.get("keypoints")
        if values is None or len(values) != 3 * k:
            got = "none" if values is None else f"{len(values)} values"
            raise PoseAnnotationError(f"{ann_file}: annotation id {ann.get('id')} has {got} in 'keypoints', "
                                      f"expected {3 * k} ({k} keypoints x (x, y, v)); wrong number of joints?")
        kp = np.asarray(values, dtype=np.float64).reshape(k, 3)
        if ann.get("iscrowd", 0) or (kp[:, 2] > 0).sum() == 0:
            skipped += 1
            continue
        if ann["image_id"] not in coco.imgs:
            raise PoseAnnotationError(f"{ann_file}: annotation id {ann.get('id')} refers to unknown image id {ann['image_id']}")
        info = coco.imgs[ann["image_id"]]
        box = _clip_box(ann["bbox"], info.get("width"), info.get("height"))
        if box is None:
            skipped += 1
            continue
        records.append(PersonRecord(
            image_path=os.path.join(image_dir, info["file_name"]),
            joints=kp[:, :2].copy(),
            visible=kp[:, 2].copy(),
            box=box,
            norm=max(box[2], box[3]),
            area=float(ann.get("area", box[2] * box[3])),
            image_id=int(ann["image_id"]),
        ))
    return records, skipped


def _clip_box(bbox: list[float], width: int | None, height: int | None) -> tuple[float, float, float, float] | None:
    """The box inside the image (None when empty), as the common top-down codebases do."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = x + max(0.0, w), y + max(0.0, h)
    if width:
        x2 = min(float(width) - 1, x2)
    if height:
        y2 = min(float(height) - 1, y2)
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2 - x1, y2 - y1)
