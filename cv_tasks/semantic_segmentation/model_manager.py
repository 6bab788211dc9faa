"""Model manager for semantic segmentation: ``(images, masks)`` batches, mean IoU.

Only scoring differs from classification: running the model (``batch[0]``), size, FLOPs
and latency on an image tensor are ``CommonModelManager``'s. The model must return
logits ``(N, num_classes, H, W)`` at the mask's resolution (the registered segmenters
do); a raw torchvision model's ``{"out": ...}`` dict is read too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from cv_tasks.registry import register_model_manager
from cv_tasks.semantic_segmentation.metrics import IGNORE_INDEX, MeanIoU, SegmentationScores
from legodnn.model_manager import CommonModelManager
from legodnn.model_manager.abstract_model_manager import Device

__all__ = ["SegmentationModelManager"]


@register_model_manager("semantic_segmentation")
class SegmentationModelManager(CommonModelManager):
    """``get_model_acc`` is the mean IoU in [0, 1] over the test set (void pixels ignored)."""

    metric_name = "mIoU"

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index

    def metric_accumulator(self) -> MeanIoU:
        return MeanIoU(self.ignore_index)

    def evaluate(self, model: nn.Module, test_loader: Iterable[Any], device: Device) -> SegmentationScores:
        """mIoU, pixel accuracy and per-class IoU in one pass over ``test_loader``."""
        acc = self.metric_accumulator()
        for batch in test_loader:
            acc.update(self.forward_to_gen_mid_data(model, batch, device), batch)
        return acc.scores()
