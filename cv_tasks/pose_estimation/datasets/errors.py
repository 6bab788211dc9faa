"""Errors a user's pose data can cause; each message names the file or entry and the fix."""

from __future__ import annotations

from cv_tasks.image_classification.datasets.errors import DatasetNotFoundError

__all__ = ["CorruptImageError", "DatasetNotFoundError", "PoseAnnotationError"]


class PoseAnnotationError(ValueError):
    """An annotation file or entry is malformed (wrong joint count, missing field, bad json)."""


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded."""
