"""Dilated ResNet and MobileNetV3 trunks for dense prediction, with a width option.

At their defaults they are torchvision's backbones exactly (same layers, same parameter
names, so torchvision checkpoints load); a smaller ``width`` / ``width_mult`` gives the
same architecture with fewer channels, cheap enough for CPU tests. torchvision is
imported when a trunk is built, not when this module is imported.
"""

from __future__ import annotations

from typing import Sequence, Tuple

from torch import Tensor, nn

__all__ = ["ResNetTrunk", "mobilenet_v3_large_features"]


class ResNetTrunk(nn.Module):
    """ResNet with bottleneck blocks, up to ``layer4`` (no pooling, no classifier).

    ``dilate`` replaces the stride of layers 2-4 by dilation, as torchvision's
    segmentation models do for layers 3 and 4 (output stride 8, not 32): the head sees
    a map 4x larger, at the same parameter count. Stages have ``width`` x (1, 2, 4, 8)
    bottleneck channels and 4x that at their output (``width=64``: ResNet-50's
    256-512-1024-2048).
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), width: int = 64,
                 dilate: Tuple[bool, bool, bool] = (False, True, True)) -> None:
        super().__init__()
        from torchvision.models.resnet import Bottleneck

        if width < 1 or len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"ResNetTrunk needs width >= 1 and four stage depths >= 1, got {width}, {layers}")
        self.inplanes, self.dilation = width, 1
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(Bottleneck, width, layers[0], 1, False)
        self.layer2 = self._stage(Bottleneck, 2 * width, layers[1], 2, dilate[0])
        self.layer3 = self._stage(Bottleneck, 4 * width, layers[2], 2, dilate[1])
        self.layer4 = self._stage(Bottleneck, 8 * width, layers[3], 2, dilate[2])
        self.out_channels = 8 * width * Bottleneck.expansion
        del self.inplanes, self.dilation  # construction state only
        for m in self.modules():  # He init for convs, identity BatchNorm (torchvision's)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, block: type, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:  # keep the resolution, widen the receptive field instead
            self.dilation *= stride
            stride = 1
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        layers = [block(self.inplanes, planes, stride, downsample, dilation=previous_dilation)]
        self.inplanes = out
        layers += [block(out, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def mobilenet_v3_large_features(width_mult: float = 1.0) -> Tuple[nn.Sequential, list[int]]:
    """torchvision's dilated MobileNetV3-Large feature layers (output stride 16) and the
    indices of its stage outputs (the first layer, each strided block, the last layer)."""
    from torchvision.models import mobilenet_v3_large

    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    features = mobilenet_v3_large(weights=None, width_mult=width_mult, dilated=True).features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    return features, stages
