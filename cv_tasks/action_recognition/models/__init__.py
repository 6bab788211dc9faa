"""Action-recognition models; importing this registers them (torch only, no torchvision)."""

from cv_tasks.action_recognition.models.c3d import C3DTiny, c3d_tiny
from cv_tasks.action_recognition.models.tsn import TSNResNet, tsn_resnet18
from cv_tasks.action_recognition.models.video_resnet import VideoResNet, r2plus1d_18, r3d_18
from cv_tasks.checkpoints import load_checkpoint as load_weights_file

__all__ = [
    "C3DTiny",
    "TSNResNet",
    "VideoResNet",
    "c3d_tiny",
    "load_weights_file",
    "r2plus1d_18",
    "r3d_18",
    "tsn_resnet18",
]
