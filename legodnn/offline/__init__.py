"""Offline phase: retrain descendant blocks and profile their accuracy and cost."""

from typing import TYPE_CHECKING

from legodnn._lazy import lazy_exports

_EXPORTS = {
    "AccuracyModelReport": ".block_profiler",
    "BlockProfile": ".profiles",
    "BlockProfiler": ".block_profiler",
    "BlockRetrainer": ".block_retrainer",
    "CompositionHistory": ".composition_retrainer",
    "CompositionRetrainer": ".composition_retrainer",
    "FittedAccuracyModel": ".accuracy_fit",
    "MeasuredComposition": ".accuracy_fit",
    "ModelProfile": ".profiles",
    "default_optimizer": ".block_retrainer",
    "fit_accuracy_model": ".accuracy_fit",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names for type checkers and editors; at run time they load on use
    from .accuracy_fit import (  # noqa: F401
        FittedAccuracyModel as FittedAccuracyModel,
        MeasuredComposition as MeasuredComposition,
        fit_accuracy_model as fit_accuracy_model,
    )
    from .block_profiler import (  # noqa: F401
        AccuracyModelReport as AccuracyModelReport,
        BlockProfiler as BlockProfiler,
    )
    from .block_retrainer import (  # noqa: F401
        BlockRetrainer as BlockRetrainer,
        default_optimizer as default_optimizer,
    )
    from .composition_retrainer import (  # noqa: F401
        CompositionHistory as CompositionHistory,
        CompositionRetrainer as CompositionRetrainer,
    )
    from .profiles import BlockProfile as BlockProfile, ModelProfile as ModelProfile  # noqa: F401
