"""Does legodnn work on a model it was never tuned for? The checks of ``tests/test_zoo.py``,
for any timm or torchvision model by name.

    python bench/zoo_check.py timm:skresnet18 timm:mobileone_s0 torchvision:regnet_x_400mf [--size 64]

Per model: the block manager at sparsities [0, .3, .6, .8] and ratio 0.125 on a dummy
input of ``--size`` pixels (a timm model with a fixed input size gets its own), then
sparsity 0 composed must equal the model bit for bit, a random composition must run with
finite outputs of the model's shapes, and every block at 0.8 must have fewer parameters.
Prints one line per model: ``pass`` with blocks, conv coverage and the parameter cut at
all-0.8; ``refused`` with the legodnn error (a clear refusal is an acceptable outcome);
``FAIL`` for a check that does not hold; ``CRASH`` for any other exception. Exits 1 if
any model failed or crashed. Random weights, eval mode, one thread.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any, List

import torch
from torch import nn

from legodnn import AutoBlockManager, LegoDNNError
from legodnn.blockmanager.measure import count_params

SPARSITIES = [0.0, 0.3, 0.6, 0.8]


def build(name: str) -> tuple:
    """The model and its input side for ``timm:NAME`` or ``torchvision:NAME``."""
    source, _, model = name.partition(":")
    if source == "timm":
        import timm

        m = timm.create_model(model, pretrained=False)
        cfg = getattr(m, "pretrained_cfg", None) or {}
        return m, (cfg["input_size"][-1] if cfg.get("fixed_input_size") else None)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(model, weights=None), None
    raise SystemExit(f"zoo_check: name models as timm:NAME or torchvision:NAME, got {name!r}")


def _tensors(out: Any) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def check(name: str, size: int) -> str:
    """One model's line; raises nothing."""
    start = time.perf_counter()
    try:
        model, fixed = build(name)
        model.eval()
        side = fixed or size
        bm = AutoBlockManager(SPARSITIES, model, None, (1, 3, side, side), 0.125, verbose=False)
        x = torch.rand(2, 3, side, side)
        with torch.no_grad():
            reference = _tensors(model(x))
            exact = _tensors(bm.compose({s.name: bm.get_descendant(s.name, 0.0) for s in bm.blocks})(x))
            rng = random.Random(name)
            mixed = _tensors(bm.compose({s.name: bm.get_descendant(s.name, rng.choice(SPARSITIES))
                                         for s in bm.blocks})(x))
        smallest = bm.compose({s.name: bm.get_descendant(s.name, 0.8) for s in bm.blocks})
        cut = 1 - count_params(smallest) / count_params(model)
        failed = []
        if len(exact) != len(reference) or not all(torch.equal(a, b) for a, b in zip(exact, reference)):
            failed.append("sparsity 0 differs from the model")
        if [t.shape for t in mixed] != [t.shape for t in reference] or not all(torch.isfinite(t).all() for t in mixed):
            failed.append("a random composition gives other shapes or non-finite outputs")
        if not cut > 0:
            failed.append("every block at 0.8 is not smaller")
        seconds = time.perf_counter() - start
        if failed:
            return f"{name:34s} FAIL     {'; '.join(failed)} ({seconds:.1f} s)"
        linear = sum(count_params(m) for m in model.modules() if isinstance(m, nn.Linear))
        return (f"{name:34s} pass     {len(bm.blocks):3d} blocks, conv coverage {100 * bm.coverage:5.1f}%, "
                f"cut at all-0.8 {100 * cut:5.1f}%{'' if linear else ', no Linear'} ({seconds:.1f} s)")
    except LegoDNNError as exc:
        return f"{name:34s} refused  {type(exc).__name__}: {str(exc)[:160]} ({time.perf_counter() - start:.1f} s)"
    except Exception as exc:  # noqa: BLE001 - a crash is what this script looks for
        return f"{name:34s} CRASH    {type(exc).__name__}: {str(exc)[:160]}"


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="timm:NAME or torchvision:NAME")
    parser.add_argument("--size", type=int, default=64, help="the dummy input's side in pixels (default 64)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bad = 0
    for name in args.models:
        line = check(name, args.size)
        bad += " FAIL " in line or " CRASH " in line
        print(line, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
