"""A tiny 3D-conv clip classifier, the action-recognition model of the test zoo.

Small enough to run in tests, yet it has what block extraction must handle for
video: ``Conv3d``/``BatchNorm3d`` stages, temporal and spatial striding, and a
residual stage whose shortcut is a 1x1x1 conv. Input: ``(N, 3, T, H, W)``.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from cv_tasks.checkpoints import load_checkpoint as load_weights_file
from cv_tasks.registry import register_model

__all__ = ["BasicBlock3d", "C3DTiny", "Conv3dBNReLU", "c3d_tiny"]


class Conv3dBNReLU(nn.Sequential):
    """3x3x3 Conv3d + BatchNorm3d + ReLU, 'same' padding."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: tuple[int, int, int] = (1, 1, 1)
    ) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(),
        )


class BasicBlock3d(nn.Module):
    """Two 3x3x3 convs with a 1x1x1 conv shortcut (the shape always changes here)."""

    def __init__(self, in_channels: int, channels: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(channels)
        self.downsample = nn.Sequential(
            nn.Conv3d(in_channels, channels, 1, stride=stride, bias=False),
            nn.BatchNorm3d(channels),
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class C3DTiny(nn.Module):
    """Two plain 3D-conv stages, one residual stage, global pooling, classifier.

    With an ``(N, 3, 8, 32, 32)`` clip the stages see 8x32x32, 8x16x16 and 4x8x8.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = Conv3dBNReLU(3, 16)
        self.pool1 = nn.MaxPool3d((1, 2, 2))
        self.stage2 = Conv3dBNReLU(16, 32)
        self.stage3 = BasicBlock3d(32, 64, stride=(2, 2, 2))
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.pool1(self.stem(x))))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model(task="action_recognition", input_size=(1, 3, 8, 32, 32))
def c3d_tiny(num_classes: int = 10, weights_path: Optional[str] = None) -> C3DTiny:
    """Tiny C3D-style classifier for ``(N, 3, T, H, W)`` clips, e.g. 8 frames of 32x32."""
    model = C3DTiny(num_classes=num_classes)
    return model if weights_path is None else load_weights_file(model, weights_path)
