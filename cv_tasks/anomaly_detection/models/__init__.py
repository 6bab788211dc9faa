"""Anomaly detection models; importing this registers them.

Each model's forward returns its anomaly score (an ``(B, 1, H, W)`` map or ``(B,)``
scores), so the score is part of the model legodnn cuts into blocks and hot-swaps.
"""

from cv_tasks.anomaly_detection.models.autoencoder import ConvAutoencoder, conv_autoencoder
from cv_tasks.anomaly_detection.models.rotnet import RotationResNet, rotation_resnet
from cv_tasks.checkpoints import load_checkpoint

__all__ = ["ConvAutoencoder", "RotationResNet", "conv_autoencoder", "load_checkpoint", "rotation_resnet"]
