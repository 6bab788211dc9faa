"""Errors a user of the detection data sets can cause; each message says what to do."""

from __future__ import annotations

from cv_tasks.image_classification.datasets.errors import DatasetNotFoundError

__all__ = ["AnnotationError", "DatasetNotFoundError"]


class AnnotationError(ValueError):
    """An annotation file is unreadable or inconsistent (the message names the file and the entry)."""
