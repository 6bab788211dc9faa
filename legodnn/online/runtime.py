"""The on-device loop: serve inference, watch the budget, re-optimize and hot-swap.

A background thread polls a budget source (any callable returning a :class:`Budget`;
:func:`memory_budget_source` reads the memory the OS reports available) and, when the
budget moves by more than ``threshold``, re-optimizes and swaps blocks while
:meth:`OnDeviceRuntime.infer` keeps serving. Needs only torch and numpy.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import torch

from ..errors import ArgumentTypeError, InvalidArgumentError, LegoDNNError
from ..validation import check_choice, check_float, check_precisions
from .optimizer import InfeasibleBudgetError, OptimizationResult, ScalingOptimizer

__all__ = ["Budget", "RuntimeEvent", "OnDeviceRuntime", "memory_budget_source", "available_memory_bytes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """Resource limits: seconds per inference and bytes of model weights (None: no limit)."""

    max_latency_s: Optional[float] = None
    max_memory_bytes: Optional[float] = None


@dataclass(frozen=True)
class RuntimeEvent:
    """One re-optimization: when, for which budget, and what happened."""

    time: float
    budget: Budget
    result: Optional[OptimizationResult]
    error: Optional[str] = None


def available_memory_bytes() -> int:
    """Memory the OS can give without swapping (Linux ``MemAvailable``)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise LegoDNNError("cannot read MemAvailable from /proc/meminfo; pass your own budget source")


def memory_budget_source(
    fraction: float = 0.5, reserve_bytes: int = 0, max_latency_s: Optional[float] = None
) -> Callable[[], Budget]:
    """A budget source giving the model ``fraction`` of available memory beyond ``reserve_bytes``."""
    fraction = check_float("fraction", fraction, minimum=0.0, maximum=1.0, min_inclusive=False,
                           hint="pass the share of available memory the model may use, e.g. fraction=0.5")
    reserve_bytes = check_float("reserve_bytes", reserve_bytes, minimum=0.0)
    max_latency_s = check_float("max_latency_s", max_latency_s, minimum=0.0, min_inclusive=False, allow_none=True,
                                hint="pass seconds per inference, e.g. max_latency_s=0.05, or None for no limit")

    def source() -> Budget:
        return Budget(max_latency_s, max(1.0, fraction * (available_memory_bytes() - reserve_bytes)))

    return source


def _moved(old: Optional[float], new: Optional[float], threshold: float) -> bool:
    if old is None or new is None:
        return old is not new
    return abs(new - old) > threshold * abs(old)


