"""What every task demo shares: run options, the device and thread set-up, model lists
checked against the registry, and the results file.

The demos differ in data and teacher training; these few lines are the same in each, so
they live here once and every demo answers ``--device``, ``--threads``, ``--quiet`` and
``--seed`` alike.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Sequence

import torch

from cv_tasks.registry import get_model_info, list_models
from legodnn.blockmanager.store import atomic_write_text

__all__ = ["DemoRun", "add_run_options", "start_run", "task_models", "write_results"]


def add_run_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--quiet``, ``--device``, ``--threads`` and ``--seed``."""
    parser.add_argument("--quiet", action="store_true", help="print nothing, show no progress bars")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser


@dataclass(frozen=True)
class DemoRun:
    """The device a demo runs on and how it talks (``say`` prints unless ``--quiet``)."""

    device: str
    verbose: bool
    say: Callable[..., None]


def start_run(args: argparse.Namespace) -> DemoRun:
    """Apply ``--threads`` and pick the device (CUDA when there, unless ``--device``)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    verbose = not args.quiet

    def say(*text: Any) -> None:
        if verbose:
            print(*text, flush=True)

    return DemoRun(device, verbose, say)


def task_models(task: str, names: Sequence[str]) -> List[str]:
    """``names`` (blanks dropped), each checked to be a registered model of ``task``."""
    known = [n for n in list_models() if get_model_info(n).task == task]
    chosen = [n.strip() for n in names if n.strip()]
    for name in chosen:
        if name not in known:
            raise ValueError(f"{name!r} is not a registered model of task {task!r}; pick from {known}")
    if not chosen:
        raise ValueError(f"no model given; pick from {known}")
    return chosen


def write_results(out: Path, results: Any) -> Path:
    """Write ``results`` as ``out/results.json`` (atomically) and return its path."""
    path = Path(out) / "results.json"
    atomic_write_text(path, json.dumps(results, indent=1))
    return path
