"""The online subcommands: ``latency``, ``optimize``, ``serve`` and ``export-onnx``.

``latency`` needs the block manager (it times descendants in place) and runs where the
model will run; the other three need only the store and the model code, as a device
does (``ScalingOptimizer.from_store``, ``BlockSwitcher``): ``serve`` imports neither the
offline machinery nor tqdm, and is ``legodnn-runtime`` under its first name.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch

from ..errors import LegoDNNError
from .args import UsageError, add_budgets, add_common, add_model, float_arg, float_list, int_arg
from .models import model_from_args, set_threads
from .offline import MODEL, need_matplotlib

__all__ = [
    "latency_arguments", "latency", "optimize_arguments", "optimize", "serve_arguments", "serve",
    "export_onnx_arguments", "export_onnx",
]

LATENCY_EXAMPLES = f"""examples:
  legodnn latency {MODEL} --blocks runs/cli/trained --threads 1 --plot
"""

OPTIMIZE_EXAMPLES = f"""examples:
  legodnn optimize {MODEL} --blocks runs/cli/trained --max-memory-mb 0.35,0.5 --plot
  legodnn optimize {MODEL} --blocks runs/cli/trained --sweep 8 --out runs/cli/picks.json
"""

SERVE_EXAMPLES = f"""examples:
  legodnn serve {MODEL} --blocks runs/cli/trained --max-memory-mb 0.4 --duration 5
  legodnn serve {MODEL} --blocks runs/cli/trained --max-latency-ms 1.7 --duration inf
"""

EXPORT_EXAMPLES = f"""examples:
  legodnn export-onnx {MODEL} --blocks runs/cli/trained --sparsities 0.3 --out runs/cli/model.onnx
  legodnn export-onnx {MODEL} --blocks runs/cli/trained --max-memory-mb 0.4 --out runs/cli/small.onnx
