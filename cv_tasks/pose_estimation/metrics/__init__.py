"""Pose metrics: PCK / PCKh and COCO keypoint AP."""

from cv_tasks.pose_estimation.metrics.coco_ap import KeypointAPAccumulator, keypoint_ap
from cv_tasks.pose_estimation.metrics.pck import PCKAccumulator, pck, pck_counts

__all__ = ["KeypointAPAccumulator", "PCKAccumulator", "keypoint_ap", "pck", "pck_counts"]
