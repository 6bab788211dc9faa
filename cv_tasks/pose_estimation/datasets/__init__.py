"""Pose data: COCO person keypoints and MPII json, top-down crops, synthetic stick figures."""

from cv_tasks.pose_estimation.datasets.base import PersonRecord, TopDownDataset
from cv_tasks.pose_estimation.datasets.coco import read_coco_keypoints
from cv_tasks.pose_estimation.datasets.errors import (
    CorruptImageError,
    DatasetNotFoundError,
    PoseAnnotationError,
)
from cv_tasks.pose_estimation.datasets.loaders import FORMATS, load_pose_dataset, make_pose_loader
from cv_tasks.pose_estimation.datasets.mpii import read_mpii_json
from cv_tasks.pose_estimation.datasets.synthetic import SyntheticPosePaths, write_synthetic_pose_set

__all__ = [
    "FORMATS",
    "CorruptImageError",
    "DatasetNotFoundError",
    "PersonRecord",
    "PoseAnnotationError",
    "SyntheticPosePaths",
    "TopDownDataset",
    "load_pose_dataset",
    "make_pose_loader",
    "read_coco_keypoints",
    "read_mpii_json",
    "write_synthetic_pose_set",
]