"""


def threads_from_profile(threads: Optional[int], blocks: str) -> None:
    """Set torch's CPU threads before the optimizer is built: it warns when they differ
    from those latency was profiled with, and the default (the profile's own count) must
    not draw that warning."""
    from ..online.latency_profile import LatencyProfile

    if threads is None:
        try:
            threads = LatencyProfile.load(Path(blocks)).num_threads
        except LegoDNNError:
            return  # no readable profile: from_store reports the store's problem in its own words
    torch.set_num_threads(threads)


# -- latency ------------------------------------------------------------------
def latency_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument("--blocks", required=True, metavar="DIR",
                        help="the trained blocks directory (latency_profile.json is written into it)")
    parser.add_argument("--runs", type=int_arg("--runs", 1, "--runs 20"), default=20,
                        help="timed runs of each descendant (the median is kept; default: 20)")
    parser.add_argument("--compositions", type=int_arg("--compositions", 0, "--compositions 20"), default=20,
                        help="random compositions timed to calibrate the estimate, and as many to check it "
                             "(default: 20; 0: none)")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                        help="what runs the blocks (default: torch; onnxruntime needs the onnx extra)")
    parser.add_argument("--plot", action="store_true",
                        help="also draw latency_estimates.png (estimated against measured) in --blocks")
    add_common(parser, threads_help="CPU threads to time with, recorded in the profile; serve with the same "
                                    "(default: torch's)")


def latency(args: argparse.Namespace) -> int:
    """Time every descendant on this device and check the composed estimate."""
    from ..online.latency import LatencyEstimator
    from .models import block_manager_for

    need_matplotlib(args)
    set_threads(args.threads)
    model = model_from_args(args)
    block_manager, model_manager, store = block_manager_for(args.blocks, model, args.device, not args.quiet)
    estimator = LatencyEstimator(block_manager, model_manager, args.blocks, args.runs, store.manifest.model_input_size,
                                 args.device, backend=args.backend, num_threads=args.threads, verbose=not args.quiet)
    result = estimator.profile_all_blocks(num_compositions=args.compositions)
    checked = ""
    if result.validation:
        v = result.validation
        checked = (f"; estimate within +-10% for {100 * v['within_10pct']:.0f}% of {v['n']} random compositions "
                   f"(mean abs error {100 * v['mean_abs_rel_error']:.1f}%)")
    print(f"teacher {1e3 * result.teacher_latency_s:.3f} ms on {result.device} ({result.backend}, "
          f"{result.num_threads} thread(s)){checked}: {Path(args.blocks) / 'latency_profile.json'}")
    if args.plot:
        from ..plots import latency_series, plot_estimated_vs_measured

        series = latency_series(result)
        if not series:
            raise UsageError("--plot draws the estimates against measured compositions: pass --compositions N > 0")
        path = plot_estimated_vs_measured(series, Path(args.blocks) / "latency_estimates.png", "latency (ms)")
        print(f"plots: {path}")
    return 0


# -- optimize -----------------------------------------------------------------
def optimize_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument("--blocks", required=True, metavar="DIR", help="the trained, profiled blocks directory")
    add_budgets(parser, several=True)
    parser.add_argument("--sweep", type=int_arg("--sweep", 1, "--sweep 8"), default=5,
                        help="without budgets: this many memory budgets from the smallest configuration to the "
                             "teacher (default: 5)")
    parser.add_argument("--accuracy-model", choices=("auto", "fitted", "additive", "multiplicative"), default="auto",
                        help="the accuracy estimate to maximize (default: auto, the fitted one when profiled)")
    parser.add_argument("--out", default=None, metavar="FILE", help="also write the picks as JSON to FILE")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--plot", action="store_true",
                        help="draw front_size.png and front_latency.png in --blocks: every measured composition, "
                             "the Pareto front and these picks")
    add_common(parser, threads_help="torch CPU threads, >= 1 (default: the latency profile's)")


def _budgets(args: argparse.Namespace, optimizer: Any) -> List[Tuple[Optional[float], Optional[float]]]:
    """(seconds, bytes) pairs: every combination of the budgets given, else a memory sweep."""
    from ..online.solver import cheapest

    latencies = [ms / 1e3 for ms in args.max_latency_ms] if args.max_latency_ms else [None]
    memories = [mb * 1e6 for mb in args.max_memory_mb] if args.max_memory_mb else [None]
    if args.max_latency_ms or args.max_memory_mb:
        return [(t, m) for t in latencies for m in memories]
    low, high = cheapest(optimizer.problem, "memory").memory, optimizer.profile.teacher_size_bytes
    n = args.sweep
    return [(None, low + (high - low) * (k / (n - 1) if n > 1 else 1.0)) for k in range(n)]


def _budget_text(latency_s: Optional[float], memory: Optional[float]) -> str:
    parts = ([f"<= {1e3 * latency_s:.3f} ms"] if latency_s is not None else []) + (
        [f"<= {memory / 1e6:.3f} MB"] if memory is not None else [])
    return ", ".join(parts) or "none"


def optimize(args: argparse.Namespace) -> int:
    """Print the configuration the optimizer picks for each budget (nothing is served)."""
    from ..online.optimizer import ScalingOptimizer
    from .inspect_store import format_table

    need_matplotlib(args)
    threads_from_profile(args.threads, args.blocks)
    optimizer = ScalingOptimizer.from_store(args.blocks, model_from_args(args), args.device,
                                            accuracy_model=args.accuracy_model)
    rows, picks = [], []
    for latency_s, memory in _budgets(args, optimizer):
        result = optimizer.update_model(latency_s, memory, fallback=True)  # installs it: the picks are real models
        sparsities = list(result.sparsities)
        picks.append({"max_latency_s": latency_s, "max_memory_bytes": memory, "sparsities": list(result.sparsities),
                      "feasible": result.feasible, "estimated_metric": result.estimated_metric,
                      "estimated_latency_s": result.estimated_latency_s, "model_bytes": result.model_bytes})
        rows.append([_budget_text(latency_s, memory), " ".join(f"{s:g}" for s in sparsities),
                     f"{result.estimated_metric:.4f}", f"{1e3 * result.estimated_latency_s:.3f}",
                     f"{result.model_bytes / 1e6:.3f}", "yes" if result.feasible else "no (closest)"])
    metric = optimizer.profile.metric_name
    print(format_table(["budget", "sparsity per block", f"est. {metric}", "est. ms", "MB", "feasible"], rows))
    print(f"teacher: {metric} {optimizer.profile.teacher_metric:.4f}, "
          f"{1e3 * optimizer.latency.teacher_latency_s:.3f} ms, {optimizer.profile.teacher_size_bytes / 1e6:.3f} MB; "
          f"accuracy model: {optimizer.accuracy_model}")
    if args.out:
        from ..blockmanager.atomic import write_text_atomic
        from ..blockmanager.store import claim_file

        write_text_atomic(claim_file(args.out, args.overwrite, "--out"), json.dumps({"metric_name": metric, "picks": picks}, indent=1))
        print(f"picks: {args.out}")
    if args.plot:
        from ..plots import Composition, measured_compositions, plot_accuracy_front

        points = measured_compositions(args.blocks)
        marked = [Composition.of(p["sparsities"], p["estimated_metric"], optimizer.profile, optimizer.latency)
                  for p in picks]
        paths = [plot_accuracy_front(points, Path(args.blocks) / f"front_{name}.png", x, marked, metric)
                 for name, x in (("size", "size_bytes"), ("latency", "latency_s"))]
        print("plots: " + ", ".join(str(p) for p in paths))
    return 0


# -- serve --------------------------------------------------------------------
def serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blocks", required=True, help="trained blocks directory with its profiles")
    add_model(parser, weights=False)
    parser.add_argument("--max-latency-ms", type=float_arg("--max-latency-ms", "--max-latency-ms 20"), default=None,
                        help="latency budget in milliseconds (default: none)")
    memory = parser.add_mutually_exclusive_group()
    memory.add_argument("--memory-fraction", type=float_arg("--memory-fraction", "--memory-fraction 0.5", maximum=1.0),
                        default=None, help="give the model this fraction, in (0, 1], of the memory available, "
                                           "polled while serving (default: no memory limit)")
    memory.add_argument("--max-memory-mb", type=float_arg("--max-memory-mb", "--max-memory-mb 64"), default=None,
                        help="a fixed memory budget in MB instead")
    parser.add_argument("--no-fallback", action="store_true",
                        help="fail (exit 1) when the first budget cannot be met, instead of serving the closest "
                             "configuration")
    parser.add_argument("--duration", type=float_arg("--duration", "--duration 10", finite=False), default=10.0,
                        help="seconds to serve, > 0; 'inf' serves until interrupted (default: 10)")
    parser.add_argument("--poll", type=float_arg("--poll", "--poll 0.1"), default=0.1,
                        help="budget poll interval in seconds, > 0 (default: 0.1)")
    add_common(parser, threads_help="torch CPU threads, >= 1 (default: the latency profile's)")


def serve(args: argparse.Namespace) -> int:
    """Build the model and the optimizer from the store, then serve for ``--duration`` seconds,
    re-optimizing whenever the budget moves."""
    from ..online.optimizer import ScalingOptimizer
    from ..online.runtime import Budget, OnDeviceRuntime, available_memory_bytes

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s")
    model = model_from_args(args)
    threads_from_profile(args.threads, args.blocks)
    optimizer = ScalingOptimizer.from_store(args.blocks, model, args.device)
    input_size = optimizer.store.manifest.model_input_size
    latency = None if args.max_latency_ms is None else args.max_latency_ms / 1e3

    def budget() -> Budget:
        if args.max_memory_mb is not None:
            return Budget(latency, args.max_memory_mb * 1e6)
        if args.memory_fraction is not None:
            return Budget(latency, args.memory_fraction * available_memory_bytes())
        return Budget(latency, None)

    if args.no_fallback:
        first = budget()  # raises InfeasibleBudgetError, saying which budget binds
        optimizer.update_model(first.max_latency_s, first.max_memory_bytes, fallback=False)

    x = torch.rand(input_size, device=args.device)
    served = 0
    start = time.perf_counter()
    with OnDeviceRuntime(optimizer, budget, poll_interval_s=args.poll, fallback=not args.no_fallback) as runtime:
        try:
            while time.perf_counter() - start < args.duration:  # inf: until interrupted
                runtime.infer(x)
                served += 1
        except KeyboardInterrupt:
            pass
    elapsed = time.perf_counter() - start
    print(f"served {served} inferences in {elapsed:.1f} s ({served / elapsed:.1f}/s); "
          f"{len(runtime.events)} budget change(s)")
    return 0


# -- export-onnx ----------------------------------------------------------------
def export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser, weights=False)
    parser.add_argument("--blocks", required=True, metavar="DIR", help="the (trained) blocks directory")
    parser.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--sparsities", type=float_list("--sparsities", "--sparsities 0.3", 0.0, 1.0), default=None,
                        metavar="LIST", help="the composition: one sparsity for every block, or one per block in "
                                             "block order (default: 0, the teacher)")
    choice.add_argument("--max-memory-mb", type=float_arg("--max-memory-mb", "--max-memory-mb 64"), default=None,
                        metavar="MB", help="instead, the optimizer's pick for this memory budget (needs profiles)")
    parser.add_argument("--max-latency-ms", type=float_arg("--max-latency-ms", "--max-latency-ms 20"), default=None,
                        metavar="MS", help="the optimizer's pick for this latency budget (needs profiles)")
    parser.add_argument("--opset", type=int_arg("--opset", 7, "--opset 17"), default=17,
                        help="ONNX opset version (default: 17)")
    add_common(parser)


def export_onnx(args: argparse.Namespace) -> int:
    """Write one composition of the store as an ONNX model (dynamic batch size)."""
    from ..online.onnx_export import export_onnx as export

    if args.sparsities is not None and args.max_latency_ms is not None:
        raise UsageError("--sparsities and --max-latency-ms choose the composition two ways: pass one of them")
    set_threads(args.threads)
    model = model_from_args(args)
    if args.max_memory_mb is not None or args.max_latency_ms is not None:
        from ..online.optimizer import ScalingOptimizer

        threads_from_profile(args.threads, args.blocks)
        optimizer = ScalingOptimizer.from_store(args.blocks, model, args.device)
        memory = None if args.max_memory_mb is None else args.max_memory_mb * 1e6
        latency = None if args.max_latency_ms is None else args.max_latency_ms / 1e3
        result = optimizer.update_model(latency, memory)
        live, sparsities, size = optimizer.model, list(result.sparsities), optimizer.store.manifest.model_input_size
    else:
        from ..blockmanager.switcher import BlockSwitcher

        switcher = BlockSwitcher(args.blocks, model, args.device, copy_model=False)
        sparsities = args.sparsities or [0.0]
        if len(sparsities) == 1:
            sparsities = sparsities * len(switcher.block_names)
        switcher.switch(sparsities)
        live, size = switcher.model, switcher.store.manifest.model_input_size
    from ..blockmanager.store import claim_file

    data = export(live, size, claim_file(args.out, args.overwrite, "--out"), opset_version=args.opset)
    print(f"exported sparsities {' '.join(f'{s:g}' for s in sparsities)} to {args.out} ({len(data) / 1e6:.2f} MB)")
    return 0
