"""Errors raised by legodnn.

Every error a user can trigger with bad input derives from :class:`LegoDNNError`, so a
caller can catch the whole family, and each message names the problem and the fix.
"""

from __future__ import annotations

__all__ = [
    "LegoDNNError",
    "TraceError",
    "NoBlocksError",
    "InvalidSparsityError",
    "StoreError",
    "FingerprintMismatchError",
    "CorruptedStoreError",
    "InvalidProblemError",
]


class LegoDNNError(Exception):
    """Base class of all legodnn errors."""


class TraceError(LegoDNNError):
    """The model (or the part of it that holds the convolutions) cannot be traced."""


class NoBlocksError(LegoDNNError):
    """The model has no region that can become a prunable block."""


class InvalidSparsityError(LegoDNNError, ValueError):
    """A sparsity is outside [0, 1) or a sparsity list has the wrong length."""


class StoreError(LegoDNNError):
    """A blocks directory is missing, incomplete or unreadable."""


class FingerprintMismatchError(StoreError):
    """A blocks directory was written for a different model architecture."""


class CorruptedStoreError(StoreError):
    """A file in a blocks directory does not match what its manifest records."""


class InvalidProblemError(LegoDNNError, ValueError):
    """An optimization problem or budget that makes no sense (NaN costs, a budget <= 0)."""
