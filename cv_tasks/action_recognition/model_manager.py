"""The action-recognition model manager: clip batches in, top-1 video accuracy out.

Batches are ``(clips, labels, video_indices)`` from ``VideoClipDataset`` (plain
``(clips, labels)`` also work). Running, size, FLOPs and latency are those of
``CommonModelManager``, which handle the 5-D ``(N, 3, T, H, W)`` input as is; only the
metric differs: clip scores are averaged per video before scoring.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable

from torch import nn

from cv_tasks.action_recognition.metrics import METRIC_NAMES, VideoAccuracy
from cv_tasks.registry import register_model_manager
from legodnn.model_manager import CommonModelManager
from legodnn.model_manager.abstract_model_manager import Device

__all__ = ["ActionRecognitionModelManager"]


@register_model_manager("action_recognition")
class ActionRecognitionModelManager(CommonModelManager):
    """``metric`` picks what ``get_model_acc`` returns: one of ``METRIC_NAMES``, default top-1 (video)."""

    def __init__(self, metric: str = "top-1 (video)") -> None:
        if metric not in METRIC_NAMES:
            raise ValueError(f"metric must be one of {METRIC_NAMES}, got {metric!r}")
        super().__init__()
        self.metric_name = metric

    def metric_accumulator(self) -> VideoAccuracy:
        return VideoAccuracy(primary=self.metric_name)

    def evaluate(self, model: nn.Module, test_loader: Iterable[Any], device: Device) -> Dict[str, float]:
        """Top-1 and top-5 accuracy at clip and video level, in one pass over ``test_loader``."""
        acc = self.metric_accumulator()
        for batch in test_loader:
            acc.update(self.forward_to_gen_mid_data(model, batch, device), batch)
        return acc.results()
