"""Errors a user of the video data sets can cause; each message names the file and the fix."""

from __future__ import annotations

from cv_tasks.image_classification.datasets.errors import DatasetNotFoundError

__all__ = ["DatasetNotFoundError", "SplitFileError", "VideoDecodeError"]


class VideoDecodeError(ValueError):
    """A video file could not be opened or holds no decodable frame (the message names it)."""


class SplitFileError(ValueError):
    """A split or class-index file is malformed or names a class it does not define."""
