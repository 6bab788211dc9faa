"""Top-down person samples: crop one annotated person, make heatmap targets and metadata.

Both formats (COCO, MPII) are parsed into ``PersonRecord``s; this one dataset turns a
record into ``(image, heatmaps, target_weight, meta)``. ``meta`` carries what scoring
needs to return to image coordinates (the inverse crop affine) and the ground truth
(joints, visibility, the PCK normaliser, COCO image id and area), so a metric never
needs the annotation file again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cv_tasks.pose_estimation.datasets.errors import CorruptImageError, DatasetNotFoundError
from cv_tasks.pose_estimation.heatmaps import encode_heatmaps
from cv_tasks.pose_estimation.keypoints import KeypointLayout
from cv_tasks.pose_estimation.transforms import (
    apply_affine,
    box_to_center_size,
    crop_affine,
    flip_joints,
    invert_affine,
    warp_image,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PersonRecord", "TopDownDataset"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PersonRecord:
    """One annotated person: image path, (K, 2) joints, (K,) visibility, [x, y, w, h] box.

    ``norm`` is the PCK normaliser in pixels (head size for MPII, the box's longer
    side for COCO); ``area`` is COCO's object area (OKS scale).
    """

    image_path: str
    joints: np.ndarray
    visible: np.ndarray
    box: tuple[float, float, float, float]
    norm: float
    area: float
    image_id: int
    head_norm: bool = False  # True when ``norm`` is a head size (PCKh), False for a box size


class TopDownDataset(Dataset):
    """Person crops of ``input_size`` (H, W) with heatmaps at 1/``stride`` resolution.

    With ``train=True`` each crop is randomly scaled (x in [1 - scale_factor, 1 + scale_factor]),
    rotated (up to +-``rotation`` degrees, 60% of the time) and mirrored (50%, with the
    left/right joints swapped); evaluation crops are plain.
    """

    def __init__(
        self,
        records: Sequence[PersonRecord],
        layout: KeypointLayout,
        input_size: tuple[int, int] = (256, 192),
        stride: int = 4,
        sigma: float = 2.0,
        train: bool = False,
        scale_factor: float = 0.25,
        rotation: float = 30.0,
        padding: float = 1.25,
        skipped: int = 0,
    ) -> None:
        if len(input_size) != 2 or min(input_size) < stride or any(s % stride for s in input_size):
            raise ValueError(f"input_size (H, W) must be multiples of stride {stride}, got {input_size}")
        self.records = list(records)
        self.layout = layout
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.stride = stride
        self.heatmap_size = (self.input_size[0] // stride, self.input_size[1] // stride)
        self.sigma = sigma
        self.train = train
        self.scale_factor = scale_factor
        self.rotation = rotation
        self.padding = padding
        self.skipped = skipped  # people the annotation reader left out (crowd, nothing labelled)
        missing = sorted({r.image_path for r in self.records if not os.path.isfile(r.image_path)})
        if missing:
            raise DatasetNotFoundError(
                f"{len(missing)} image(s) named in the annotations are missing, e.g. {missing[0]}; "
                "check the image directory passed with the annotation file"
            )

    def __len__(self) -> int:
        return len(self.records)

    def _augment(self) -> tuple[float, float, bool]:
        if not self.train:
            return 1.0, 0.0, False
        r = torch.rand(4).tolist()
        scale = 1.0 + self.scale_factor * (2 * r[0] - 1)
        rot = self.rotation * (2 * r[1] - 1) if r[2] < 0.6 else 0.0
        return scale, rot, r[3] < 0.5

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        rec = self.records[index]
        image = _read_rgb(rec.image_path)
        h, w = self.input_size
        center, size = box_to_center_size(rec.box, w / h, self.padding)
        scale, rot, flip = self._augment()
        m = crop_affine(center, size * scale, self.input_size, rot, flip)
        crop = warp_image(image, m, self.input_size)
        joints = apply_affine(rec.joints, m)
        visible = rec.visible.astype(np.float32)
        if flip:
            perm = self.layout.flip_permutation()
            joints, visible = flip_joints(joints, perm), flip_joints(visible, perm)
        maps, weights = encode_heatmaps(joints, visible, self.heatmap_size, self.stride, self.sigma)
        x = torch.from_numpy(crop).permute(2, 0, 1).float().div_(255)
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        meta = {
            "inverse": torch.from_numpy(invert_affine(m)),
            "joints": torch.from_numpy(np.asarray(rec.joints, dtype=np.float64)),
            "visible": torch.from_numpy((rec.visible > 0).astype(np.float32)),
            "crop_joints": torch.from_numpy((joints / np.array([w, h])).astype(np.float32)),
            "norm": torch.tensor(float(rec.norm), dtype=torch.float64),
            "area": torch.tensor(float(rec.area), dtype=torch.float64),
            "box": torch.tensor(rec.box, dtype=torch.float64),
            "image_id": torch.tensor(int(rec.image_id)),
            "head_norm": torch.tensor(bool(rec.head_norm)),
        }
        return x, torch.from_numpy(maps), torch.from_numpy(weights), meta


def _read_rgb(path: str) -> np.ndarray:
    import cv2

    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"image {path} not found; check the image directory")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise CorruptImageError(f"image {path} exists but cannot be decoded; replace or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

