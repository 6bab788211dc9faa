"""MPII in the json form used by common pose codebases (HRNet, mmpose).

The file is a list of people::

    [{"image": "015601864.jpg", "center": [594.0, 257.0], "scale": 3.02,
      "joints": [[x, y], ... 16 pairs], "joints_vis": [1, 0, ... 16 flags],
      "head_box": [x1, y1, x2, y2]},        # optional, see below
     ...]

``scale`` x 200 is the person's height in pixels (MPII's convention); the 16 joints
are in MPII order (right ankle ... left wrist, ``MPII_LAYOUT``). PCKh normalises by
the head size, 0.6 x the head box diagonal (MPII's evaluation); the json form usually
lacks the head box, so an optional ``head_box`` is read and, without it, the head size
is the upper-neck to head-top distance (joints 8, 9), a close stand-in. People with
no visible joint are skipped.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from cv_tasks.pose_estimation.datasets.base import PersonRecord
from cv_tasks.pose_estimation.datasets.errors import DatasetNotFoundError, PoseAnnotationError
from cv_tasks.pose_estimation.keypoints import MPII_HEAD_JOINTS, MPII_LAYOUT

__all__ = ["head_size", "read_mpii_json"]

#: MPII's PCKh scale: head size = 0.6 x the head box diagonal
HEAD_BOX_FACTOR = 0.6


def head_size(entry: dict[str, Any], joints: np.ndarray) -> float:
    """The PCKh normaliser of one MPII person (see the module docstring)."""
    if "head_box" in entry:
        x1, y1, x2, y2 = (float(v) for v in entry["head_box"])
        return HEAD_BOX_FACTOR * float(np.hypot(x2 - x1, y2 - y1))
    a, b = MPII_HEAD_JOINTS
    return float(np.linalg.norm(joints[a] - joints[b]))


def read_mpii_json(ann_file: str, image_dir: str) -> tuple[list[PersonRecord], int]:
    """The people of an MPII json file, and how many were skipped (no visible joint).

    Raises ``DatasetNotFoundError`` for a missing file and ``PoseAnnotationError`` for
    a malformed entry (the message gives its index and the field).
    """
    if not os.path.isfile(ann_file):
        raise DatasetNotFoundError(f"MPII json {ann_file} not found; pass the annotation file path")
    try:
        with open(ann_file, encoding="utf-8") as f:
            entries = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PoseAnnotationError(f"{ann_file} is not valid json ({exc})") from None
    if not isinstance(entries, list):
        raise PoseAnnotationError(f"{ann_file} must hold a json list of people, got {type(entries).__name__}")
    k = MPII_LAYOUT.num_joints
    records: list[PersonRecord] = []
    skipped = 0
    for i, e in enumerate(entries):
        where = f"{ann_file}: entry {i}"
        missing = [f for f in ("image", "center", "scale", "joints", "joints_vis") if f not in e]
        if missing:
            raise PoseAnnotationError(f"{where} lacks {missing}; each entry needs image, center, scale, joints, joints_vis")
        joints = np.asarray(e["joints"], dtype=np.float64)
        vis = np.asarray(e["joints_vis"], dtype=np.float64).reshape(-1)
        if joints.shape != (k, 2) or vis.shape != (k,):
            raise PoseAnnotationError(f"{where} has joints of shape {joints.shape} and {vis.size} joints_vis, "
                                      f"expected ({k}, 2) and {k} (the 16 MPII joints); wrong number of joints?")
        if (vis > 0).sum() == 0:
            skipped += 1
            continue
        scale = float(e["scale"])
        if scale <= 0:
            raise PoseAnnotationError(f"{where} has scale {scale}; it must be positive (person height / 200)")
        cx, cy = (float(v) for v in e["center"])
        side = 200.0 * scale
        norm = head_size(e, joints)
        if norm <= 0:
            raise PoseAnnotationError(f"{where}: head size is 0 (no head_box and upper neck == head top); "
                                      "add a head_box [x1, y1, x2, y2]")
        records.append(PersonRecord(
            image_path=os.path.join(image_dir, str(e["image"])),
            joints=joints,
            visible=vis,
            box=(cx - side / 2, cy - side / 2, side, side),
            norm=norm,
            area=side * side * 0.53,  # a person fills ~half of its square box: OKS scale for keypoint AP
            image_id=int(e.get("image_id", _stable_id(str(e["image"])))),
            head_norm=True,
        ))
    return records, skipped


def _stable_id(name: str) -> int:
    """A deterministic integer id for an image name (COCOeval groups people by image id)."""
    import zlib

    return zlib.crc32(name.encode("utf-8"))
