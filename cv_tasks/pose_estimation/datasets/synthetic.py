"""A tiny deterministic pose data set: stick figures with known joints, in both formats.

Written as real files (jpgs, a COCO person-keypoints json, an MPII json), so tests and
the demo go through the same loaders as a user's data. Limbs are drawn in per-side
colours, so left and right are learnable and a wrong flip shows in the metric.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from cv_tasks.pose_estimation.keypoints import COCO_LAYOUT

__all__ = ["SyntheticPosePaths", "write_synthetic_pose_set"]

# COCO joints of a standing figure facing the camera (its left is image right), in units
# of its height, then the MPII extras: upper neck (17) and head top (18)
_TEMPLATE = np.array([
    [0.0, 0.08], [0.03, 0.06], [-0.03, 0.06], [0.06, 0.07], [-0.06, 0.07],
    [0.12, 0.2], [-0.12, 0.2], [0.16, 0.36], [-0.16, 0.36], [0.18, 0.5], [-0.18, 0.5],
    [0.08, 0.52], [-0.08, 0.52], [0.09, 0.74], [-0.09, 0.74], [0.1, 0.96], [-0.1, 0.96],
    [0.0, 0.15], [0.0, 0.0],
]) - np.array([0.0, 0.5])
_LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16), (5, 6), (11, 12), (5, 11), (6, 12), (17, 0))
_LEFT_COLOUR, _RIGHT_COLOUR, _MID_COLOUR = (40, 220, 60), (230, 50, 40), (60, 90, 240)
# MPII order from the template: r ankle, r knee, r hip, l hip, l knee, l ankle, pelvis,
# thorax, upper neck, head top, r wrist, r elbow, r shoulder, l shoulder, l elbow, l wrist
_MPII_FROM_TEMPLATE = (16, 14, 12, 11, 13, 15, -1, -2, 17, 18, 10, 8, 6, 5, 7, 9)


@dataclass(frozen=True)
class SyntheticPosePaths:
    """Where :func:`write_synthetic_pose_set` put the files."""

    image_dir: str
    coco_json: str
    mpii_json: str


def _figure(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """19 template points posed, scaled, rotated and placed; returns points and height."""
    pts = _TEMPLATE.copy()
    for j in (7, 8, 9, 10, 13, 14, 15, 16):  # limbs swing
        pts[j] += rng.uniform(-0.07, 0.07, 2)
    height = rng.uniform(0.45, 0.8) * size
    a = math.radians(rng.uniform(-20, 20))
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    center = rng.uniform(0.35, 0.65, 2) * size
    return (pts * height) @ rot.T + center, height


def _draw(image: np.ndarray, pts: np.ndarray, height: float) -> None:
    import cv2

    t = max(1, int(round(height / 40)))
    for a, b in _LIMBS:
        name = COCO_LAYOUT.joints[a] if (a, b) not in ((5, 6), (11, 12), (17, 0)) else "mid"
        colour = _LEFT_COLOUR if name.startswith("left") else _RIGHT_COLOUR if name.startswith("right") else _MID_COLOUR
        cv2.line(image, tuple(int(round(v)) for v in pts[a]), tuple(int(round(v)) for v in pts[b]), colour, t)
    cv2.circle(image, tuple(int(round(v)) for v in pts[0]), max(2, int(height * 0.07)), (240, 240, 240), -1)


def write_synthetic_pose_set(
    out_dir: str, num_images: int = 16, image_size: int = 128, seed: int = 0, people_per_image: int = 1
) -> SyntheticPosePaths:
    """Write ``num_images`` jpgs of stick figures and their annotations under ``out_dir``.

    Every 7th joint is marked occluded (COCO v = 1, still labelled); feet that leave the
    image are unlabelled (v = 0), as COCO does for joints outside the picture.
    """
    import cv2

    if num_images < 1 or image_size < 32 or people_per_image < 1:
        raise ValueError("need num_images >= 1, image_size >= 32 and people_per_image >= 1")
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    images: list[dict] = []
    anns: list[dict] = []
    mpii: list[dict] = []
    for i in range(num_images):
        name = f"{i:06d}.jpg"
        image = (rng.uniform(0, 40) + rng.normal(0, 6, (image_size, image_size, 3))).clip(0, 255).astype(np.uint8)
        for _ in range(people_per_image):
            pts, height = _figure(rng, image_size)
            _draw(image, pts, height)
            inside = (pts[:, 0] >= 0) & (pts[:, 0] < image_size) & (pts[:, 1] >= 0) & (pts[:, 1] < image_size)
            vis = np.where(inside, 2, 0)
            vis[(np.arange(len(vis)) + i) % 7 == 0] = np.minimum(vis[(np.arange(len(vis)) + i) % 7 == 0], 1)
            coco = pts[:17]
            x1, y1 = np.clip(coco.min(0) - 0.05 * height, 0, image_size - 1)
            x2, y2 = np.clip(coco.max(0) + 0.05 * height, 0, image_size - 1)
            kp = np.concatenate([np.where(vis[:17, None] > 0, coco, 0.0), vis[:17, None]], 1)
            anns.append({
                "id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                "keypoints": [round(float(v), 2) for v in kp.reshape(-1)],
                "num_keypoints": int((vis[:17] > 0).sum()),
                "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                "area": round(float((x2 - x1) * (y2 - y1) * 0.5), 2),
            })
            mp = np.stack([pts[j] if j >= 0 else (pts[11] + pts[12]) / 2 if j == -1 else (pts[5] + pts[6]) / 2
                           for j in _MPII_FROM_TEMPLATE])
            mvis = np.array([min(vis[j], 1) if j >= 0 else 1 for j in _MPII_FROM_TEMPLATE])
            head_mid, half = (pts[17] + pts[18]) / 2, 0.1 * height
            mpii.append({
                "image": name, "image_id": i + 1,
                "center": [round(float(v), 2) for v in pts[:17].mean(0)],
                "scale": round(float(height * 1.1 / 200), 4),
                "joints": [[round(float(x), 2), round(float(y), 2)] for x, y in np.where(mvis[:, None] > 0, mp, 0.0)],
                "joints_vis": [int(v) for v in mvis],
                "head_box": [round(float(v), 2) for v in (*(head_mid - half), *(head_mid + half))],
            })
        cv2.imwrite(os.path.join(image_dir, name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": i + 1, "file_name": name, "width": image_size, "height": image_size})
    categories = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_LAYOUT.joints),
                   "skeleton": [[a + 1, b + 1] for a, b in _LIMBS if max(a, b) < 17]}]
    coco_json = os.path.join(out_dir, "person_keypoints_synthetic.json")
    with open(coco_json, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    mpii_json = os.path.join(out_dir, "mpii_synthetic.json")
    with open(mpii_json, "w", encoding="utf-8") as f:
        json.dump(mpii, f)
    return SyntheticPosePaths(image_dir, coco_json, mpii_json)
