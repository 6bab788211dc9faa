"""Online phase: latency on the device, the exact scaling optimizer, live hot-swap, the loop."""

from .latency import BlockLatency as BlockLatency
from .latency import LatencyEstimator as LatencyEstimator
from .latency import LatencyProfile as LatencyProfile
from .onnx_export import OnnxRunner as OnnxRunner
from .onnx_export import export_onnx as export_onnx
from .optimizer import (
    InfeasibleBudgetError as InfeasibleBudgetError,
)
from .optimizer import (
    OptimizationResult as OptimizationResult,
)
from .optimizer import (
    ScalingOptimizer as ScalingOptimizer,
)
from .runtime import Budget as Budget
from .runtime import OnDeviceRuntime as OnDeviceRuntime
from .runtime import memory_budget_source as memory_budget_source
from .solver import ScalingProblem as ScalingProblem
from .solver import Solution as Solution
from .solver import solve as solve

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
