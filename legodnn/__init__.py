"""legodnn: block-grained scaling of deep neural networks for edge devices."""

from .blockmanager import (
    AutoBlockManager as AutoBlockManager,
    BlockSpec as BlockSpec,
    BlockStore as BlockStore,
    BlockSwitcher as BlockSwitcher,
    DescendantSpec as DescendantSpec,
    LegoModel as LegoModel,
    SwitchResult as SwitchResult,
)
from .errors import (
    CorruptedStoreError as CorruptedStoreError,
    FingerprintMismatchError as FingerprintMismatchError,
    InvalidSparsityError as InvalidSparsityError,
    LegoDNNError as LegoDNNError,
    NoBlocksError as NoBlocksError,
    StoreError as StoreError,
    TraceError as TraceError,
)
from .model_manager import (
    AbstractModelManager as AbstractModelManager,
    CommonModelManager as CommonModelManager,
)
from .offline import (
    BlockProfile as BlockProfile,
    BlockProfiler as BlockProfiler,
    BlockRetrainer as BlockRetrainer,
    ModelProfile as ModelProfile,
)
from .online import (
    Budget as Budget,
    InfeasibleBudgetError as InfeasibleBudgetError,
    LatencyEstimator as LatencyEstimator,
    LatencyProfile as LatencyProfile,
    OnDeviceRuntime as OnDeviceRuntime,
    OptimizationResult as OptimizationResult,
    ScalingOptimizer as ScalingOptimizer,
    export_onnx as export_onnx,
)
from .version import __version__ as __version__

__all__ = [
    "AbstractModelManager",
    "AutoBlockManager",
    "BlockProfile",
    "BlockProfiler",
    "BlockRetrainer",
    "BlockSpec",
    "BlockStore",
    "BlockSwitcher",
    "Budget",
    "CommonModelManager",
    "CorruptedStoreError",
    "DescendantSpec",
    "export_onnx",
    "FingerprintMismatchError",
    "InfeasibleBudgetError",
    "InvalidSparsityError",
    "LatencyEstimator",
    "LatencyProfile",
    "LegoDNNError",
    "LegoModel",
    "ModelProfile",
    "NoBlocksError",
    "OnDeviceRuntime",
    "OptimizationResult",
    "ScalingOptimizer",
    "StoreError",
    "SwitchResult",
    "TraceError",
    "__version__",
]
