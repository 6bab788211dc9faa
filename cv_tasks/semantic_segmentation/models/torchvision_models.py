"""FCN, DeepLabV3 and LR-ASPP (torchvision's designs) as registered legodnn models.

Each builder returns a :class:`Segmenter` / :class:`LiteSegmenter` (one logits tensor
out, no auxiliary head; see ``segmenter.py`` for why). At the default width they have
torchvision's architecture and parameter names, so a checkpoint trained with
``torchvision.models.segmentation`` loads through ``weights_path``. ``width`` (ResNet)
and ``width_mult`` (MobileNetV3) shrink every layer, and ``layers`` the ResNet depth,
for CPU tests and demos; the head's channels shrink with them.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.registry import register_model
from cv_tasks.semantic_segmentation.models.backbones import ResNetTrunk, mobilenet_v3_large_features
from cv_tasks.semantic_segmentation.models.segmenter import LiteSegmenter, Segmenter

__all__ = [
    "deeplab_head",
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "fcn_resnet50",
    "lraspp_mobilenet_v3_large",
]

#: any H, W work (logits come back at the input size); 64x64 keeps the registry-wide CPU
#: tests of these 11-40 M-parameter models short. Real use: VOC-style 520x520 crops.
_INPUT_SIZE = (1, 3, 64, 64)
_TASK = "semantic_segmentation"
_ATROUS_RATES = (12, 24, 36)


def _channels(base: int, mult: float) -> int:
    """``base * mult`` rounded to a multiple of 8 (at least 8), as MobileNet widths are."""
    return max(8, int(base * mult + 4) // 8 * 8)


def _finish(model: nn.Module, weights_path: Optional[str]) -> nn.Module:
    if weights_path is None:
        return model
    # torchvision's checkpoints carry the auxiliary head, which only adds a training loss
    return load_checkpoint(model, weights_path, drop_prefixes=("aux_classifier.",))


def _check_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background and at least one class), got {num_classes}")


def deeplab_head(in_channels: int, num_classes: int, channels: int = 256,
                 atrous_rates: Sequence[int] = _ATROUS_RATES) -> nn.Sequential:
    """torchvision's ``DeepLabHead`` (ASPP, 3x3 conv, 1x1 classifier) with ``channels``
    in place of its fixed 256, laid out identically so its checkpoints load."""
    from torchvision.models.segmentation.deeplabv3 import ASPP

    return nn.Sequential(
        ASPP(in_channels, list(atrous_rates), channels),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, num_classes, 1),
    )


@register_model(task=_TASK, input_size=_INPUT_SIZE)
def fcn_resnet50(num_classes: int = 21, weights_path: Optional[str] = None, *, width: int = 64,
                 layers: Sequence[int] = (3, 4, 6, 3)) -> Segmenter:
    """FCN-ResNet50: dilated ResNet-50 (output stride 8) and a 3x3-conv + 1x1 head."""
    from torchvision.models.segmentation.fcn import FCNHead

    _check_classes(num_classes)
    trunk = ResNetTrunk(layers, width)
    return _finish(Segmenter(trunk, FCNHead(trunk.out_channels, num_classes)), weights_path)


@register_model(task=_TASK, input_size=_INPUT_SIZE)
def deeplabv3_resnet50(num_classes: int = 21, weights_path: Optional[str] = None, *, width: int = 64,
                       layers: Sequence[int] = (3, 4, 6, 3)) -> Segmenter:
    """DeepLabV3-ResNet50: dilated ResNet-50 and an ASPP head with ``4 * width`` channels."""
    _check_classes(num_classes)
    trunk = ResNetTrunk(layers, width)
    head = deeplab_head(trunk.out_channels, num_classes, 4 * width)
    return _finish(Segmenter(trunk, head), weights_path)


@register_model(task=_TASK, input_size=_INPUT_SIZE)
def deeplabv3_mobilenet_v3_large(num_classes: int = 21, weights_path: Optional[str] = None, *,
                                 width_mult: float = 1.0) -> Segmenter:
    """DeepLabV3 on a dilated MobileNetV3-Large (output stride 16), torchvision's layout."""
    _check_classes(num_classes)
    features, stages = mobilenet_v3_large_features(width_mult)
    backbone = features[: stages[-1] + 1]
    head = deeplab_head(backbone[-1].out_channels, num_classes, _channels(256, width_mult))
    return _finish(Segmenter(backbone, head), weights_path)


@register_model(task=_TASK, input_size=_INPUT_SIZE)
def lraspp_mobilenet_v3_large(num_classes: int = 21, weights_path: Optional[str] = None, *,
                              width_mult: float = 1.0) -> LiteSegmenter:
    """LR-ASPP on MobileNetV3-Large: a stride-16 branch gated by global context, plus a
    stride-8 shortcut; the lightest of the four."""
    from torchvision.models.segmentation.lraspp import LRASPPHead

    _check_classes(num_classes)
    features, stages = mobilenet_v3_large_features(width_mult)
    low, high = stages[-4], stages[-1]
    backbone = features[: high + 1]
    head = LRASPPHead(backbone[low].out_channels, backbone[high].out_channels, num_classes,
                      _channels(128, width_mult))
    return _finish(LiteSegmenter(backbone, head, low), weights_path)
