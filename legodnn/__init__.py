"""legodnn: block-grained scaling of deep neural networks for edge devices."""

from typing import TYPE_CHECKING

from legodnn._lazy import lazy_exports

from .version import __version__ as __version__

_EXPORTS = {
    "AbstractModelManager": ".model_manager.abstract_model_manager",
    "ArgumentTypeError": ".errors",
    "AutoBlockManager": ".blockmanager.auto_block_manager",
    "BlockProfile": ".offline.profiles",
    "BlockProfiler": ".offline.block_profiler",
    "BlockRetrainer": ".offline.block_retrainer",
    "BlockSpec": ".blockmanager.specs",
    "BlockStore": ".blockmanager.store",
    "BlockSwitcher": ".blockmanager.switcher",
    "Budget": ".online.runtime",
    "CommonModelManager": ".model_manager.common_model_manager",
    "CorruptedStoreError": ".errors",
    "DescendantSpec": ".blockmanager.specs",
    "DeviceUnavailableError": ".errors",
    "FingerprintMismatchError": ".errors",
    "InfeasibleBudgetError": ".online.optimizer",
    "InvalidArgumentError": ".errors",
    "InvalidDataError": ".errors",
    "InvalidProblemError": ".errors",
    "InvalidProfileError": ".errors",
    "InvalidSparsityError": ".errors",
    "LatencyEstimator": ".online.latency",
    "LatencyProfile": ".online.latency",
    "LegoDNNError": ".errors",
    "LegoModel": ".blockmanager.switcher",
    "ModelProfile": ".offline.profiles",
    "NoBlocksError": ".errors",
    "NotOursError": ".errors",
    "OnDeviceRuntime": ".online.runtime",
    "OptimizationResult": ".online.optimizer",
    "ScalingOptimizer": ".online.optimizer",
    "StaleProfileError": ".errors",
    "StoreError": ".errors",
    "SwitchResult": ".blockmanager.switcher",
    "TraceError": ".errors",
    "export_onnx": ".online.onnx_export",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # the names for type checkers and editors; at run time they load on use
    from .blockmanager.auto_block_manager import AutoBlockManager as AutoBlockManager  # noqa: F401
    from .blockmanager.specs import BlockSpec as BlockSpec, DescendantSpec as DescendantSpec  # noqa: F401
    from .blockmanager.store import BlockStore as BlockStore  # noqa: F401
    from .blockmanager.switcher import (  # noqa: F401
        BlockSwitcher as BlockSwitcher,
        LegoModel as LegoModel,
        SwitchResult as SwitchResult,
    )
    from .errors import (  # noqa: F401
        ArgumentTypeError as ArgumentTypeError,
        CorruptedStoreError as CorruptedStoreError,
        DeviceUnavailableError as DeviceUnavailableError,
        FingerprintMismatchError as FingerprintMismatchError,
        InvalidArgumentError as InvalidArgumentError,
        InvalidDataError as InvalidDataError,
        InvalidProblemError as InvalidProblemError,
        InvalidProfileError as InvalidProfileError,
        InvalidSparsityError as InvalidSparsityError,
        LegoDNNError as LegoDNNError,
        NoBlocksError as NoBlocksError,
        NotOursError as NotOursError,
        StaleProfileError as StaleProfileError,
        StoreError as StoreError,
        TraceError as TraceError,
    )
    from .model_manager.abstract_model_manager import AbstractModelManager as AbstractModelManager  # noqa: F401
    from .model_manager.common_model_manager import CommonModelManager as CommonModelManager  # noqa: F401
    from .offline.block_profiler import BlockProfiler as BlockProfiler  # noqa: F401
    from .offline.block_retrainer import BlockRetrainer as BlockRetrainer  # noqa: F401
    from .offline.profiles import BlockProfile as BlockProfile, ModelProfile as ModelProfile  # noqa: F401
    from .online.latency import (  # noqa: F401
        LatencyEstimator as LatencyEstimator,
        LatencyProfile as LatencyProfile,
    )
    from .online.onnx_export import export_onnx as export_onnx  # noqa: F401
    from .online.optimizer import (  # noqa: F401
        InfeasibleBudgetError as InfeasibleBudgetError,
        OptimizationResult as OptimizationResult,
        ScalingOptimizer as ScalingOptimizer,
    )
    from .online.runtime import Budget as Budget, OnDeviceRuntime as OnDeviceRuntime  # noqa: F401
