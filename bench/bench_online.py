"""Online-phase benchmark: latency estimation error, switching cost, throughput under switching.

    python bench/bench_online.py [--threads 1] [--compositions 30] [--out online.json]

On a CIFAR ResNet-18 (random weights: latency does not depend on them) with sparsities
[0, 0.3, 0.6, 0.8], in one run:
1. latency estimation: share of random compositions whose estimate is within +-10% of
   the measured latency, for the PyTorch backend with blocks timed in situ (the default)
   and alone, and for ONNX Runtime (blocks timed alone), at a fixed thread count;
2. switching: one ``update_model`` that changes k blocks, from cache and from disk,
   against rebuilding the model and loading a full state dict;
3. throughput: inferences per second of the on-device loop while the budget cycles
   through three budgets every 100 ms, against the same three configurations served for
   the same share of time without switching.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

from cv_tasks import get_model
from legodnn import (
    AutoBlockManager,
    BlockProfiler,
    Budget,
    CommonModelManager,
    LatencyEstimator,
    OnDeviceRuntime,
    ScalingOptimizer,
)

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.3, 0.6, 0.8]


def _latency(bm, mm, blocks_dir: str, backend: str, method: str, threads: int, runs: int, n: int) -> Dict[str, Any]:
    start = time.perf_counter()
    profile = LatencyEstimator(bm, mm, blocks_dir, runs, SIZE, "cpu", backend=backend, num_threads=threads,
                               verbose=False, method=method).profile_all_blocks(num_compositions=n)
    v = profile.validation
    return {
        "backend": backend,
        "method": method,
        "teacher_ms": 1e3 * profile.teacher_latency_s,
        "frame_ms": 1e3 * profile.frame_latency_s,
        "scale": profile.scale,
        "offset_ms": 1e3 * profile.offset_s,
        "within_10pct": v["within_10pct"],
        "within_10pct_raw": v["within_10pct_raw"],
        "mean_abs_rel_error": v["mean_abs_rel_error"],
        "mean_abs_rel_error_raw": v["mean_abs_rel_error_raw"],
        "seconds": time.perf_counter() - start,
    }


def _switching(opt: ScalingOptimizer, repeats: int) -> Dict[str, Any]:
    """Median update_model time when k blocks change, from cache and from disk."""
    names = opt.block_manager.block_names
    sw = opt.switcher
    out: Dict[str, Any] = {}
    for k in (1, 4, len(names)):
        target = [0.0] * len(names)
        for i in range(k):
            target[-1 - i] = 0.6  # the largest blocks sit last
        cached, disk = [], []
        for r in range(repeats):
            sw.switch([0.0] * len(names))
            if r % 2:
                sw.clear_cache()
            start = time.perf_counter()
            res = sw.switch(target)
            (disk if res.bytes_loaded else cached).append(time.perf_counter() - start)
        out[f"k={k}"] = {"cache_ms": 1e3 * statistics.median(cached), "disk_ms": 1e3 * statistics.median(disk)}
    return out


def _reload_baseline(repeats: int) -> float:
    model = get_model("cifar_resnet18", num_classes=10)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "teacher.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fresh = get_model("cifar_resnet18", num_classes=10)
            fresh.load_state_dict(load_file(path))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _throughput(opt: ScalingOptimizer, seconds: float, switching: bool) -> Dict[str, Any]:
    problem = opt.problem
    sizes = [problem.frame_memory + sum(m[k] for m in problem.memories) for k in range(len(SPARSITIES))]
    budgets = [Budget(None, sizes[0] * 1.01), Budget(None, (sizes[0] + sizes[-1]) / 2), Budget(None, sizes[-1] * 1.01)]
    state = {"i": 0}
    runtime = OnDeviceRuntime(opt, lambda: budgets[state["i"]], poll_interval_s=0.02, threshold=0.01)
    stop = threading.Event()

    def change() -> None:
        while not stop.wait(0.1):
            state["i"] = (state["i"] + 1) % len(budgets)

    x = torch.rand(SIZE)
    served = 0
    with runtime:
        changer = threading.Thread(target=change)
        start = time.perf_counter()
        if switching:
            changer.start()
            while time.perf_counter() - start < seconds:
                runtime.infer(x)
                served += 1
            stop.set()
            changer.join()
        else:  # the same configurations for the same share of time, without switching
            for i in range(len(budgets)):
                state["i"] = i
                runtime.step()
                phase = time.perf_counter()
                while time.perf_counter() - phase < seconds / len(budgets):
                    runtime.infer(x)
                    served += 1
        elapsed = time.perf_counter() - start
    return {"inferences_per_s": served / elapsed, "budget_changes": len(runtime.events)}


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per block/model (median)")
    parser.add_argument("--compositions", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput test length")
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: Dict[str, Any] = {"threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        model = get_model("cifar_resnet18", num_classes=10).eval()
        mm = CommonModelManager()
        bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
        blocks = str(Path(tmp) / "blocks")
        bm.extract_all_blocks(blocks)
        data = TensorDataset(torch.randn(32, *SIZE[1:]), torch.randint(0, 10, (32,)))
        BlockProfiler(model, bm, mm, blocks, DataLoader(data, batch_size=32), SIZE, "cpu",
                      verbose=False).profile_all_blocks()
        variants = ([] if args.skip_onnx else [("onnxruntime", "isolated")]) + [("torch", "isolated"),
                                                                               ("torch", "in_situ")]
        for backend, method in variants:  # torch in situ last: the profile the optimizer reads
            r = _latency(bm, mm, blocks, backend, method, args.threads, args.runs, args.compositions)
            results[f"latency_{backend}_{method}"] = r
            print(f"latency [{backend}, blocks timed {method}, {args.threads} thread(s)]: teacher {r['teacher_ms']:.2f} ms, "
                  f"{100 * r['within_10pct']:.0f}% of {args.compositions} compositions within +-10% "
                  f"(plain sum: {100 * r['within_10pct_raw']:.0f}%), mean |error| "
                  f"{100 * r['mean_abs_rel_error']:.1f}% (plain sum {100 * r['mean_abs_rel_error_raw']:.1f}%), "
                  f"calibration scale {r['scale']:.3f} offset {r['offset_ms']:.3f} ms")
        opt = ScalingOptimizer(blocks, SIZE, bm, mm, "cpu")
        baseline = _reload_baseline(args.repeats)
        sw = _switching(opt, args.repeats)
        results["switching"] = sw
        results["reload_baseline_ms"] = 1e3 * baseline
        print(f"full reload (build model + load_state_dict from safetensors): {1e3 * baseline:.2f} ms")
        for k, v in sw.items():
            print(f"switch {k:5s}: cache {v['cache_ms']:.3f} ms ({1e3 * baseline / v['cache_ms']:.0f}x faster than "
                  f"reload), disk {v['disk_ms']:.2f} ms ({1e3 * baseline / v['disk_ms']:.1f}x)")
        still = _throughput(opt, args.seconds, switching=False)
        moving = _throughput(opt, args.seconds, switching=True)
        results["throughput"] = {"fixed": still, "switching": moving}
        print(f"throughput: {still['inferences_per_s']:.1f} inf/s with fixed budgets, "
              f"{moving['inferences_per_s']:.1f} inf/s with the budget changing every 100 ms "
              f"({moving['budget_changes']} re-optimizations; ratio {moving['inferences_per_s'] / still['inferences_per_s']:.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
