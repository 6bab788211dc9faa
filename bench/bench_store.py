"""Benchmark the device path on CIFAR ResNet-18: start-up from a store and block reads from disk.

Measures, on CPU with one thread, each time a median after warm-up:

* start-up: ``OnDeviceRuntime.from_store`` on a profiled store (the model built from
  code first, timed apart), and how many times it traces the model;
* a one-block switch read from the store (the descendant not in memory), against
  ``torch.load(weights_only=False)`` of the same block pickled as a module (how the
  original LegoDNN stores blocks; the bench writes that pickle itself) and against
  reading the same safetensors file with safetensors alone;
* a random full configuration read from the store, against ``torch.load`` of each of
  its pickled blocks;
* the first read of a descendant (its architecture is built then, once) and a switch
  served from memory.

"From disk" means from the store's files, which after warm-up sit in the OS page cache;
the baselines read theirs the same way. Accuracy and latency profiles are measured on
a few random images: the numbers they hold do not matter here, only that the store is
complete. Usage::

    python bench/bench_store.py --threads 1 --out bench/results_store.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import cv_tasks
from legodnn import (
    AutoBlockManager,
    BlockProfiler,
    CommonModelManager,
    LatencyEstimator,
    OnDeviceRuntime,
)
from legodnn.blockmanager import switcher as switcher_module
from legodnn.online.runtime import Budget

SPARSITIES = [0.0, 0.3, 0.6, 0.8]
SIZE = (1, 3, 32, 32)


def median_ms(fn: Callable[[], float], repeats: int, warmup: int = 3) -> float:
    """Median of what ``fn`` returns (seconds it timed itself), in milliseconds."""
    times = [fn() for _ in range(warmup + repeats)][warmup:]
    return 1e3 * statistics.median(times)


def timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return run


def build_store(root: Path) -> Path:
    """Extract and profile CIFAR ResNet-18 (accuracy on 16 random images, latency briefly)."""
    model = cv_tasks.get_model("cifar_resnet18", num_classes=10).eval()
    mm = CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    store = root / "blocks"
    bm.extract_all_blocks(str(store))
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)),
                        batch_size=16)
    BlockProfiler(model, bm, mm, str(store), loader, SIZE, "cpu", verbose=False).profile_all_blocks(num_compositions=0)
    LatencyEstimator(bm, mm, str(store), 3, SIZE, "cpu", num_threads=torch.get_num_threads(),
                     verbose=False).profile_all_blocks(num_compositions=0)
    return store


def run(repeats: int, workdir: Path) -> Dict[str, Any]:
    store = build_store(workdir)
    make_model = lambda: cv_tasks.get_model("cifar_resnet18", num_classes=10).eval()  # noqa: E731
    results: Dict[str, Any] = {"model": "cifar_resnet18", "sparsities": SPARSITIES, "threads": torch.get_num_threads(),
                               "torch": torch.__version__}

    # -- start-up -------------------------------------------------------------------------------
    traces: List[int] = []
    real_trace = switcher_module.trace_model

    def counting_trace(*args: Any, **kwargs: Any) -> Any:
        traces.append(1)
        return real_trace(*args, **kwargs)

    switcher_module.trace_model = counting_trace
    try:
        def startup() -> float:
            model = make_model()
            start = time.perf_counter()
            OnDeviceRuntime.from_store(str(store), model, lambda: Budget(None, None))
            return time.perf_counter() - start

        startup_ms = median_ms(startup, max(3, repeats // 6), warmup=1)
        runs = 1 + max(3, repeats // 6)
        model_ms = median_ms(timed(make_model), 5, warmup=1)
    finally:
        switcher_module.trace_model = real_trace
    results["startup"] = {"from_store_ms": startup_ms, "model_from_code_ms": model_ms,
                          "traces_per_startup": len(traces) / runs}

    # -- reads from disk ---------------------------------------------------------------------------
    runtime = OnDeviceRuntime.from_store(str(store), make_model(), lambda: Budget(None, None))
    switcher = runtime.optimizer.switcher
    names, n = switcher.block_names, len(switcher.block_names)
    zeros = [0.0] * n
    block = names[n // 2]
    pickles = workdir / "pickled"
    pickles.mkdir()
    for name in names:
        for s in SPARSITIES[1:]:
            module, _ = switcher._build(name, s)
            torch.save(module, pickles / f"{name}_{s}.pt")
    desc_file = switcher.store.root / switcher.store.descendant(block, 0.6).file

    def one_from_disk() -> float:
        switcher.switch(zeros)
        switcher.clear_cache()
        return switcher.switch({block: 0.6}).seconds

    def one_from_cache() -> float:
        switcher.switch(zeros)
        return switcher.switch({block: 0.6}).seconds

    rng = random.Random(0)
    configs = [[rng.choice(SPARSITIES[1:]) for _ in names] for _ in range(repeats + 3)]
    it = iter(configs * 2)

    def full_from_disk() -> float:
        switcher.switch(zeros)
        switcher.clear_cache()
        return switcher.switch(next(it)).seconds

    it_pickle = iter(configs * 2)

    def full_torch_load() -> float:
        cfg = next(it_pickle)
        start = time.perf_counter()
        for name, s in zip(names, cfg):
            torch.load(pickles / f"{name}_{s}.pt", weights_only=False)
        return time.perf_counter() - start

    def first_read() -> float:
        switcher._factory._skeletons.clear()  # the architecture is built on a descendant's first read
        return one_from_disk()

    results["one_block"] = {
        "block": block, "sparsity": 0.6, "bytes": switcher.store.descendant(block, 0.6).bytes,
        "switch_from_disk_ms": median_ms(one_from_disk, repeats),
        "torch_load_pickled_module_ms": median_ms(timed(lambda: torch.load(pickles / f"{block}_0.6.pt",
                                                                            weights_only=False)), repeats),
        "safetensors_load_file_ms": median_ms(timed(lambda: load_file(str(desc_file))), repeats),
        "first_read_ms": median_ms(first_read, max(3, repeats // 3)),
        "switch_from_cache_ms": median_ms(one_from_cache, repeats),
    }
    results["full_configuration"] = {
        "switch_from_disk_ms": median_ms(full_from_disk, repeats),
        "torch_load_pickled_blocks_ms": median_ms(full_torch_load, repeats),
    }
    one, full = results["one_block"], results["full_configuration"]
    results["ratios"] = {
        "one_block_vs_torch_load": one["torch_load_pickled_module_ms"] / one["switch_from_disk_ms"],
        "one_block_vs_safetensors": one["switch_from_disk_ms"] / one["safetensors_load_file_ms"],
        "full_vs_torch_load": full["torch_load_pickled_blocks_ms"] / full["switch_from_disk_ms"],
    }
    results["targets"] = {
        "start-up < 500 ms": results["startup"]["from_store_ms"] < 500,
        "one trace per start-up": results["startup"]["traces_per_startup"] == 1,
        "one block >= 3x faster than torch.load": results["ratios"]["one_block_vs_torch_load"] >= 3,
        "one block within 2x of safetensors alone": results["ratios"]["one_block_vs_safetensors"] <= 2,
        "full configuration >= 3x faster than torch.load": results["ratios"]["full_vs_torch_load"] >= 3,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.repeats, Path(tmp))
    s, one, full, r = results["startup"], results["one_block"], results["full_configuration"], results["ratios"]
    print(f"start-up from the store: {s['from_store_ms']:.0f} ms ({s['traces_per_startup']:g} trace; building the "
          f"model from code, not counted: {s['model_from_code_ms']:.0f} ms)")
    print(f"one block from disk ({one['bytes'] / 1e3:.0f} kB): {one['switch_from_disk_ms']:.2f} ms; torch.load of the "
          f"pickled module {one['torch_load_pickled_module_ms']:.2f} ms ({r['one_block_vs_torch_load']:.1f}x); "
          f"safetensors alone {one['safetensors_load_file_ms']:.2f} ms ({r['one_block_vs_safetensors']:.2f}x of it)")
    print(f"random full configuration from disk: {full['switch_from_disk_ms']:.2f} ms; torch.load of its blocks "
          f"{full['torch_load_pickled_blocks_ms']:.2f} ms ({r['full_vs_torch_load']:.1f}x)")
    print(f"first read of a descendant (architecture built): {one['first_read_ms']:.2f} ms; from memory: "
          f"{one['switch_from_cache_ms']:.3f} ms")
    for target, met in results["targets"].items():
        print(f"  [{'x' if met else ' '}] {target}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
