"""VGG-16 with BatchNorm for 32x32 inputs (CIFAR).

Five max-pools take 32x32 to 1x1, so the three 4096-wide ImageNet FC layers are
replaced by one ``Linear(512, num_classes)``, as is usual for CIFAR.
"""

from __future__ import annotations

from torch import Tensor, nn

from cv_tasks.registry import register_model

__all__ = ["CifarVGG", "make_vgg_features", "VGG16_CFG", "cifar_vgg16"]

# Output channels of each 3x3 conv; "M" is a 2x2 max-pool.
# fmt: off
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)
# fmt: on


def make_vgg_features(cfg: tuple[int | str, ...], in_channels: int = 3) -> nn.Sequential:
    """Conv-BN-ReLU and max-pool layers described by ``cfg``."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif isinstance(v, int):
            layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            in_channels = v
        else:
            raise ValueError(f"bad VGG cfg entry {v!r}: expected an int or 'M'")
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """``features`` (conv stack) followed by a single linear classifier."""

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int = 10) -> None:
        super().__init__()
        self.features = make_vgg_features(cfg)
        last_channels = [v for v in cfg if isinstance(v, int)][-1]
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.features(x)))


@register_model(task="image_classification", input_size=(1, 3, 32, 32))
def cifar_vgg16(num_classes: int = 10) -> CifarVGG:
    """VGG-16-BN for 32x32 inputs."""
    return CifarVGG(VGG16_CFG, num_classes=num_classes)
