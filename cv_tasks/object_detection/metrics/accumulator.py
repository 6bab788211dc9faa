"""Batch-by-batch mAP: keep every image's predictions and targets, score them once at the end.

mAP ranks detections across the whole test set, so it cannot be summed per batch; the
accumulator only collects (on the CPU) what :func:`coco_map` or :func:`voc_map` then scores.
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Sequence

__all__ = ["MapAccumulator"]


class MapAccumulator:
    """A metric accumulator over ``(images, targets)`` batches for a mAP function."""

    def __init__(self, score: Callable[[List[Mapping[str, Any]], List[Mapping[str, Any]]], float]) -> None:
        self.score = score
        self.predictions: List[Mapping[str, Any]] = []
        self.targets: List[Mapping[str, Any]] = []

    def update(self, outputs: Sequence[Mapping[str, Any]], batch_data: Sequence[Any]) -> None:
        self.predictions.extend({k: v.detach().cpu() for k, v in o.items()} for o in outputs)
        self.targets.extend(batch_data[1])

    def compute(self) -> float:
        if not self.targets:
            raise ValueError("test_loader yielded no images; cannot compute mAP")
        return float(self.score(self.predictions, self.targets))
