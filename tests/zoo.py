"""Models the block manager tests run on: cv_tasks models, torchvision models, odd styles."""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class FunctionalNet(nn.Module):
    """Written with functional ops: F.relu, +, torch.cat, flatten, a module called twice."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a1 = nn.Conv2d(16, 32, 3, padding=1)
        self.a2 = nn.Conv2d(32, 16, 3, padding=1)
        self.b1 = nn.Conv2d(16, 24, 1)
        self.b2 = nn.Conv2d(24, 16, 3, padding=1)
        self.shared = nn.Conv2d(32, 32, 3, padding=1)  # called twice
        self.mid = nn.Conv2d(32, 32, 1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = x + self.a2(F.relu(self.a1(x)))
        y = torch.cat([x, self.b2(F.relu(self.b1(x)))], dim=1)
        y = F.max_pool2d(y, 2)
        y = F.relu(self.shared(y))
        y = F.relu(self.mid(y))
        y = F.relu(self.shared(y))
        y = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        return self.head(y)


class MyConv(nn.Conv2d):
    """A subclassed conv layer: must stay one prunable leaf."""


def sequential_net(num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        MyConv(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6(),
        nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes),
    )


def conv1d_net(num_classes: int = 10) -> nn.Sequential:
    """A 1-D (audio / sensor style) network: Conv1d + BatchNorm1d blocks."""
    return nn.Sequential(
        nn.Conv1d(4, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Conv1d(16, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


def _tv(name: str, **kw) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(**kw)

    return build


def _resnext_tiny() -> nn.Module:
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], groups=32, width_per_group=4, num_classes=10)


def _frcnn() -> nn.Module:
    import torchvision

    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128
    )


def _cv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from cv_tasks import get_model

        return get_model(name)

    return build


# name -> (builder, model_input_size)
MODELS: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, ...]]] = {
    "cifar_resnet18": (_cv("cifar_resnet18"), (1, 3, 32, 32)),
    "cifar_vgg16": (_cv("cifar_vgg16"), (1, 3, 32, 32)),
    "cifar_mobilenetv2": (_cv("cifar_mobilenetv2"), (1, 3, 32, 32)),
    "cifar_densenet_tiny": (_cv("cifar_densenet_tiny"), (1, 3, 32, 32)),
    "tiny_encoder_decoder": (_cv("tiny_encoder_decoder"), (1, 3, 64, 64)),
    "c3d_tiny": (_cv("c3d_tiny"), (1, 3, 8, 32, 32)),
    "tv_resnet18": (_tv("resnet18", num_classes=10), (1, 3, 64, 64)),
    "tv_resnet50": (_tv("resnet50", num_classes=10), (1, 3, 64, 64)),
    "tv_mobilenet_v2": (_tv("mobilenet_v2", num_classes=10), (1, 3, 64, 64)),
    "tv_resnext_tiny": (_resnext_tiny, (1, 3, 64, 64)),
    "functional": (FunctionalNet, (1, 3, 32, 32)),
    "sequential": (sequential_net, (1, 3, 32, 32)),
    "conv1d": (conv1d_net, (1, 4, 64)),
    "frcnn_mobilenet_v3": (_frcnn, (1, 3, 128, 128)),
}


# a tiny ResNeXt has 17 convs: at ratio 0.125 a block may hold 2, fewer than one bottleneck
RATIOS: Dict[str, float] = {"tv_resnext_tiny": 0.25}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[name][0]().eval()
    _randomize_bn(model)
    return model


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so a wrong channel slice changes the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def flat_outputs(out) -> list:
    """Tensors of a model output (a tensor, a dict, a list of dicts for detectors)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in flat_outputs(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flat_outputs(v)]
    return []
