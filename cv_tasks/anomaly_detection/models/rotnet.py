"""A ResNet that predicts image rotations and scores anomalies by how badly it does.

Self-supervised one-class detection (Golan & El-Yaniv 2018, Hendrycks et al. 2019; the
original LegoDNN used ORNet, a one-class ResNet): trained on normal images only to tell
which of 0, 90, 180, 270 degrees an image was rotated by, the network learns the shapes
of normal images; on an anomalous image it is unsure. The scoring head is inside the
model:

* ``forward(x)`` rotates each image four times, classifies the ``4B`` images and returns,
  per image, the summed negative log-likelihood of the true rotations,
  ``-sum_r log p(r | rot_r(x))``, shape ``(B,)``: the image anomaly score;
* the training loss is ``forward(x).mean()`` (4 x the rotation cross-entropy).

``rotation_logits(x)`` gives the ``(4, B, 4)`` logits behind the score. It needs images
with an upright orientation (digits, objects): on a texture that looks the same rotated
by 90 degrees no rotation can be predicted and the score carries no signal (image AUROC
0.40 on the generated striped textures of ``synthetic.py``); use the autoencoder there.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from cv_tasks.anomaly_detection.models.input_checks import check_images
from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.image_classification.models.resnet import CifarResNet
from cv_tasks.registry import register_model

# fx records the check as one call on the input (it patches this module's globals while tracing)
torch.fx.wrap("check_images")

__all__ = ["RotationResNet", "rotation_resnet"]

NUM_ROTATIONS = 4


class RotationResNet(nn.Module):
    """A CIFAR-style ResNet (3x3 stem, four stages) with a 4-way rotation head.

    Square inputs only (a 90-degree rotation must keep the shape); any size the ResNet
    takes (it pools globally), e.g. 32x32 or 64x64.
    """

    def __init__(self, layers: Tuple[int, int, int, int] = (2, 2, 2, 2), base_width: int = 64) -> None:
        super().__init__()
        self.backbone = CifarResNet(tuple(layers), num_classes=NUM_ROTATIONS, base_width=base_width)  # type: ignore[arg-type]

    def rotation_logits(self, x: Tensor) -> Tensor:
        """Logits ``(4, B, 4)``: entry ``[r, b]`` classifies image ``b`` rotated by ``r`` x 90 degrees."""
        x = check_images(x, 1, True, "RotationResNet")
        rotated = torch.cat([torch.rot90(x, r, (2, 3)) for r in range(NUM_ROTATIONS)], 0)
        logits = self.backbone(rotated)
        return logits.reshape(NUM_ROTATIONS, x.shape[0], NUM_ROTATIONS)

    def forward(self, x: Tensor) -> Tensor:
        """Anomaly score ``(B,)``: the negative log-likelihood of the true rotations, summed."""
        log_p = self.rotation_logits(x).log_softmax(-1)
        return -torch.diagonal(log_p, dim1=0, dim2=2).sum(-1)


@register_model(task="anomaly_detection", input_size=(1, 3, 32, 32))
def rotation_resnet(
    layers: Tuple[int, int, int, int] = (2, 2, 2, 2),
    base_width: int = 64,
    weights_path: Optional[str] = None,
) -> RotationResNet:
    """Rotation-prediction ResNet-18 (``layers=(1, 1, 1, 1)`` and a small ``base_width`` for CPU
    tests); its output is the image anomaly score. ``weights_path`` loads a checkpoint."""
    model = RotationResNet(layers, base_width)
    if weights_path is not None:
        load_checkpoint(model, weights_path)
    return model
