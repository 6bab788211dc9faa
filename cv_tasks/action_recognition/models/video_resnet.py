"""R3D-18 and R(2+1)D-18 (Tran et al., CVPR 2018), the 3D ResNets of torchvision, with a width option.

The module names follow ``torchvision.models.video.VideoResNet`` exactly, so at the
standard width (``base_width=64``) a torchvision state dict (e.g. Kinetics-400 weights a
user saved) loads through ``weights_path``. A narrower ``base_width`` makes them fit CPU
tests. Unlike torchvision, every ReLU is its own non in-place module: block extraction
captures activations, and an in-place ReLU would overwrite a captured tensor.
Input: ``(N, 3, T, H, W)`` clips; output: ``(N, num_classes)`` logits.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from torch import Tensor, nn

from cv_tasks.checkpoints import load_checkpoint as load_weights_file
from cv_tasks.registry import register_model

__all__ = [
    "VideoBasicBlock", "VideoResNet", "conv2plus1d", "conv3d_simple", "r2plus1d_18", "r3d_18",
]

# 8 frames of 56x56 keep CPU tests quick; Kinetics clips are 16x112x112, and any T, H, W >= 16 work
INPUT_SIZE = (1, 3, 8, 56, 56)

ConvMaker = Callable[[int, int, int, int], nn.Module]


def conv3d_simple(in_planes: int, out_planes: int, mid_planes: int, stride: int = 1) -> nn.Module:
    """A full 3x3x3 convolution (R3D); ``mid_planes`` is unused."""
    del mid_planes
    return nn.Conv3d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv2plus1d(in_planes: int, out_planes: int, mid_planes: int, stride: int = 1) -> nn.Module:
    """A 1x3x3 spatial conv, BN, ReLU, then a 3x1x1 temporal conv (R(2+1)D)."""
    return nn.Sequential(
        nn.Conv3d(in_planes, mid_planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
        nn.BatchNorm3d(mid_planes),
        nn.ReLU(),
        nn.Conv3d(mid_planes, out_planes, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
    )


class VideoBasicBlock(nn.Module):
    """Two (2+1)D or 3D convs plus a shortcut (a 1x1x1 conv when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, conv_maker: ConvMaker, stride: int = 1) -> None:
        super().__init__()
        # torchvision's choice: the (2+1)D factorisation keeps the parameters of a 3x3x3 conv
        mid = (in_planes * planes * 27) // (in_planes * 9 + 3 * planes)
        self.conv1 = nn.Sequential(conv_maker(in_planes, planes, mid, stride), nn.BatchNorm3d(planes), nn.ReLU())
        self.conv2 = nn.Sequential(conv_maker(planes, planes, mid, 1), nn.BatchNorm3d(planes))
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm3d(planes)
            )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _stem(kind: str, width: int) -> nn.Sequential:
    if kind == "r3d":
        return nn.Sequential(
            nn.Conv3d(3, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(),
        )
    mid = 45 if width == 64 else max(1, round(45 * width / 64))  # torchvision's 45 at full width
    return nn.Sequential(
        nn.Conv3d(3, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(),
        nn.Conv3d(mid, width, (3, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(),
    )


class VideoResNet(nn.Module):
    """Stem, four stages of ``VideoBasicBlock`` with ``base_width`` x (1, 2, 4, 8) channels, pool, fc.

    ``kind`` is ``"r3d"`` (3x3x3 convs) or ``"r2plus1d"`` ((2+1)D convs).
    """

    def __init__(
        self,
        kind: str = "r3d",
        layers: Tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 400,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        makers = {"r3d": conv3d_simple, "r2plus1d": conv2plus1d}
        if kind not in makers:
            raise ValueError(f"kind must be one of {sorted(makers)}, got {kind!r}")
        if base_width < 1 or num_classes < 1:
            raise ValueError(f"base_width and num_classes must be positive, got {base_width} and {num_classes}")
        self.stem = _stem(kind, base_width)
        in_planes = base_width
        stages = []
        for mult, blocks, stride in zip((1, 2, 4, 8), layers, (1, 2, 2, 2)):
            planes = base_width * mult
            stage = []
            for i in range(blocks):
                stage.append(VideoBasicBlock(in_planes, planes, makers[kind], stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model(task="action_recognition", input_size=INPUT_SIZE)
def r3d_18(num_classes: int = 400, base_width: int = 64, weights_path: Optional[str] = None) -> VideoResNet:
    """R3D-18 (torchvision's ``r3d_18(weights=None)`` at ``base_width=64``)."""
    model = VideoResNet("r3d", (2, 2, 2, 2), num_classes=num_classes, base_width=base_width)
    return model if weights_path is None else load_weights_file(model, weights_path)


@register_model(task="action_recognition", input_size=INPUT_SIZE)
def r2plus1d_18(num_classes: int = 400, base_width: int = 64, weights_path: Optional[str] = None) -> VideoResNet:
    """R(2+1)D-18 (torchvision's ``r2plus1d_18(weights=None)`` at ``base_width=64``)."""
    model = VideoResNet("r2plus1d", (2, 2, 2, 2), num_classes=num_classes, base_width=base_width)
    return model if weights_path is None else load_weights_file(model, weights_path)
