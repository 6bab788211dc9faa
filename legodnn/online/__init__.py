"""Online phase: latency on the device, the exact scaling optimizer, live hot-swap, the loop."""

from typing import TYPE_CHECKING

from legodnn._lazy import lazy_exports

_EXPORTS = {
    "BlockLatency": ".latency",
    "Budget": ".runtime",
    "InfeasibleBudgetError": ".optimizer",
    "LatencyEstimator": ".latency",
    "LatencyProfile": ".latency",
    "OnDeviceRuntime": ".runtime",
    "OnnxRunner": ".onnx_export",
    "OptimizationResult": ".optimizer",
    "ScalingOptimizer": ".optimizer",
    "ScalingProblem": ".solver",
    "Solution": ".solver",
    "export_onnx": ".onnx_export",
    "memory_budget_source": ".runtime",
    "solve": ".solver",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names for type checkers and editors; at run time they load on use
    from .latency import (  # noqa: F401
        BlockLatency as BlockLatency,
        LatencyEstimator as LatencyEstimator,
        LatencyProfile as LatencyProfile,
    )
    from .onnx_export import OnnxRunner as OnnxRunner, export_onnx as export_onnx  # noqa: F401
    from .optimizer import (  # noqa: F401
        InfeasibleBudgetError as InfeasibleBudgetError,
        OptimizationResult as OptimizationResult,
        ScalingOptimizer as ScalingOptimizer,
    )
    from .runtime import (  # noqa: F401
        Budget as Budget,
        OnDeviceRuntime as OnDeviceRuntime,
        memory_budget_source as memory_budget_source,
    )
    from .solver import ScalingProblem as ScalingProblem, Solution as Solution, solve as solve  # noqa: F401
