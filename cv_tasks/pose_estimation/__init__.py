"""Pose estimation: SimpleBaseline, DeepPose and Keypoint R-CNN models, COCO keypoints and
MPII data, PCK / PCKh / keypoint AP, and the model manager legodnn runs them with.

Only the models are imported here (torch only); ``datasets``, ``metrics`` and
``model_manager`` are imported where used, as they need OpenCV and pycocotools.
"""

from cv_tasks.pose_estimation import models

__all__ = ["models"]
