"""Errors a user of the anomaly task can cause; each message says what to do about it."""

from __future__ import annotations

from cv_tasks.image_classification.datasets.errors import DatasetNotFoundError

__all__ = ["AnomalyDatasetError", "DatasetNotFoundError", "UndefinedMetricError"]


class UndefinedMetricError(ValueError):
    """AUROC needs normal and anomalous samples; the test data had only one kind.

    A ``ValueError``, as scikit-learn's ``roc_auc_score`` raises in the same case.
    """


class AnomalyDatasetError(ValueError):
    """Files of an anomaly data set are there but wrong (a mask of the wrong size, an unreadable image)."""
