"""FCOS (Tian et al. 2019), a single-stage anchor-free detector, on a MobileNetV3-Large FPN.

torchvision's FCOS head and loss on a light backbone: stride 8, 16 and 32 features of
MobileNetV3-Large, an FPN, and P6/P7 from P5, so five levels as in the paper. The head's
towers (4 conv + GroupNorm + ReLU per branch, shared across levels) take one tensor and
trace with torch.fx, so they become blocks alongside the backbone; the per-level loop,
point generation, box decoding and NMS stay in the frame.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.registry import register_model

__all__ = ["fcos_mobilenet_v3_large_fpn"]

# MobileNetV3-Large stage outputs at strides 8, 16 and 32 (see _mobilenet_extractor)
_RETURNED_LAYERS = [2, 3, 5]
_STRIDES = (8, 16, 32, 64, 128)


@register_model("fcos_mobilenet_v3_large_fpn", task="object_detection", input_size=(1, 3, 800, 800))
def fcos_mobilenet_v3_large_fpn(num_classes: int = 91, weights_path: Optional[str] = None, *, min_size: int = 800,
                                max_size: int = 1333, width_mult: float = 1.0, **kwargs: Any) -> nn.Module:
    """FCOS with a MobileNetV3-Large FPN backbone; ``num_classes`` counts the background.

    ``width_mult`` scales the MobileNetV3 channels; ``kwargs`` go to
    ``torchvision.models.detection.FCOS`` (e.g. ``score_thresh``).
    """
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor
    from torchvision.models.detection.fcos import FCOS
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too, so it must be >= 2, got {num_classes}")
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    trunk = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d, width_mult=width_mult)
    backbone = _mobilenet_extractor(trunk, True, 6, returned_layers=_RETURNED_LAYERS,
                                    extra_blocks=LastLevelP6P7(256, 256))
    anchors = AnchorGenerator(tuple((s,) for s in _STRIDES), ((1.0,),) * len(_STRIDES))
    model = FCOS(backbone, num_classes, min_size=min_size, max_size=max_size, anchor_generator=anchors, **kwargs)
    return load_checkpoint(model, weights_path) if weights_path is not None else model
