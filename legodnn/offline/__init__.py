"""Offline phase: retrain descendant blocks and profile their accuracy and cost."""

from .block_profiler import (
    AccuracyModelReport as AccuracyModelReport,
    BlockProfiler as BlockProfiler,
)
from .block_retrainer import (
    BlockRetrainer as BlockRetrainer,
    default_optimizer as default_optimizer,
)
from .composition_retrainer import (
    CompositionHistory as CompositionHistory,
    CompositionRetrainer as CompositionRetrainer,
)
from .profiles import BlockProfile as BlockProfile, ModelProfile as ModelProfile

from .accuracy_fit import (
    FittedAccuracyModel as FittedAccuracyModel,
    MeasuredComposition as MeasuredComposition,
    fit_accuracy_model as fit_accuracy_model,
)

__all__ = [
    "AccuracyModelReport",
    "BlockProfile",
    "BlockProfiler",
    "BlockRetrainer",
    "CompositionHistory",
    "CompositionRetrainer",
    "FittedAccuracyModel",
    "MeasuredComposition",
    "ModelProfile",
    "default_optimizer",
    "fit_accuracy_model",
]
