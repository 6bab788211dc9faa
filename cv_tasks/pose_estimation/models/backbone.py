"""ResNet-18/34 feature extractor with the ImageNet stem (output stride 32), any width.

The pose heads need the feature map, not a class score, so this is the convolutional
trunk only. ``base_width=64`` is the standard network; a narrower one (e.g. 16) is what
makes CPU tests and demos fast.
"""

from __future__ import annotations

from torch import Tensor, nn

from cv_tasks.image_classification.models.resnet import BasicBlock

__all__ = ["RESNET_LAYERS", "ResNetTrunk"]

RESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class ResNetTrunk(nn.Module):
    """7x7/2 conv, 3x3/2 max-pool, four stages of basic blocks; ``out_channels`` = 8 x width."""

    def __init__(self, depth: int = 18, base_width: int = 64) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        if base_width < 1:
            raise ValueError(f"base_width must be a positive number of channels, got {base_width}")
        layers: tuple[int, ...] = RESNET_LAYERS[depth]
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, in_channels = [], base_width
        for i, blocks in enumerate(layers):
            channels = base_width * 2 ** i
            stage = [BasicBlock(in_channels if b == 0 else channels, channels, (1 if i == 0 else 2) if b == 0 else 1)
                     for b in range(blocks)]
            in_channels = channels
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
