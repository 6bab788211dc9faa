"""Online phase: latency on the device, the exact scaling optimizer, live hot-swap, the loop."""

from .latency import (
    BlockLatency as BlockLatency,
    LatencyEstimator as LatencyEstimator,
    LatencyProfile as LatencyProfile,
)
from .onnx_export import OnnxRunner as OnnxRunner, export_onnx as export_onnx
from .optimizer import (
    InfeasibleBudgetError as InfeasibleBudgetError,
    OptimizationResult as OptimizationResult,
    ScalingOptimizer as ScalingOptimizer,
)
from .runtime import (
    Budget as Budget,
    OnDeviceRuntime as OnDeviceRuntime,
    memory_budget_source as memory_budget_source,
)
from .solver import ScalingProblem as ScalingProblem, Solution as Solution, solve as solve

__all__ = [
    "BlockLatency",
    "Budget",
    "InfeasibleBudgetError",
    "LatencyEstimator",
    "LatencyProfile",
    "OnDeviceRuntime",
    "OnnxRunner",
    "OptimizationResult",
    "ScalingOptimizer",
    "ScalingProblem",
    "Solution",
    "export_onnx",
    "memory_budget_source",
    "solve",
]
