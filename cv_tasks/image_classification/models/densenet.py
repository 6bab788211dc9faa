"""A small DenseNet-BC for 32x32 inputs (CIFAR).

Kept in the zoo because its dense layers concatenate their input with their output
(``torch.cat([x, new], 1)``): a block's output channels include its input's, which
exercises block extraction and channel pruning on a topology unlike ResNet's.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from cv_tasks.registry import register_model

__all__ = ["DenseLayer", "Transition", "CifarDenseNet", "cifar_densenet_tiny"]


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck) - BN-ReLU-3x3 conv, concatenated to the input."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int = 4) -> None:
        super().__init__()
        hidden = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(hidden, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        new = self.conv1(self.relu1(self.norm1(x)))
        new = self.conv2(self.relu2(self.norm2(new)))
        return torch.cat([x, new], 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv to ``out_channels`` then 2x2 average pooling: halves H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class CifarDenseNet(nn.Module):
    """3x3 stem, dense blocks separated by compressing transitions, BN-ReLU, pool, fc."""

    def __init__(
        self,
        growth_rate: int = 12,
        block_config: tuple[int, ...] = (4, 4, 4),
        bn_size: int = 4,
        compression: float = 0.5,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        channels = 2 * growth_rate
        features: list[tuple[str, nn.Module]] = [
            ("conv0", nn.Conv2d(3, channels, 3, padding=1, bias=False)),
        ]
        for i, num_layers in enumerate(block_config):
            block = []
            for _ in range(num_layers):
                block.append(DenseLayer(channels, growth_rate, bn_size))
                channels += growth_rate
            features.append((f"denseblock{i + 1}", nn.Sequential(*block)))
            if i != len(block_config) - 1:
                out_channels = int(channels * compression)
                features.append((f"transition{i + 1}", Transition(channels, out_channels)))
                channels = out_channels
        features += [("norm5", nn.BatchNorm2d(channels)), ("relu5", nn.ReLU())]
        self.features = nn.Sequential(OrderedDict(features))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


@register_model(task="image_classification", input_size=(1, 3, 32, 32))
def cifar_densenet_tiny(num_classes: int = 10) -> CifarDenseNet:
    """DenseNet-BC, growth 12, three dense blocks of 4 layers (~0.1 M parameters)."""
    return CifarDenseNet(growth_rate=12, block_config=(4, 4, 4), num_classes=num_classes)
