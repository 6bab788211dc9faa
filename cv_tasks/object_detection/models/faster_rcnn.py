"""Faster R-CNN (two-stage) detectors from torchvision, with random or user weights.

torchvision builds the architecture; what this module adds is what a CPU test and a
user checkpoint need: a narrower box head (``representation_size``), the input
resolution (``min_size``/``max_size``) and strict loading from ``weights_path``. With
no pretrained weights every BatchNorm is trainable (not frozen), so pruned blocks can be
retrained. ``num_classes`` counts the background, as torchvision does (COCO: 91).
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.registry import register_model

__all__ = ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet50_fpn"]

_TASK = "object_detection"


def _check(num_classes: int, representation_size: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too, so it must be >= 2, got {num_classes}")
    if representation_size < 1:
        raise ValueError(f"representation_size must be a positive width, got {representation_size}")


def _faster_rcnn(backbone: nn.Module, num_classes: int, representation_size: int, weights_path: Optional[str],
                 anchor_generator: Any = None, **kwargs: Any) -> nn.Module:
    """The one place a Faster R-CNN is assembled: box head of the requested width, then weights."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead

    resolution = 7  # MultiScaleRoIAlign's output size in FasterRCNN
    box_head = TwoMLPHead(backbone.out_channels * resolution**2, representation_size)
    model = FasterRCNN(backbone, None, rpn_anchor_generator=anchor_generator, box_head=box_head,
                       box_predictor=FastRCNNPredictor(representation_size, num_classes), **kwargs)
    return load_checkpoint(model, weights_path) if weights_path is not None else model


def _resnet_fpn(depth: int, num_classes: int, representation_size: int, weights_path: Optional[str],
                **kwargs: Any) -> nn.Module:
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    _check(num_classes, representation_size)
    backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None, norm_layer=nn.BatchNorm2d,
                                   trainable_layers=5)
    return _faster_rcnn(backbone, num_classes, representation_size, weights_path, **kwargs)


@register_model("fasterrcnn_resnet50_fpn", task=_TASK, input_size=(1, 3, 800, 800))
def fasterrcnn_resnet50_fpn(num_classes: int = 91, weights_path: Optional[str] = None, *, min_size: int = 800,
                            max_size: int = 1333, representation_size: int = 1024, **kwargs: Any) -> nn.Module:
    """Faster R-CNN, ResNet-50 FPN backbone (Ren et al. 2015; Lin et al. 2017): torchvision's layout.

    ``kwargs`` go to ``torchvision.models.detection.FasterRCNN`` (e.g. ``box_score_thresh``).
    """
    return _resnet_fpn(50, num_classes, representation_size, weights_path, min_size=min_size,
                       max_size=max_size, **kwargs)


@register_model("fasterrcnn_resnet18_fpn", task=_TASK, input_size=(1, 3, 800, 800))
def fasterrcnn_resnet18_fpn(num_classes: int = 91, weights_path: Optional[str] = None, *, min_size: int = 800,
                            max_size: int = 1333, representation_size: int = 1024, **kwargs: Any) -> nn.Module:
    """The ResNet-50 FPN Faster R-CNN with a ResNet-18 backbone: the same graph shapes
    (FPN, RPN, RoI heads), a fifth of the backbone cost; what the CPU tests run."""
    return _resnet_fpn(18, num_classes, representation_size, weights_path, min_size=min_size,
                       max_size=max_size, **kwargs)


@register_model("fasterrcnn_mobilenet_v3_large_fpn", task=_TASK, input_size=(1, 3, 800, 800))
def fasterrcnn_mobilenet_v3_large_fpn(num_classes: int = 91, weights_path: Optional[str] = None, *,
                                      min_size: int = 800, max_size: int = 1333, representation_size: int = 1024,
                                      width_mult: float = 1.0, **kwargs: Any) -> nn.Module:
    """Faster R-CNN on a MobileNetV3-Large FPN backbone, as torchvision builds it
    (anchors of 32-512 px at 3 aspect ratios on each of the 3 levels).

    ``width_mult`` scales the MobileNetV3 channels (1.0 is the standard network).
    """
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    _check(num_classes, representation_size)
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    trunk = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d, width_mult=width_mult)
    backbone = _mobilenet_extractor(trunk, True, 6)
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    return _faster_rcnn(backbone, num_classes, representation_size, weights_path, anchor_generator=anchors,
                        min_size=min_size, max_size=max_size, **kwargs)
