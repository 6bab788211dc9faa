"""Benchmark the block manager on CIFAR ResNet-18: extraction, and block switching vs full reload.

Measures, on CPU:

* ``AutoBlockManager`` construction (tracing + block finding) and ``extract_all_blocks``
  (every descendant built, measured and written), with blocks, coverage and store size;
* a one-block ``BlockSwitcher.switch`` served from the in-memory cache and one read from
  the blocks directory, and an all-blocks switch from the cache;
* the baseline a switch replaces: build the model from code and ``load_state_dict`` the
  whole teacher state dict, from a safetensors file and from memory.

Every time reported is a median over ``--repeats`` runs after a warm-up. "From disk"
means read from the store's files, which after the warm-up sit in the OS page cache; the
file baseline reads its file the same way.

Usage (from the repository root, with the package installed or ``PYTHONPATH=.``)::

    python bench/bench_blockmanager.py --threads 1 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import cv_tasks
from legodnn import AutoBlockManager, BlockSwitcher, SwitchResult

MODEL = "cifar_resnet18"
NUM_CLASSES = 100
INPUT_SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.3, 0.6, 0.8]
RATIO = 0.125
WARMUP = 5

# targets from the LegoDNN design: extraction is interactive, a switch is far cheaper than a reload
TARGET_EXTRACT_S = 5.0
TARGET_CACHED_SWITCH_S = 1e-3
TARGET_SPEEDUP = 20.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_model(seed: int) -> nn.Module:
    seed_everything(seed)
    return cv_tasks.get_model(MODEL, num_classes=NUM_CLASSES).eval()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_of(fn: Callable[[], Any], repeats: int, warmup: int = WARMUP) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_switch(
    switcher: BlockSwitcher,
    target: Sequence[float],
    back: Sequence[float],
    repeats: int,
    expect_disk: bool,
    before: Optional[Callable[[], None]] = None,
) -> Dict[str, float]:
    """Medians of ``SwitchResult.seconds`` and of the wall time of ``switch(target)``.

    Each run first switches to ``back`` (untimed), calls ``before`` (untimed), then times
    the switch to ``target``; the first ``WARMUP`` runs are not recorded. Checks that every
    recorded switch changed something and came from the cache, or from disk when
    ``expect_disk``, so a median never mixes the two.
    """
    inner, wall, loaded = [], [], []
    for i in range(WARMUP + repeats):
        switcher.switch(back)
        if before is not None:
            before()
        start = time.perf_counter()
        result: SwitchResult = switcher.switch(target)
        seconds = time.perf_counter() - start
        if i < WARMUP:  # warm-up switches fill the cache
            continue
        if not result.changed:
            raise RuntimeError(f"switch {i} changed nothing: {result}")
        if bool(result.from_disk) != expect_disk:
            where = "disk" if expect_disk else "the cache"
            raise RuntimeError(f"switch {i} was expected to come from {where}: {result}")
        inner.append(result.seconds)
        wall.append(seconds)
        loaded.append(result.bytes_loaded)
    return {
        "seconds": statistics.median(inner),
        "wall_seconds": statistics.median(wall),
        "bytes_loaded": statistics.median(loaded),
    }


def run(repeats: int, workdir: Path, seed: int = 0) -> Dict[str, Any]:
    results: Dict[str, Any] = {}

    # -- extraction ---------------------------------------------------------------------
    teacher = build_model(seed)
    start = time.perf_counter()
    manager = AutoBlockManager(SPARSITIES, teacher, None, INPUT_SIZE, RATIO, verbose=False)
    construct_s = time.perf_counter() - start
    blocks_dir = workdir / "blocks"
    start = time.perf_counter()
    descendants = manager.extract_all_blocks(str(blocks_dir))
    extract_s = time.perf_counter() - start
    results["extraction"] = {
        "construct_seconds": construct_s,
        "extract_seconds": extract_s,
        "total_seconds": construct_s + extract_s,
        "num_blocks": len(manager.blocks),
        "num_descendants": len(descendants),
        "coverage": manager.coverage,
        "store_mib": dir_bytes(blocks_dir) / 2**20,
    }

    # -- switching ----------------------------------------------------------------------
    names = manager.block_names
    n = len(names)
    block = n - 1  # the largest block: the most weights to load
    x = torch.rand(INPUT_SIZE)
    with torch.no_grad():
        reference = teacher(x)

    def one_block(s: float) -> List[float]:
        config = [0.0] * n
        config[block] = s
        return config

    switcher = BlockSwitcher(str(blocks_dir), build_model(seed + 1))
    with torch.no_grad():
        if not torch.equal(switcher.model(x), reference):
            raise RuntimeError("the switcher at sparsity 0 does not reproduce the teacher")
    zeros = [0.0] * n
    # 0.0 is the original block, always in memory; the timed switch is always 0.0 -> 0.6
    cached = time_switch(switcher, one_block(0.6), zeros, repeats, expect_disk=False)
    disk = time_switch(switcher, one_block(0.6), zeros, repeats, expect_disk=True, before=switcher.clear_cache)
    all_cached = time_switch(switcher, [0.6] * n, zeros, repeats, expect_disk=False)

    results["switch"] = {
        "block": names[block],
        "block_bytes_at_0.6": switcher.store.descendant(names[block], 0.6).bytes,
        "one_block_cached": cached,
        "one_block_disk": disk,
        "all_blocks_cached": all_cached,
    }

    # -- baseline: rebuild the whole model and load the teacher's weights ---------------
    state = {k: v.contiguous() for k, v in teacher.state_dict().items()}
    teacher_file = workdir / "teacher.safetensors"
    save_file(state, str(teacher_file))

    def reload_from_file() -> None:
        model = cv_tasks.get_model(MODEL, num_classes=NUM_CLASSES)
        model.load_state_dict(load_file(str(teacher_file)))
        model.eval()

    def reload_from_memory() -> None:
        model = cv_tasks.get_model(MODEL, num_classes=NUM_CLASSES)
        model.load_state_dict(state)
        model.eval()

    def build_only() -> None:
        cv_tasks.get_model(MODEL, num_classes=NUM_CLASSES).eval()

    baseline_file = median_of(reload_from_file, repeats)
    baseline_memory = median_of(reload_from_memory, repeats)
    results["baseline"] = {
        "reload_from_file_seconds": baseline_file,
        "reload_from_memory_seconds": baseline_memory,
        "build_only_seconds": median_of(build_only, repeats),
        "teacher_file_mib": teacher_file.stat().st_size / 2**20,
    }
    results["ratios"] = {
        "file_over_cached": baseline_file / cached["seconds"],
        "file_over_disk": baseline_file / disk["seconds"],
        "memory_over_cached": baseline_memory / cached["seconds"],
        "memory_over_disk": baseline_memory / disk["seconds"],
    }
    results["targets"] = {
        f"extraction < {TARGET_EXTRACT_S:g} s": results["extraction"]["total_seconds"] < TARGET_EXTRACT_S,
        f"cached one-block switch < {TARGET_CACHED_SWITCH_S * 1e3:g} ms": cached["seconds"] < TARGET_CACHED_SWITCH_S,
        f"cached switch >= {TARGET_SPEEDUP:g}x faster than reload from file": (
            results["ratios"]["file_over_cached"] >= TARGET_SPEEDUP
        ),
        f"cached switch >= {TARGET_SPEEDUP:g}x faster than reload from memory": (
            results["ratios"]["memory_over_cached"] >= TARGET_SPEEDUP
        ),
    }
    return results


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f} ms"


def report(results: Dict[str, Any], env: Dict[str, Any]) -> str:
    ex, sw, base, ratio = results["extraction"], results["switch"], results["baseline"], results["ratios"]
    lines = [
        f"legodnn block manager benchmark: {MODEL} ({NUM_CLASSES} classes), input {INPUT_SIZE}, "
        f"sparsities {SPARSITIES}",
        f"torch {env['torch']}, {env['threads']} thread(s), {env['cpu']}, medians of {env['repeats']} runs",
        "",
        "extraction (one run each, not a median)",
        f"  AutoBlockManager(...)       {ms(ex['construct_seconds'])}   tracing + block finding",
        f"  extract_all_blocks(...)     {ms(ex['extract_seconds'])}   {ex['num_descendants']} descendants built, "
        f"measured, stored",
        f"  total                       {ms(ex['total_seconds'])}",
        f"  blocks {ex['num_blocks']}, coverage {100 * ex['coverage']:.1f}% of conv params, "
        f"store {ex['store_mib']:.1f} MiB",
        "",
        f"switching (one block = {sw['block']}, {sw['block_bytes_at_0.6'] / 2**20:.2f} MiB at sparsity 0.6)",
        "                                 SwitchResult.seconds   wall of switch()   bytes loaded",
    ]
    for label, key in [
        ("one block, from cache", "one_block_cached"),
        ("one block, from disk", "one_block_disk"),
        (f"all {ex['num_blocks']} blocks, from cache", "all_blocks_cached"),
    ]:
        r = sw[key]
        lines.append(f"  {label:<30} {ms(r['seconds'])}           {ms(r['wall_seconds'])}   {r['bytes_loaded']:>12,.0f}")
    lines += [
        "",
        f"baseline: get_model(...) + load_state_dict(teacher, {base['teacher_file_mib']:.1f} MiB)",
        f"  from a safetensors file     {ms(base['reload_from_file_seconds'])}",
        f"  from memory                 {ms(base['reload_from_memory_seconds'])}",
        f"  (of which get_model alone   {ms(base['build_only_seconds'])})",
        "",
        "(from disk: read from the store's files, which sit in the OS page cache, as the baseline's file does)",
        "",
        "speed-up of a one-block switch over a full reload",
        "                           from cache    from disk",
        f"  reload from file        {ratio['file_over_cached']:9.1f}x   {ratio['file_over_disk']:9.1f}x",
        f"  reload from memory      {ratio['memory_over_cached']:9.1f}x   {ratio['memory_over_disk']:9.1f}x",
        "",
        "targets",
    ]
    lines += [f"  [{'PASS' if ok else 'FAIL'}] {name}" for name, ok in results["targets"].items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per measurement (default 50)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON to this path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "seed": args.seed,
    }
    with tempfile.TemporaryDirectory(prefix="legodnn-bench-") as tmp:
        results = run(args.repeats, Path(tmp), args.seed)
    print(report(results, env))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"benchmark": "blockmanager", "model": MODEL, "num_classes": NUM_CLASSES,
                   "input_size": list(INPUT_SIZE), "sparsities": SPARSITIES, "env": env, **results}
        args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
