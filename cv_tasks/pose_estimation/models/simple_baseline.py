"""SimpleBaseline (Xiao et al., ECCV 2018): a ResNet and three stride-2 transposed convs.

The head upsamples the stride-32 features 8x, so the (N, K, H/4, W/4) output holds one
heatmap per joint; decoding the peak gives the joint's position.
"""

from __future__ import annotations

from torch import Tensor, nn

from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.pose_estimation.models.backbone import ResNetTrunk
from cv_tasks.registry import register_model

__all__ = ["SimpleBaseline", "simple_baseline_resnet"]


class SimpleBaseline(nn.Module):
    """Backbone, ``num_deconv`` x (4x4 transposed conv /2, BN, ReLU), 1x1 conv to joints."""

    def __init__(self, num_joints: int = 17, depth: int = 18, base_width: int = 64,
                 head_width: int = 256, num_deconv: int = 3) -> None:
        super().__init__()
        if num_joints < 1 or head_width < 1:
            raise ValueError(f"num_joints and head_width must be positive, got {num_joints}, {head_width}")
        self.backbone = ResNetTrunk(depth, base_width)
        layers, in_channels = [], self.backbone.out_channels
        for _ in range(num_deconv):
            layers += [nn.ConvTranspose2d(in_channels, head_width, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(head_width), nn.ReLU()]
            in_channels = head_width
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(in_channels, num_joints, 1)
        for m in self.deconv.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.final(self.deconv(self.backbone(x)))


@register_model(task="pose_estimation", input_size=(1, 3, 256, 192))
def simple_baseline_resnet(num_joints: int = 17, depth: int = 18, base_width: int = 64, head_width: int = 256,
                           weights_path: str | None = None) -> SimpleBaseline:
    """SimpleBaseline on a ResNet-``depth`` (18 or 34); 256x192 crops give 64x48 heatmaps."""
    model = SimpleBaseline(num_joints, depth, base_width, head_width)
    return model if weights_path is None else load_checkpoint(model, weights_path)
