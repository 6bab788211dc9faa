"""Pose estimation models; importing this registers them (torch only: torchvision is
imported when a Keypoint R-CNN is built)."""

from cv_tasks.pose_estimation.models.deeppose import DeepPose, deeppose_resnet
from cv_tasks.pose_estimation.models.keypoint_rcnn import keypoint_rcnn_resnet_fpn
from cv_tasks.pose_estimation.models.simple_baseline import SimpleBaseline, simple_baseline_resnet

__all__ = ["DeepPose", "SimpleBaseline", "deeppose_resnet", "keypoint_rcnn_resnet_fpn", "simple_baseline_resnet"]
