"""MobileNetV2 for 32x32 inputs (CIFAR).

Same inverted-residual stages as the ImageNet model, but the stem and the second
stage use stride 1 instead of 2, so the total downsampling is 8x (32 -> 4 pixels)
instead of 32x (which would leave 1x1 feature maps after the fourth stage).
"""

from __future__ import annotations

from torch import Tensor, nn

from cv_tasks.registry import register_model

__all__ = ["ConvBNReLU6", "InvertedResidual", "CifarMobileNetV2", "cifar_mobilenetv2"]

# (expansion t, output channels c, repeats n, first stride s), as in the paper's
# Table 2, with the stride of the 24-channel stage lowered to 1 for 32x32 inputs.
_CIFAR_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """Conv (``groups`` for depthwise) + BatchNorm + ReLU6, 'same' padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class CifarMobileNetV2(nn.Module):
    """Stem, 17 inverted residuals, 1x1 conv to 1280 channels, pool, classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        in_channels = 32
        layers: list[nn.Module] = [ConvBNReLU6(3, in_channels, stride=1)]
        for t, c, n, s in _CIFAR_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(in_channels, c, s if i == 0 else 1, t))
                in_channels = c
        layers.append(ConvBNReLU6(in_channels, 1280, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


@register_model(task="image_classification", input_size=(1, 3, 32, 32))
def cifar_mobilenetv2(num_classes: int = 10) -> CifarMobileNetV2:
    """MobileNetV2 (width 1.0) for 32x32 inputs."""
    return CifarMobileNetV2(num_classes=num_classes)
