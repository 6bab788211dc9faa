"""Object detectors (torchvision Faster R-CNN, FCOS); importing this registers them.

Only torch is imported here: the builders import torchvision when called.
"""

from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.object_detection.models.faster_rcnn import (
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet18_fpn,
    fasterrcnn_resnet50_fpn,
)
from cv_tasks.object_detection.models.fcos import fcos_mobilenet_v3_large_fpn

__all__ = [
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet18_fpn",
    "fasterrcnn_resnet50_fpn",
    "fcos_mobilenet_v3_large_fpn",
    "load_checkpoint",
]
