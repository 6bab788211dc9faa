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
    "NotOursError",
    "StaleProfileError",
    "InvalidProblemError",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "DeviceUnavailableError",
    "InvalidDataError",
    "InvalidProfileError",
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


class NotOursError(StoreError):
    """A write would replace a path legodnn did not create (a user's folder or file)."""


class StaleProfileError(StoreError):
    """A profile was measured on other weights or blocks than the store now holds."""


class InvalidProblemError(LegoDNNError, ValueError):
    """An optimization problem or budget that makes no sense (NaN costs, a budget <= 0)."""


class InvalidArgumentError(LegoDNNError, ValueError):
    """An argument of a public call has a value outside what it allows (a negative count,
    NaN, an empty list). Also a ``ValueError``, so code written against the built-in
    errors keeps catching it."""


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type (a string where a number goes, a bool as a count).
    Also a ``TypeError`` for callers that catch the built-in one."""


class DeviceUnavailableError(InvalidArgumentError):
    """A device string that torch cannot parse, or a device this machine does not have
    (``cuda`` without a GPU)."""


class InvalidDataError(LegoDNNError, ValueError):
    """A loader's batches do not fit the model (wrong layout, channels, dtype, NaN values,
    labels out of range); found on the first batch, before any training or profiling."""


class InvalidProfileError(StoreError):
    """A profile file holds values that cannot be right (NaN drops, negative sizes or
    latencies, missing blocks or sparsities); it must be measured again."""
