"""TSN (Wang et al., ECCV 2016): a 2D ResNet-18 applied to each sampled frame, logits averaged.

The clip ``(N, 3, T, H, W)`` is folded into ``N * T`` frames, each frame is classified
by the same 2D network, and the segmental consensus is the mean of the ``T`` frame
logits. The ``T`` frames are the TSN segments picked by the data loader (one per
segment). Module names follow ``torchvision.models.resnet18``, so at ``base_width=64`` a
torchvision ResNet-18 state dict (e.g. ImageNet weights a user saved, with a matching
``num_classes``) loads through ``weights_path``.
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn

from cv_tasks.checkpoints import load_checkpoint as load_weights_file
from cv_tasks.image_classification.models.resnet import BasicBlock
from cv_tasks.registry import register_model

__all__ = ["TSNResNet", "tsn_resnet18"]

INPUT_SIZE = (1, 3, 8, 112, 112)  # 8 segments of 112x112; any T, H, W >= 32 work


class TSNResNet(nn.Module):
    """ImageNet-style ResNet (7x7 stride-2 stem, max-pool, four stages) over frames, mean consensus."""

    def __init__(
        self, layers: Tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = 400, base_width: int = 64
    ) -> None:
        super().__init__()
        if base_width < 1 or num_classes < 1:
            raise ValueError(f"base_width and num_classes must be positive, got {base_width} and {num_classes}")
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = base_width
        stages = []
        for mult, blocks, stride in zip((1, 2, 4, 8), layers, (1, 2, 2, 2)):
            stage = []
            for i in range(blocks):
                stage.append(BasicBlock(in_planes, base_width * mult, stride if i == 0 else 1))
                in_planes = base_width * mult
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        frames = x.transpose(1, 2).flatten(0, 1)  # (N, C, T, H, W) -> (N*T, C, H, W)
        y = self.maxpool(self.relu(self.bn1(self.conv1(frames))))
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        logits = self.fc(self.flatten(self.avgpool(y)))
        return logits.reshape(n, -1, logits.shape[-1]).mean(1)  # segmental consensus


@register_model(task="action_recognition", input_size=INPUT_SIZE)
def tsn_resnet18(
    num_classes: int = 400, base_width: int = 64, weights_path: Optional[str] = None
) -> TSNResNet:
    """TSN with a ResNet-18 backbone; ``base_width`` channels in its first stage (64 as torchvision)."""
    model = TSNResNet((2, 2, 2, 2), num_classes=num_classes, base_width=base_width)
    return model if weights_path is None else load_weights_file(model, weights_path)
