"""DeepPose-style regression (Toshev & Szegedy, CVPR 2014) on a ResNet trunk.

Pooled features go through one linear layer to K x 2 numbers: each joint's (x, y) as a
fraction of the crop's width and height, so the output is (N, K, 2) and needs no
heatmap decoding.
"""

from __future__ import annotations

from torch import Tensor, nn

from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.pose_estimation.models.backbone import ResNetTrunk
from cv_tasks.registry import register_model

__all__ = ["DeepPose", "deeppose_resnet"]


class DeepPose(nn.Module):
    """Backbone, global average pool, linear to ``num_joints`` x 2 normalised coordinates."""

    def __init__(self, num_joints: int = 17, depth: int = 18, base_width: int = 64) -> None:
        super().__init__()
        if num_joints < 1:
            raise ValueError(f"num_joints must be positive, got {num_joints}")
        self.num_joints = num_joints
        self.backbone = ResNetTrunk(depth, base_width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(self.backbone.out_channels, num_joints * 2)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.constant_(self.fc.bias, 0.5)  # start at the crop centre

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.backbone(x)))).unflatten(1, (self.num_joints, 2))


@register_model(task="pose_estimation", input_size=(1, 3, 256, 192))
def deeppose_resnet(num_joints: int = 17, depth: int = 18, base_width: int = 64,
                    weights_path: str | None = None) -> DeepPose:
    """DeepPose regression on a ResNet-``depth`` (18 or 34); output (N, K, 2) in [0, 1] of the crop."""
    model = DeepPose(num_joints, depth, base_width)
    return model if weights_path is None else load_checkpoint(model, weights_path)
