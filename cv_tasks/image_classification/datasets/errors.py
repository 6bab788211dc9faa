"""Errors a user of the data sets can cause; each message says what to do about it."""

from __future__ import annotations

import pickle

__all__ = ["DatasetNotFoundError", "UnsafePickleError"]


class DatasetNotFoundError(FileNotFoundError):
    """The data set's files are not where they were looked for (the message names the path)."""


class UnsafePickleError(pickle.UnpicklingError):
    """A data file refers to code that a data file never needs, so it was not loaded."""
