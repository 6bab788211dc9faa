"""One entry point from annotation files to data loaders, for either format."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from cv_tasks.pose_estimation.datasets.base import TopDownDataset
from cv_tasks.pose_estimation.datasets.coco import read_coco_keypoints
from cv_tasks.pose_estimation.datasets.errors import PoseAnnotationError
from cv_tasks.pose_estimation.datasets.mpii import read_mpii_json
from cv_tasks.pose_estimation.keypoints import COCO_LAYOUT, MPII_LAYOUT

__all__ = ["FORMATS", "load_pose_dataset", "make_pose_loader", "split_indices"]

FORMATS = ("coco", "mpii")


def load_pose_dataset(fmt: str, ann_file: str, image_dir: str, **kwargs: Any) -> TopDownDataset:
    """A :class:`TopDownDataset` from a COCO keypoints json or an MPII json.

    ``kwargs`` go to :class:`TopDownDataset` (``input_size``, ``train``, ``sigma``, ...).
    The number of people skipped (crowd, no visible keypoint) is kept in ``.skipped``.
    Raises ``PoseAnnotationError`` when no person is left to use.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown pose data format {fmt!r}; choose one of {FORMATS}")
    reader, layout = (read_coco_keypoints, COCO_LAYOUT) if fmt == "coco" else (read_mpii_json, MPII_LAYOUT)
    records, skipped = reader(ann_file, image_dir)
    if not records:
        raise PoseAnnotationError(f"{ann_file} has no person with a visible keypoint ({skipped} skipped); "
                                  "nothing to train on or score")
    return TopDownDataset(records, layout, skipped=skipped, **kwargs)


def make_pose_loader(
    dataset: TopDownDataset,
    batch_size: int = 16,
    shuffle: bool = False,
    limit: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """Batches of ``(images, heatmaps, target_weight, meta)``; ``limit`` keeps the first people.

    The default collate stacks each ``meta`` field, so a batch's meta is a dict of tensors.
    """
    data = dataset if limit is None else Subset(dataset, range(min(limit, len(dataset))))
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator)


def split_indices(n: int, test_share: float) -> tuple[range, range]:
    """Deterministic (train, test) split of ``n`` people, test at the end."""
    n_test = max(1, int(round(n * test_share)))
    return range(n - n_test), range(n - n_test, n)
