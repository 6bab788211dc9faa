"""ResNet-18/34 for 32x32 inputs (CIFAR): a 3x3 stem and no max-pool.

The ImageNet stem (7x7 stride-2 conv + max-pool) would shrink a 32x32 image to 8x8
before the first stage; here the stages see 32, 16, 8 and 4 pixels.
"""

from __future__ import annotations

from torch import Tensor, nn

from cv_tasks.registry import register_model

__all__ = ["BasicBlock", "CifarResNet", "cifar_resnet18", "cifar_resnet34"]

_INPUT_SIZE = (1, 3, 32, 32)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut; a 1x1 conv shortcut when the shape changes.

    Each ReLU is its own (non in-place) module, so every activation is a distinct
    graph node and a captured tensor is never overwritten later.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """Stem, four stages of ``BasicBlock``, pool, classifier.

    The stages have ``base_width`` x (1, 2, 4, 8) channels: 64-128-256-512 by default.
    A narrower network (``base_width=16``: 16-32-64-128) has about 1/16 of the FLOPs and
    parameters, which makes it trainable on a CPU in minutes.
    """

    def __init__(self, layers: tuple[int, int, int, int], num_classes: int = 10, base_width: int = 64) -> None:
        super().__init__()
        if base_width < 1:
            raise ValueError(f"base_width must be a positive number of channels, got {base_width}")
        widths = tuple(base_width * m for m in (1, 2, 4, 8))
        self.conv1 = nn.Conv2d(3, base_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU()
        in_channels = base_width
        stages = []
        for channels, blocks, stride in zip(widths, layers, (1, 2, 2, 2)):
            stage = []
            for i in range(blocks):
                stage.append(BasicBlock(in_channels, channels, stride if i == 0 else 1))
                in_channels = channels
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _init_weights(model: nn.Module) -> None:
    """He initialisation for convs (as torchvision's ResNet); BatchNorm starts as identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_model(task="image_classification", input_size=_INPUT_SIZE)
def cifar_resnet18(num_classes: int = 10, base_width: int = 64) -> CifarResNet:
    """ResNet-18 (2-2-2-2 basic blocks) for 32x32 inputs; ``base_width`` channels in the first stage."""
    return CifarResNet((2, 2, 2, 2), num_classes=num_classes, base_width=base_width)


@register_model(task="image_classification", input_size=_INPUT_SIZE)
def cifar_resnet34(num_classes: int = 10, base_width: int = 64) -> CifarResNet:
    """ResNet-34 (3-4-6-3 basic blocks) for 32x32 inputs; ``base_width`` channels in the first stage."""
    return CifarResNet((3, 4, 6, 3), num_classes=num_classes, base_width=base_width)
