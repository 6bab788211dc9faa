"""Segmenters that return one logits tensor, the form legodnn and the metric work with.

torchvision's segmentation models return ``OrderedDict(out=..., aux=...)``. Here the
same backbones and heads are assembled into modules whose forward returns the "out"
logits ``(N, num_classes, H, W)`` directly, and the auxiliary head is left out:

- it only feeds an extra training loss, so at inference it is dead weight (an FCN aux
  head on ResNet-50 is 2.4 M parameters computed and thrown away);
- a tensor output lets every legodnn stage (block capture, replay, the hot-swapped live
  model) and every test treat segmentation like any dense-prediction model, with no
  dict handling in the core;
- the submodule names stay those of torchvision (``backbone.*``, ``classifier.*``), so
  torchvision checkpoints load (their ``aux_classifier.*`` keys are skipped).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Segmenter", "LiteSegmenter"]


class Segmenter(nn.Module):
    """``backbone`` (image -> one feature map) -> ``classifier`` (-> class logits),
    upsampled bilinearly to the input size: the FCN and DeepLabV3 design."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class LiteSegmenter(nn.Module):
    """LR-ASPP: the head reads a low-level (stride 8) and a high-level (stride 16)
    feature map of one sequential backbone.

    ``backbone`` is an ``nn.Sequential``; the output of layer ``low_index`` is the
    low-level map and that of its last layer the high-level one. ``classifier`` takes
    ``{"low": ..., "high": ...}`` as torchvision's ``LRASPPHead`` does.
    """

    def __init__(self, backbone: nn.Sequential, classifier: nn.Module, low_index: int) -> None:
        super().__init__()
        if not 0 <= low_index < len(backbone) - 1:
            raise ValueError(f"low_index must name a layer before the last of {len(backbone)}, got {low_index}")
        self.backbone = backbone
        self.classifier = classifier
        self.low_index = low_index

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        low = x
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i == self.low_index:
                low = x
        logits = self.classifier({"low": low, "high": x})
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
