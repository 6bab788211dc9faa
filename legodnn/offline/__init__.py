"""Offline phase: retrain descendant blocks and profile their accuracy and cost."""

from .block_profiler import (
    AccuracyModelReport as AccuracyModelReport,
    BlockProfiler as BlockProfiler,
)
from .block_retrainer import (
    BlockRetrainer as BlockRetrainer,
    default_optimizer as default_optimizer,
)
from .profiles import BlockProfile as BlockProfile, ModelProfile as ModelProfile

__all__ = ["AccuracyModelReport", "BlockProfile", "BlockProfiler", "BlockRetrainer", "ModelProfile", "default_optimizer"]
