"""The anomaly detection model manager: image AUROC from the model's own anomaly scores.

Batches are ``(images, labels)`` (one-class protocol) or ``(images, labels, masks)``
(MVTec AD layout); labels are 1 for anomalous. The model's forward returns the score
(see :mod:`cv_tasks.anomaly_detection.scoring`), so running, sizing, FLOPs and latency
are those of any single-tensor CNN and come from ``CommonModelManager``; only the metric
differs. The same manager scores the teacher, each pruned descendant, and the
hot-swapped model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from torch import nn

from cv_tasks.anomaly_detection.metrics import AUROCAccumulator
from cv_tasks.registry import register_model_manager
from legodnn.model_manager import CommonModelManager
from legodnn.model_manager.abstract_model_manager import Device

__all__ = ["AnomalyEvaluation", "AnomalyModelManager"]


@dataclass(frozen=True)
class AnomalyEvaluation:
    """Image AUROC, and pixel AUROC where the data has masks and the model gives maps."""

    image_auroc: float
    pixel_auroc: Optional[float]
    num_samples: int


@register_model_manager("anomaly_detection")
class AnomalyModelManager(CommonModelManager):
    """Runs anomaly models on ``(images, labels[, masks])`` batches; the metric is image AUROC."""

    metric_name = "image AUROC"

    def metric_accumulator(self) -> AUROCAccumulator:
        """Scores and labels gathered over the test set; only image AUROC is computed from it."""
        return AUROCAccumulator(pixel=False)

    def get_model_acc(self, model: nn.Module, test_loader: Iterable[Any], device: Device) -> float:
        """Image AUROC in [0, 1] over ``test_loader`` (0.5 is chance).

        Raises ``UndefinedMetricError`` (a ``ValueError``) when the test data has a single class.
        """
        return self.evaluate(model, test_loader, device, pixel=False).image_auroc

    def evaluate(self, model: nn.Module, test_loader: Iterable[Any], device: Device,
                 pixel: bool = True) -> AnomalyEvaluation:
        """Image AUROC and, if ``pixel`` and the batches have masks and the model maps, pixel AUROC."""
        acc = AUROCAccumulator(pixel=pixel)
        for batch in test_loader:
            acc.update(self.forward_to_gen_mid_data(model, batch, device), batch)
        return AnomalyEvaluation(acc.compute(), acc.compute_pixel(), sum(len(s) for s in acc.scores))
