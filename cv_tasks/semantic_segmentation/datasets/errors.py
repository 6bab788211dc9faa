"""Errors a user's segmentation data can cause; each message names the file and the fix."""

from __future__ import annotations

from cv_tasks.image_classification.datasets.errors import DatasetNotFoundError

__all__ = ["DatasetNotFoundError", "SegmentationDataError"]


class SegmentationDataError(ValueError):
    """A file of the data set is unreadable or disagrees with the rest (a mask of the wrong
    size, a label beyond ``num_classes``, an unknown category id)."""
