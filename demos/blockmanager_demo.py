"""End to end: cut a CIFAR ResNet-18 into blocks, store their descendants, switch them live.

1. ``AutoBlockManager`` traces the model, finds its blocks and, for every sparsity,
   builds a descendant of each block (filters removed, weights kept from the teacher);
2. ``extract_all_blocks`` writes them to a blocks directory (manifest + safetensors);
3. ``BlockSwitcher`` rebuilds the model from that directory on a freshly built copy
   with random weights, and switches blocks to other sparsities in place.

The model has random weights (nothing is trained here), so the outputs mean nothing;
the demo shows the mechanics: shapes, sizes, exactness and switch cost.

Run from the repository root, with the package installed (``pip install -e .``) or
``PYTHONPATH=.``::

    python demos/blockmanager_demo.py [--out DIR] [--device cpu|cuda] [--quiet]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

import cv_tasks
from legodnn import AutoBlockManager, BlockSwitcher, CommonModelManager
from legodnn.blockmanager.measure import count_params

MODEL = "cifar_resnet18"
NUM_CLASSES = 10
INPUT_SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.3, 0.6, 0.8]
COMPRESS_LAYER_MAX_RATIO = 0.125
DEFAULT_OUT = Path("runs") / "blockmanager_demo" / "blocks"


def _build_model(seed: int, device: str) -> nn.Module:
    torch.manual_seed(seed)
    return cv_tasks.get_model(MODEL, num_classes=NUM_CLASSES).to(device).eval()


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _print_blocks(manager: AutoBlockManager) -> None:
    print(f"{'block':<9} {'entry -> exit':<38} {'convs':>5} {'conv params':>12}")
    for spec in manager.blocks:
        print(f"{spec.name:<9} {spec.entry + ' -> ' + spec.exit:<38} {spec.num_convs:>5} {spec.conv_params:>12,}")
    print(
        f"{len(manager.blocks)} blocks (at most {manager.max_convs_per_block} convs each) cover "
        f"{100 * manager.coverage:.1f}% of the model's {manager.total_conv_params:,} conv parameters"
    )


def _print_descendants(manager: AutoBlockManager, descendants: Sequence[Any]) -> None:
    print(f"{'block':<9} {'sparsity':>8} {'params':>11} {'MFLOPs':>9} {'KiB':>9}")
    for spec in manager.blocks:
        for i, d in enumerate(x for x in descendants if x.block == spec.name):
            name = spec.name if i == 0 else ""
            print(f"{name:<9} {d.sparsity:>8.1f} {d.params:>11,} {d.flops / 1e6:>9.1f} {d.bytes / 1024:>9.1f}")
    for s in manager.block_sparsity:
        at = [d for d in descendants if d.sparsity == s]
        print(
            f"{'all':<9} {s:>8.1f} {sum(d.params for d in at):>11,} {sum(d.flops for d in at) / 1e6:>9.1f} "
            f"{sum(d.bytes for d in at) / 1024:>9.1f}"
        )


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"blocks directory (default {DEFAULT_OUT})")
    parser.add_argument("--device", default=None, help="cuda if available, else cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bar while extracting")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()

    print(f"== model: {MODEL}, {NUM_CLASSES} classes, input {INPUT_SIZE}, device {device}")
    print("   RANDOM weights (untrained): outputs are meaningless, the demo shows the mechanics only")
    teacher = _build_model(seed=0, device=device)
    print(f"   {count_params(teacher):,} parameters")

    print(f"\n== AutoBlockManager: sparsities {SPARSITIES}, compress_layer_max_ratio {COMPRESS_LAYER_MAX_RATIO}")
    manager = AutoBlockManager(
        SPARSITIES, teacher, CommonModelManager(), INPUT_SIZE, COMPRESS_LAYER_MAX_RATIO, device,
        verbose=not args.quiet,
    )
    print(f"   traced and found blocks in {manager.find_seconds:.2f} s")
    _print_blocks(manager)

    print(f"\n== extract_all_blocks({str(args.out)!r})")
    start = time.perf_counter()
    descendants = manager.extract_all_blocks(str(args.out))
    print(
        f"   {len(descendants)} descendants written in {time.perf_counter() - start:.2f} s, "
        f"{_dir_bytes(args.out) / 2**20:.1f} MiB on disk"
    )
    _print_descendants(manager, descendants)

    print("\n== BlockSwitcher on a freshly built model (other random weights); every weight comes from the store")
    fresh = _build_model(seed=1, device=device)
    torch.manual_seed(2)
    x = torch.rand(INPUT_SIZE, device=device)
    with torch.no_grad():
        reference = teacher(x)
        fresh_differs = not torch.equal(fresh(x), reference)
    switcher = BlockSwitcher(str(args.out), fresh, device=device, model_manager=CommonModelManager())
    with torch.no_grad():
        exact = torch.equal(switcher.model(x), reference)
    print(f"   fresh model alone differs from the teacher: {fresh_differs}")
    print(f"   switcher at all-zero sparsity equals the teacher exactly (torch.equal): {exact}")

    n = len(manager.blocks)
    mixed = [SPARSITIES[min(i * len(SPARSITIES) // n, len(SPARSITIES) - 1)] for i in range(n)]
    plan = [
        ("all 0.8", [0.8] * n),
        ("mixed", mixed),
        ("back to 0", [0.0] * n),
        ("mixed again", mixed),
    ]
    switches: List[Dict[str, Any]] = []
    print("   changed: blocks replaced; disk: of those, read from the blocks directory (the rest came from")
    print("   the in-memory cache, or are the original blocks); ms: SwitchResult.seconds; params: live model")
    print(f"   {'configuration':<14} {'sparsities':<42} {'changed':>7} {'disk':>4} {'KiB read':>9} {'ms':>7} "
          f"{'params':>11}  output")
    for label, config in plan:
        result = switcher.switch(config)
        with torch.no_grad():
            out = switcher.model(x)
        if tuple(out.shape) != (INPUT_SIZE[0], NUM_CLASSES):
            raise RuntimeError(f"{label}: output shape {tuple(out.shape)}, expected {(INPUT_SIZE[0], NUM_CLASSES)}")
        params = count_params(switcher.model)
        print(
            f"   {label:<14} {str(list(result.sparsities)):<42} {len(result.changed):>7} {len(result.from_disk):>4} "
            f"{result.bytes_loaded / 1024:>9.1f} {result.seconds * 1e3:>7.2f} {params:>11,}  {tuple(out.shape)} ok"
        )
        switches.append({
            "label": label,
            "sparsities": list(result.sparsities),
            "changed": list(result.changed),
            "from_disk": list(result.from_disk),
            "bytes_loaded": result.bytes_loaded,
            "seconds": result.seconds,
            "params": params,
        })
        if config == [0.0] * n:
            with torch.no_grad():
                exact = exact and torch.equal(out, reference)
            print(f"   {'':<14} back at all-zero sparsity, equals the teacher exactly: {torch.equal(out, reference)}")

    elapsed = time.perf_counter() - started
    print(
        f"\n== done in {elapsed:.1f} s: {n} blocks, coverage {100 * manager.coverage:.1f}%, "
        f"{len(descendants)} descendants in {args.out}, exact at sparsity 0: {exact}, "
        f"{len(switches)} switches, smallest model {min(s['params'] for s in switches):,} params"
    )
    return {
        "num_blocks": n,
        "coverage": manager.coverage,
        "num_descendants": len(descendants),
        "exact": exact,
        "blocks_dir": str(args.out),
        "switches": switches,
        "seconds": elapsed,
    }


if __name__ == "__main__":
    main()