class OnDeviceRuntime:
    """Hold the live model, serve inference and follow the budget.

    ``threshold`` is the relative budget change that triggers a re-optimization (0.05:
    5%). With ``fallback`` an infeasible budget installs the closest configuration;
    otherwise the model stays as it is and the event records the error.

    ``backend="onnxruntime"`` serves the model as a chain of ONNX Runtime sessions and
    swaps them block by block (:mod:`legodnn.onnxrt`; needs the ``onnx`` extra);
    ``precisions=("float", "int8")`` lets the optimizer pick int8 descendants too, which
    only ONNX Runtime runs: the PyTorch backend refuses them. ``onnx_dir`` (default
    ``<blocks_dir>/onnx``) and ``num_threads`` (per session) are for that backend.
    """

    def __init__(
        self,
        optimizer: ScalingOptimizer,
        budget_source: Callable[[], Budget],
        poll_interval_s: float = 0.1,
        threshold: float = 0.05,
        fallback: bool = True,
        *,
        backend: str = "torch",
        precisions: Sequence[str] = ("float",),
        onnx_dir: Optional[str] = None,
        num_threads: int = 1,
    ) -> None:
        if not callable(budget_source):
            raise ArgumentTypeError(
                f"budget_source must be a callable that returns a Budget, got {type(budget_source).__name__}; "
                "e.g. memory_budget_source(0.5) or lambda: Budget(max_latency_s=0.05)"
            )
        poll_interval_s = check_float("poll_interval_s", poll_interval_s, minimum=0.0, min_inclusive=False,
                                      hint="pass the seconds between budget polls, e.g. poll_interval_s=0.1")
        threshold = check_float("threshold", threshold, minimum=0.0,
                                hint="pass the relative budget change that re-optimizes, e.g. threshold=0.05 (5%)")
        backend = check_choice("backend", backend, ("torch", "onnxruntime"),
                               hint="'torch' serves PyTorch modules, 'onnxruntime' ONNX Runtime sessions")
        if backend == "onnxruntime":
            # imported here: a device serving PyTorch modules needs neither onnxruntime nor what exports to it
            from ..onnxrt.backend import attach_onnxruntime

            precisions = check_precisions(precisions)
            attach_onnxruntime(optimizer, precisions, onnx_dir=onnx_dir, num_threads=num_threads)
        elif check_precisions(precisions) != ("float",):
            raise InvalidArgumentError(
                f"precisions={check_precisions(precisions)!r} with backend='torch': the PyTorch eager runtime serves float "
                "descendants only (int8 ones are ONNX Runtime graphs); pass backend='onnxruntime' for int8, or "
                "precisions=('float',)")
        self.backend = backend
        self.optimizer = optimizer
        self.budget_source = budget_source
        self.poll_interval_s = poll_interval_s
        self.threshold = threshold
        self.fallback = fallback
        self.events: List[RuntimeEvent] = []
        self._applied: Optional[Budget] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.model = optimizer.model

    @classmethod
    def from_store(
        cls,
        blocks_dir: str,
        model: torch.nn.Module,
        budget_source: Callable[[], Budget],
        device: str = "cpu",
        *,
        model_manager: Any = None,
        cache_bytes: int = 256 * 2**20,
        accuracy_model: str = "auto",
        copy_model: bool = False,
        **options: Any,
    ) -> "OnDeviceRuntime":
        """The runtime for a trained, profiled store and the model code: what a device needs.

        One trace of ``model`` (its weights may be random), no block manager, and only
        torch, numpy and safetensors imported. ``options`` go to the constructor
        (``poll_interval_s``, ``threshold``, ``fallback``). ``model`` becomes the live model's
        frame (its weights replaced by the store's) unless ``copy_model=True``.
        """
        optimizer = ScalingOptimizer.from_store(blocks_dir, model, device, model_manager=model_manager,
                                                cache_bytes=cache_bytes, accuracy_model=accuracy_model,
                                                copy_model=copy_model,
                                                # ONNX Runtime costs its options with its own profile
                                                require_latency=options.get("backend", "torch") != "onnxruntime")
        return cls(optimizer, budget_source, **options)

    def infer(self, x: torch.Tensor) -> Any:
        """Run the live model; safe to call while a swap happens in the background."""
        with torch.no_grad():
            return self.model(x)

    def step(self) -> Optional[RuntimeEvent]:
        """Poll the budget once; re-optimize if it moved past the threshold."""
        budget = self.budget_source()
        if not isinstance(budget, Budget):
            raise ArgumentTypeError(
                f"budget_source returned {budget!r} ({type(budget).__name__}), not a Budget; it must return "
                "Budget(max_latency_s=..., max_memory_bytes=...) (None in a field: no limit on it)"
            )
        old = self._applied
        if old is not None and not (
            _moved(old.max_latency_s, budget.max_latency_s, self.threshold)
            or _moved(old.max_memory_bytes, budget.max_memory_bytes, self.threshold)
        ):
            return None
        try:
            result = self.optimizer.update_model(budget.max_latency_s, budget.max_memory_bytes, fallback=self.fallback)
            event = RuntimeEvent(time.time(), budget, result)
            logger.info(
                "budget %s: sparsities %s, est. %s %.4f, %.2f ms, %d bytes; swapped %s in %.2f ms",
                budget, result.sparsities, result.metric_name, result.estimated_metric,
                1e3 * result.estimated_latency_s, result.model_bytes, list(result.blocks_swapped),
                1e3 * result.swap_seconds,
            )
        except InfeasibleBudgetError as exc:
            event = RuntimeEvent(time.time(), budget, None, str(exc))
            logger.warning("budget %s: %s", budget, exc)
        self._applied = budget
        self.events.append(event)
        return event

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # keep serving on the last good model, but say so
                logger.exception("budget update failed")
                self.events.append(RuntimeEvent(time.time(), Budget(), None, f"{type(exc).__name__}: {exc}"))
            self._stop.wait(self.poll_interval_s)

    def start(self) -> "OnDeviceRuntime":
        if self._thread is None:
            self.step()  # the first configuration is in place before serving starts
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="legodnn-runtime", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "OnDeviceRuntime":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

