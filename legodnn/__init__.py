"""legodnn: block-grained scaling of deep neural networks for edge devices."""

from .blockmanager import (
    AutoBlockManager as AutoBlockManager,
)
from .blockmanager import (
    BlockSpec as BlockSpec,
)
from .blockmanager import (
    BlockStore as BlockStore,
)
from .blockmanager import (
    BlockSwitcher as BlockSwitcher,
)
from .blockmanager import (
    DescendantSpec as DescendantSpec,
)
from .blockmanager import (
    LegoModel as LegoModel,
)
from .blockmanager import (
    SwitchResult as SwitchResult,
)
from .errors import (
    CorruptedStoreError as CorruptedStoreError,
)
from .errors import (
    FingerprintMismatchError as FingerprintMismatchError,
)
from .errors import (
    InvalidSparsityError as InvalidSparsityError,
)
from .errors import (
    LegoDNNError as LegoDNNError,
)
from .errors import (
    NoBlocksError as NoBlocksError,
)
from .errors import (
    StoreError as StoreError,
)
from .errors import (
    TraceError as TraceError,
)
from .model_manager import AbstractModelManager as AbstractModelManager
from .model_manager import CommonModelManager as CommonModelManager
from .offline import (
    BlockProfile as BlockProfile,
)
from .offline import (
    BlockProfiler as BlockProfiler,
)
from .offline import (
    BlockRetrainer as BlockRetrainer,
)
from .offline import (
    ModelProfile as ModelProfile,
)
from .online import (
    Budget as Budget,
)
from .online import (
    InfeasibleBudgetError as InfeasibleBudgetError,
)
from .online import (
    LatencyEstimator as LatencyEstimator,
)
from .online import (
    LatencyProfile as LatencyProfile,
)
from .online import (
    OnDeviceRuntime as OnDeviceRuntime,
)
from .online import (
    OptimizationResult as OptimizationResult,
)
from .online import (
    ScalingOptimizer as ScalingOptimizer,
)
from .online import (
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
