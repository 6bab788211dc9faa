"""The pose model manager: loader batches of person crops, PCK / PCKh / keypoint AP.

Batches are ``(images, heatmaps, target_weight, meta)`` from the pose data sets. The
model's output (heatmaps, coordinates or Keypoint R-CNN detections) is decoded and
mapped back to image coordinates before scoring, so every model is scored on the same
ground truth. Size, FLOPs and latency come from ``CommonModelManager``: all three
model kinds take an (N, 3, H, W) image tensor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from cv_tasks.pose_estimation.decode import decode_output
from cv_tasks.pose_estimation.metrics import KeypointAPAccumulator, PCKAccumulator
from cv_tasks.registry import register_model_manager
from legodnn.model_manager import CommonModelManager
from legodnn.model_manager.abstract_model_manager import Device

__all__ = ["METRICS", "PoseMetric", "PoseModelManager"]

#: the metric names a manager accepts (any positive threshold works for PCK/PCKh)
METRICS = ("keypoint AP", "PCKh@0.5", "PCK@0.2")


class PoseMetric:
    """A metric accumulator over loader batches: decodes outputs, then scores them."""

    def __init__(self, inner: PCKAccumulator | KeypointAPAccumulator) -> None:
        self.inner = inner

    def update(self, outputs: Any, batch_data: Sequence[Any]) -> None:
        joints, scores = decode_output(outputs, batch_data)
        self.inner.update(joints, scores, batch_data[3])

    def compute(self) -> float:
        return self.inner.compute()


@register_model_manager("pose_estimation")
class PoseModelManager(CommonModelManager):
    """Manager for pose models; ``metric`` is ``"keypoint AP"``, ``"PCKh@t"`` or ``"PCK@t"``.

    PCKh (head-normalised) needs MPII data, PCK (box-normalised) the others; mixing them
    up raises a ``ValueError`` when scoring rather than reporting a misnamed number.
    ``get_model_acc`` (inherited) feeds every test batch to :meth:`metric_accumulator`.
    """

    def __init__(self, metric: str = "keypoint AP") -> None:
        match = re.fullmatch(r"(PCKh?)@([0-9]*\.?[0-9]+)", metric)
        if metric != "keypoint AP" and match is None:
            raise ValueError(f"unknown pose metric {metric!r}; use one of {METRICS} (any threshold for PCK/PCKh)")
        if match is not None and float(match.group(2)) <= 0:
            raise ValueError(f"the PCK threshold must be positive, got {metric!r}")
        self.metric_name = metric
        self._pck = None if match is None else (float(match.group(2)), match.group(1) == "PCKh")

    def metric_accumulator(self) -> PoseMetric:  # type: ignore[override]
        if self._pck is None:
            return PoseMetric(KeypointAPAccumulator())
        return PoseMetric(PCKAccumulator(self._pck[0], head_size=self._pck[1]))

    def forward_to_gen_mid_data(self, model: nn.Module, batch_data: Sequence[Any], device: Device) -> Any:
        """Run the model in eval mode on the batch's images (``batch_data[0]``)."""
        if not isinstance(batch_data, (list, tuple)) or len(batch_data) != 4:
            raise ValueError("a pose batch is (images, heatmaps, target_weight, meta), as the pose loaders yield")
        return super().forward_to_gen_mid_data(model, batch_data, device)
