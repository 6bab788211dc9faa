"""Image- and pixel-level AUROC, rank-based (Mann-Whitney U) with ties counted as half.

AUROC is the probability that a random anomalous sample scores higher than a random
normal one. With average ranks over tied scores it equals
``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``, which is exactly the area under the
ROC curve with ties drawn as diagonal segments (what ``sklearn.metrics.roc_auc_score``
returns). It is threshold-free, so no score calibration is needed between a teacher and
its pruned descendants.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor

from cv_tasks.anomaly_detection.errors import UndefinedMetricError
from cv_tasks.anomaly_detection.scoring import split_output

__all__ = ["AUROCAccumulator", "average_ranks", "pixel_roc_auc", "roc_auc"]


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of ``values`` (float64), tied values sharing the mean of their ranks."""
    _, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    last = counts.cumsum(0)  # rank of the last member of each tie group
    return (last - (counts - 1) / 2)[inverse]


def roc_auc(scores: Any, labels: Any) -> float:
    """AUROC of ``scores`` (higher = more anomalous) against binary ``labels`` (1 = anomalous).

    Raises ``UndefinedMetricError`` when ``labels`` hold only one class and ``ValueError``
    for NaN scores, labels other than 0/1, or mismatched lengths.
    """
    s = torch.as_tensor(scores).detach().flatten().to(torch.float64).cpu()
    y = torch.as_tensor(labels).detach().flatten().cpu()
    if s.numel() != y.numel():
        raise ValueError(f"roc_auc got {s.numel()} scores but {y.numel()} labels; give one label per score")
    if torch.isnan(s).any():
        raise ValueError("roc_auc got NaN scores; the model produced non-finite outputs")
    if y.dtype == torch.bool:
        y = y.long()
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), got values {y.unique().tolist()[:5]}")
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        kind = "normal" if n_pos == 0 else "anomalous"
        raise UndefinedMetricError(
            f"AUROC is undefined: all {y.numel()} samples are {kind}; the test set needs both normal "
            "and anomalous samples (e.g. test/good and test/<defect> in the MVTec layout)"
        )
    rank_sum = float(average_ranks(s)[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pixel_roc_auc(maps: Tensor, masks: Tensor) -> float:
    """AUROC over all pixels: anomaly maps ``(N, 1, H, W)`` against ground-truth masks of the same size."""
    if maps.shape[0] != masks.shape[0] or maps.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"anomaly maps of shape {tuple(maps.shape)} do not match masks of shape {tuple(masks.shape)}: "
            "the model must return a map at the input resolution, and masks must be resized with their images"
        )
    return roc_auc(maps.flatten(), masks.flatten() > 0.5)


class AUROCAccumulator:
    """Collects scores (and maps) batch by batch; ``compute()`` is the image AUROC.

    Batches are ``(images, labels)`` or ``(images, labels, masks)``; the model output is
    what ``scoring.split_output`` reads. Pixel AUROC is kept when the batches have masks
    and the model gives maps.
    """

    def __init__(self, pixel: bool = True) -> None:
        self.pixel = pixel
        self.scores: List[Tensor] = []
        self.labels: List[Tensor] = []
        self.maps: List[Tensor] = []
        self.masks: List[Tensor] = []

    def update(self, outputs: Any, batch_data: Sequence[Any]) -> None:
        if len(batch_data) < 2:
            raise ValueError("anomaly batches are (images, labels[, masks]); got a batch without labels")
        scores, maps = split_output(outputs)
        labels = torch.as_tensor(batch_data[1]).flatten().cpu()
        if scores.numel() != labels.numel():
            raise ValueError(f"the model gave {scores.numel()} scores for a batch of {labels.numel()} labels")
        self.scores.append(scores.detach().double().cpu())
        self.labels.append(labels)
        if self.pixel and maps is not None and len(batch_data) > 2 and batch_data[2] is not None:
            self.maps.append(maps.detach().float().cpu())
            self.masks.append(torch.as_tensor(batch_data[2]).float().cpu())

    def compute(self) -> float:
        """Image AUROC over every sample seen."""
        if not self.scores:
            raise ValueError("test_loader yielded no samples; cannot compute AUROC")
        return roc_auc(torch.cat(self.scores), torch.cat(self.labels))

    def compute_pixel(self) -> Optional[float]:
        """Pixel AUROC, or None without maps and masks, or when no mask marks a defect."""
        if not self.maps:
            return None
        masks = torch.cat(self.masks)
        if not bool((masks > 0.5).any()):
            return None
        return pixel_roc_auc(torch.cat(self.maps), masks)
