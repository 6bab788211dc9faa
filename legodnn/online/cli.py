"""``legodnn-runtime``: start the on-device loop from a blocks directory and its profiles.

    legodnn-runtime --blocks runs/x/trained --model cv_tasks:get_model --model-kwargs '{"name": "cifar_resnet18"}' \\
        --input-size 1,3,32,32 --max-latency-ms 20 --memory-fraction 0.5 --duration 10

The device needs the model code (``--model`` names a factory, ``module:function``), the
trained blocks directory with ``block_profile.json`` and ``latency_profile.json``, and
only torch and numpy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
from typing import Callable, List, Optional

import torch

from .optimizer import ScalingOptimizer
from .runtime import Budget, OnDeviceRuntime, available_memory_bytes

__all__ = ["main"]


def _factory(spec: str) -> Callable[..., torch.nn.Module]:
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--model must look like 'package.module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="legodnn-runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", required=True, help="trained blocks directory with its profiles")
    parser.add_argument("--model", required=True, help="model factory, module:function")
    parser.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments for the factory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the profile's)")
    parser.add_argument("--max-latency-ms", type=float, default=None)
    parser.add_argument("--memory-fraction", type=float, default=None,
                        help="give the model this fraction of the memory available (default: no memory limit)")
    parser.add_argument("--max-memory-mb", type=float, default=None, help="a fixed memory budget instead")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to serve (0: until interrupted)")
    parser.add_argument("--poll", type=float, default=0.1, help="budget poll interval, seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    model = _factory(args.model)(**json.loads(args.model_kwargs)).eval()
    optimizer = ScalingOptimizer.from_store(args.blocks, model, args.device)
    input_size = optimizer.store.manifest.model_input_size
    torch.set_num_threads(args.threads or optimizer.latency.num_threads)
    latency = None if args.max_latency_ms is None else args.max_latency_ms / 1e3

    def budget() -> Budget:
        if args.max_memory_mb is not None:
            return Budget(latency, args.max_memory_mb * 1e6)
        if args.memory_fraction is not None:
            return Budget(latency, args.memory_fraction * available_memory_bytes())
        return Budget(latency, None)

    x = torch.rand(input_size, device=args.device)
    served = 0
    start = time.perf_counter()
    with OnDeviceRuntime(optimizer, budget, poll_interval_s=args.poll) as runtime:
        try:
            while args.duration <= 0 or time.perf_counter() - start < args.duration:
                runtime.infer(x)
                served += 1
        except KeyboardInterrupt:
            pass
    elapsed = time.perf_counter() - start
    print(f"served {served} inferences in {elapsed:.1f} s ({served / elapsed:.1f}/s); "
          f"{len(runtime.events)} budget change(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
