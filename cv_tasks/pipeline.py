"""The whole legodnn pipeline on one model, as one call: what every task demo, pipeline
test and task benchmark runs.

extract -> retrain -> profile -> latency -> optimize + hot-swap, each stage timed, with
a report of what a user checks first: blocks found, conv-parameter coverage, descendant
size range, the teacher's metric and what the optimizer picked under a budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from legodnn import (
    AutoBlockManager,
    BlockProfiler,
    BlockRetrainer,
    LatencyEstimator,
    ScalingOptimizer,
)
from legodnn.model_manager import AbstractModelManager

__all__ = ["AccuracyCheck", "LatencyCheck", "PipelineReport", "describe", "run_pipeline"]

DEFAULT_SPARSITIES: Tuple[float, ...] = (0.0, 0.3, 0.6, 0.8)


@dataclass(frozen=True)
class LatencyCheck:
    """The latency estimate against ``n`` measured random compositions held out of its calibration."""

    n: int
    within_10pct: float  # share of compositions estimated within +-10%
    mean_abs_rel_error: float


@dataclass(frozen=True)
class AccuracyCheck:
    """The metric estimate against ``n`` random compositions measured on the test set."""

    n: int
    mean_abs_error_additive: float  # teacher minus summed drops (the method's estimate)
    mean_abs_error_multiplicative: float  # teacher x product of retained fractions
    measured_range: Tuple[float, float]
    used: str  # the estimate the optimizer uses from now on: "fitted", "additive" or "multiplicative"
    mean_abs_error_fitted: Optional[float] = None  # fitted on compositions the profiler measured (None: not fitted)


@dataclass
class PipelineReport:
    """What one :func:`run_pipeline` found and measured (JSON-ready via :meth:`to_json`)."""

    num_blocks: int
    coverage: float  # share of the model's conv parameters inside blocks
    num_descendants: int
    descendant_bytes: Tuple[int, int]  # smallest and largest pruned descendant
    block_bytes: Tuple[int, int]  # smallest and largest original block
    metric_name: str
    teacher_metric: float
    teacher_latency_s: float
    teacher_bytes: int
    budget: Dict[str, float]
    chosen: Dict[str, Any]  # sparsities, estimated metric/latency/bytes, swap cost
    live_output_ok: bool  # the hot-swapped model ran on the task's input
    seconds: Dict[str, float] = field(default_factory=dict)  # wall time per stage
    latency_error: Optional[LatencyCheck] = None  # None when no composition was held out
    accuracy_error: Optional[AccuracyCheck] = None  # None unless accuracy_compositions > 0

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def run_pipeline(
    teacher: nn.Module,
    model_manager: AbstractModelManager,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    model_input_size: Sequence[int],
    out_dir: str,
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    block_size_ratio: float = 0.125,
    epochs: int = 1,
    latency_samples: int = 5,
    num_compositions: int = 4,
    latency_budget: float = 0.8,
    memory_budget: float = 0.6,
    accuracy_compositions: int = 0,
    device: str = "cpu",
    verbose: bool = True,
) -> PipelineReport:
    """Run every legodnn stage on ``teacher`` and report it.

    Blocks go to ``out_dir/compressed`` and ``out_dir/trained``. The optimizer is asked for
    ``latency_budget`` x the teacher's latency and ``memory_budget`` x its bytes; when no
    configuration fits, the cheapest one is installed (``fallback=True``) and the report
    says ``feasible: False``. ``accuracy_compositions`` > 0 measures that many random
    compositions on the test set (a full pass each) to check the metric estimate; the
    optimizer then uses the better of its two estimates.
    """
    out = Path(out_dir)
    compressed, trained = str(out / "compressed"), str(out / "trained")
    seconds: Dict[str, float] = {}

    def stage(name: str, start: float) -> None:
        seconds[name] = round(time.perf_counter() - start, 3)

    t = time.perf_counter()
    bm = AutoBlockManager(list(sparsities), teacher, model_manager, tuple(model_input_size),
                          block_size_ratio, device, verbose=verbose)
    bm.extract_all_blocks(compressed)
    stage("extract", t)

    t = time.perf_counter()
    BlockRetrainer(teacher, bm, model_manager, compressed, trained, epochs, train_loader,
                   device=device, verbose=verbose).train_all_blocks()
    stage("retrain", t)

    t = time.perf_counter()
    profiler = BlockProfiler(teacher, bm, model_manager, trained, test_loader, model_input_size,
                             device, verbose=verbose)
    profile = profiler.profile_all_blocks()
    stage("profile", t)

    accuracy_error: Optional[AccuracyCheck] = None
    if accuracy_compositions > 0:
        t = time.perf_counter()
        check = profiler.validate_accuracy_model(accuracy_compositions)
        accuracy_error = AccuracyCheck(
            n=len(check.measured),
            mean_abs_error_additive=check.mean_abs_error,
            mean_abs_error_multiplicative=check.mean_abs_error_multiplicative,
            measured_range=(min(check.measured), max(check.measured)),
            # ScalingOptimizer's "auto": the fitted estimate when the profile has one
            used="fitted" if check.estimated_fitted else
            ("multiplicative" if check.mean_abs_error_multiplicative < check.mean_abs_error else "additive"),
            mean_abs_error_fitted=check.mean_abs_error_fitted if check.estimated_fitted else None,
        )
        stage("validate", t)

    t = time.perf_counter()
    latency = LatencyEstimator(bm, model_manager, trained, latency_samples, model_input_size, device,
                               verbose=verbose).profile_all_blocks(num_compositions=num_compositions)
    stage("latency", t)

    t = time.perf_counter()
    optimizer = ScalingOptimizer(trained, model_input_size, bm, model_manager, device)
    budget = {
        "max_latency_s": latency_budget * latency.teacher_latency_s,
        "max_memory_bytes": memory_budget * profile.teacher_size_bytes,
    }
    result = optimizer.update_model(budget["max_latency_s"], budget["max_memory_bytes"], fallback=True)
    with torch.no_grad():
        output = model_manager.dummy_forward_to_gen_mid_data(optimizer.model, model_input_size, device)
    stage("optimize", t)

    store = bm.open_store(trained)
    pruned: List[int] = [d.bytes for table in store.descendants.values() for s, d in table.items() if s > 0]
    whole: List[int] = [d.bytes for table in store.descendants.values() for s, d in table.items() if s == 0]
    return PipelineReport(
        num_blocks=len(bm.blocks),
        coverage=float(bm.coverage),
        num_descendants=len(pruned),
        descendant_bytes=(min(pruned), max(pruned)) if pruned else (0, 0),
        block_bytes=(min(whole), max(whole)) if whole else (0, 0),
        metric_name=result.metric_name,
        teacher_metric=float(profile.teacher_metric),
        teacher_latency_s=float(latency.teacher_latency_s),
        teacher_bytes=int(profile.teacher_size_bytes),
        budget=budget,
        chosen={
            "sparsities": list(result.sparsities),
            "feasible": result.feasible,
            "estimated_metric": result.estimated_metric,
            "estimated_latency_s": result.estimated_latency_s,
            "model_bytes": result.model_bytes,
            "blocks_swapped": len(result.blocks_swapped),
            "swap_seconds": result.swap_seconds,
            "solve_seconds": result.solve_seconds,
        },
        live_output_ok=_finite(output),
        seconds=seconds,
        latency_error=_latency_check(latency.validation),
        accuracy_error=accuracy_error,
    )


def _finite(output: Any) -> bool:
    """True when every tensor in ``output`` (nested lists/tuples/dicts) is finite."""
    if isinstance(output, torch.Tensor):
        return bool(torch.isfinite(output.float()).all()) if output.is_floating_point() else True
    if isinstance(output, dict):
        return all(_finite(v) for v in output.values())
    if isinstance(output, (list, tuple)):
        return all(_finite(v) for v in output)
    return True


def describe(report: PipelineReport, name: Optional[str] = None) -> str:
    """A few human lines for a demo's output."""
    head = f"{name}: " if name else ""
    lo, hi = report.descendant_bytes
    c = report.chosen
    return (
        f"{head}{report.num_blocks} blocks, {report.coverage:.1%} of conv params, "
        f"{report.num_descendants} descendants of {lo / 1e3:.1f}-{hi / 1e3:.1f} kB\n"
        f"  teacher {report.metric_name} {report.teacher_metric:.4f}, "
        f"{1e3 * report.teacher_latency_s:.1f} ms, {report.teacher_bytes / 1e6:.2f} MB\n"
        f"  budget {1e3 * report.budget['max_latency_s']:.1f} ms / {report.budget['max_memory_bytes'] / 1e6:.2f} MB"
        f" -> sparsities {c['sparsities']} ({'feasible' if c['feasible'] else 'closest, infeasible'}), "
        f"est. {report.metric_name} {round(c['estimated_metric'], 6) + 0.0:.4f}, {1e3 * c['estimated_latency_s']:.1f} ms, "
        f"{c['model_bytes'] / 1e6:.2f} MB; {c['blocks_swapped']} block{'' if c['blocks_swapped'] == 1 else 's'} swapped in {1e3 * c['swap_seconds']:.2f} ms\n"
        f"  wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
        + _latency_line(report.latency_error)
        + _accuracy_line(report.accuracy_error)
    )


def _latency_check(validation: Dict[str, Any]) -> Optional[LatencyCheck]:
    if not validation:
        return None
    return LatencyCheck(int(validation["n"]), float(validation["within_10pct"]),
                        float(validation["mean_abs_rel_error"]))


def _latency_line(err: Optional[LatencyCheck]) -> str:
    if err is None:
        return ""
    return (f"\n  latency estimate: {100 * err.within_10pct:.0f}% of {err.n} held-out compositions "
            f"within +-10%, mean error {100 * err.mean_abs_rel_error:.1f}%")


def _accuracy_line(err: Optional[AccuracyCheck]) -> str:
    if err is None:
        return ""
    lo, hi = err.measured_range
    fitted = f"{err.mean_abs_error_fitted:.4f} fitted, " if err.mean_abs_error_fitted is not None else ""
    return (f"\n  metric estimate on {err.n} measured compositions ({lo:.4f}-{hi:.4f}): mean error "
            f"{fitted}{err.mean_abs_error_additive:.4f} additive, {err.mean_abs_error_multiplicative:.4f} "
            f"multiplicative (the optimizer uses the {err.used} one)")
