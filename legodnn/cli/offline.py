"""The offline subcommands: ``extract``, ``retrain`` and ``profile``.

Each is the library call of its phase (``AutoBlockManager.extract_all_blocks``,
``BlockRetrainer.train_all_blocks``, ``BlockProfiler.profile_all_blocks``) with the model,
data and store named on the command line. ``retrain`` and ``profile`` also run under
``torchrun --nproc_per_node N -m legodnn ...``: the library shards the data over the
processes (``--batch-size`` is per process), rank 0 alone prints and writes, and the
others wait for it. Heavy modules (the block manager, tqdm, the
data sets) are imported inside the commands, so ``legodnn --help`` and ``legodnn serve``
never load them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict

from .args import (
    UsageError,
    add_common,
    add_data,
    add_model,
    float_arg,
    float_list,
    input_size_arg,
    int_arg,
)
from .models import block_manager_for, default_input_size, model_from_args, set_threads

__all__ = ["need_matplotlib", "extract_arguments", "extract", "retrain_arguments", "retrain",
           "profile_arguments", "profile"]

MODEL = """--model cv_tasks:cifar_resnet18 --model-kwargs '{"base_width": 8}'"""
WEIGHTS = "--weights runs/cli/teacher.safetensors"

EXTRACT_EXAMPLES = f"""examples:
  legodnn extract {MODEL} \\
      {WEIGHTS} --sparsities 0,0.3,0.6 --out runs/cli/blocks
  legodnn extract --model torchvision:resnet18 --input-size 1,3,224,224 --out runs/resnet18/blocks
"""

RETRAIN_EXAMPLES = f"""examples:
  legodnn retrain {MODEL} \\
      {WEIGHTS} --blocks runs/cli/blocks --out runs/cli/trained --data digits --epochs 1
  legodnn retrain {MODEL} \\
      {WEIGHTS} --blocks runs/cli/blocks --out runs/cli/trained-bf16 --data digits --epochs 1 --amp bf16 --channels-last
"""

PROFILE_EXAMPLES = f"""examples:
  legodnn profile {MODEL} \\
      {WEIGHTS} --blocks runs/cli/trained --data digits --plot
"""


def need_matplotlib(args: argparse.Namespace) -> None:
    """``--plot`` without matplotlib fails before the work, not after it."""
    if getattr(args, "plot", False):
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise UsageError("--plot needs matplotlib: pip install 'legodnn[demo]'") from exc


def add_fast_path(parser: argparse.ArgumentParser) -> None:
    """``--amp`` and ``--channels-last`` (:mod:`legodnn.offline.precision`)."""
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                        help="mixed precision for the forwards: bf16 (CPU or an Ampere+ GPU) or fp16 (CUDA, with "
                             "loss scaling); losses and weights stay fp32 (default: fp32)")
    parser.add_argument("--channels-last", action="store_true",
                        help="hold models and images in NHWC layout while running (faster convolutions on GPUs)")


def check_fast_path(args: argparse.Namespace) -> None:
    """``--amp`` that ``--device`` cannot run is a wrong command line (exit 2), found before any work."""
    from ..errors import LegoDNNError
    from ..validation import check_amp

    try:
        check_amp("--amp", args.amp, args.device)
    except LegoDNNError as exc:
        raise UsageError(str(exc)) from exc


def fast_path(args: argparse.Namespace) -> Dict[str, Any]:
    """The stages' keyword arguments for ``--amp`` and ``--channels-last``."""
    return {"amp": args.amp, "channels_last": args.channels_last}


# -- extract ------------------------------------------------------------------
def extract_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="the blocks directory to write")
    parser.add_argument("--sparsities", type=float_list("--sparsities", "--sparsities 0,0.3,0.6,0.8", 0.0, 1.0),
                        default=[0.0, 0.3, 0.6, 0.8], metavar="LIST",
                        help="fractions of each block's filters its descendants remove, in [0, 1); 0 (the "
                             "original block) is always added (default: 0,0.3,0.6,0.8)")
    parser.add_argument("--input-size", type=input_size_arg, default=None, metavar="N,C,H,W",
                        help="the input shape to trace with (default: cv_tasks' registered size, 224x224 for "
                             "torchvision, timm's own, else 1,3,32,32)")
    parser.add_argument("--compress-layer-max-ratio", default=0.125, metavar="RATIO",
                        type=float_arg("--compress-layer-max-ratio", "--compress-layer-max-ratio 0.125", maximum=1.0),
                        help="a block holds at most this fraction of the model's convolutions (at least 2; "
                             "default: 0.125)")
    parser.add_argument("--overwrite", action="store_true", help="replace a store of another model at --out")
    add_common(parser)


def extract(args: argparse.Namespace) -> int:
    """Cut the model into blocks and write every descendant."""
    from ..blockmanager.auto_block_manager import AutoBlockManager
    from ..model_manager.common_model_manager import CommonModelManager

    set_threads(args.threads)
    model = model_from_args(args)
    size = args.input_size or default_input_size(args.model, model)
    start = time.perf_counter()
    manager = AutoBlockManager(args.sparsities, model, CommonModelManager(), size, args.compress_layer_max_ratio,
                               args.device, verbose=not args.quiet)
    descendants = manager.extract_all_blocks(args.out, overwrite=args.overwrite)
    print(f"extracted {len(manager.blocks)} blocks ({100 * manager.coverage:.1f}% of the conv parameters) at "
          f"sparsities {', '.join(f'{s:g}' for s in manager.block_sparsity)}: {len(descendants)} descendants in "
          f"{args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


# -- retrain ------------------------------------------------------------------
def retrain_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument("--blocks", required=True, metavar="DIR", help="the extracted blocks directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="the trained blocks directory to write")
    add_data(parser)
    parser.add_argument("--epochs", type=int_arg("--epochs", 1, "--epochs 3"), default=3,
                        help="block distillation epochs (default: 3)")
    parser.add_argument("--composition-epochs", type=int_arg("--composition-epochs", 0, "--composition-epochs 2"),
                        default=None, help="epochs of composition-aware retraining after them (default: two "
                                           "thirds of --epochs for a classifier; 0: none)")
    parser.add_argument("--seed", type=int_arg("--seed", 0, "--seed 0"), default=0, help="random seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a store of another model at --out")
    add_parallel(parser)
    add_fast_path(parser)
    add_common(parser)


def add_parallel(parser: argparse.ArgumentParser) -> None:
    """``--parallel`` and ``--sync-batchnorm``: how processes under ``torchrun`` share the work
    (docs/distributed.md); with one process neither changes anything."""
    parser.add_argument("--parallel", choices=("data", "descendants"), default="data",
                        help="under torchrun: 'data' (default) gives each process a shard of the data and every "
                             "descendant (--batch-size is per process); 'descendants' gives each process every "
                             "batch (--batch-size is the step's) and its share of the descendants, by FLOPs")
    parser.add_argument("--sync-batchnorm", action="store_true",
                        help="under torchrun, data-parallel: the descendants' BatchNorm normalises with every "
                             "process's samples together, as one process over the whole batch does")


def parallel_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The retrainer's keyword arguments for ``--parallel`` and ``--sync-batchnorm``."""
    return {"parallel": args.parallel, "sync_batchnorm": args.sync_batchnorm}


def retrain(args: argparse.Namespace) -> int:
    """Distil every descendant from the teacher's blocks; resumes an interrupted run."""
    from ..offline.block_retrainer import BlockRetrainer
    from ..offline.precision import pin_memory, synchronize
    from .data import load_data

    check_fast_path(args)
    set_threads(args.threads)
    model = model_from_args(args)
    block_manager, model_manager, store = block_manager_for(args.blocks, model, args.device, not args.quiet)
    train, _ = load_data(args.data, store.manifest.model_input_size, args.batch_size, args.subset, args.seed)
    start = time.perf_counter()
    retrainer = BlockRetrainer(model, block_manager, model_manager, args.blocks, args.out, args.epochs,
                               pin_memory(train, args.device), device=args.device, verbose=not args.quiet,
                               composition_epochs=args.composition_epochs, seed=args.seed, overwrite=args.overwrite,
                               **fast_path(args), **parallel_options(args))
    retrainer.train_all_blocks()
    synchronize(args.device)
    if retrainer.ranks.is_main:  # under torchrun: one report, rank 0's
        count = len(block_manager.block_names) * (len(block_manager.block_sparsity) - 1)
        ranks = ""
        if retrainer.ranks.distributed:
            how = ", descendant-parallel" if args.parallel == "descendants" else ""
            ranks = f" on {retrainer.ranks.world_size} processes{how}"
        print(f"retrained {count} descendants for {args.epochs} epoch(s){ranks} in "
              f"{time.perf_counter() - start:.1f} s: {args.out}")
    return 0


# -- profile ------------------------------------------------------------------
def profile_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument("--blocks", required=True, metavar="DIR",
                        help="the trained blocks directory (the profiles are written into it)")
    add_data(parser)
    parser.add_argument("--compositions", type=int_arg("--compositions", 0, "--compositions 24"), default=24,
                        help="whole compositions measured to fit the accuracy estimate (default: 24; 0: none, the "
                             "optimizer then adds single-block drops)")
    parser.add_argument("--validate", type=int_arg("--validate", 0, "--validate 10"), default=10,
                        help="new random compositions measured to check the estimates (default: 10; 0: none)")
    parser.add_argument("--plot", action="store_true",
                        help="also draw accuracy_drop.png and, with --validate, accuracy_estimates.png in --blocks")
    parser.add_argument("--seed", type=int_arg("--seed", 0, "--seed 0"), default=0, help="random seed (default: 0)")
    add_fast_path(parser)
    add_common(parser)


def profile(args: argparse.Namespace) -> int:
    """Measure each descendant's accuracy drop (and fit the estimate on whole compositions)."""
    from ..offline.block_profiler import BlockProfiler
    from ..offline.precision import pin_memory
    from .data import load_data

    need_matplotlib(args)
    check_fast_path(args)
    set_threads(args.threads)
    model = model_from_args(args)
    block_manager, model_manager, store = block_manager_for(args.blocks, model, args.device, not args.quiet)
    size = store.manifest.model_input_size
    _, test = load_data(args.data, size, args.batch_size, args.subset, args.seed)
    profiler = BlockProfiler(model, block_manager, model_manager, args.blocks, pin_memory(test, args.device), size,
                             args.device, verbose=not args.quiet, **fast_path(args))
    result = profiler.profile_all_blocks(num_compositions=args.compositions, seed=args.seed)
    report = None
    if args.validate:
        report = profiler.validate_accuracy_model(num_compositions=args.validate, seed=args.seed + 1)
    if not profiler.ranks.is_main:  # under torchrun: rank 0 reports and draws
        return 0
    print(f"teacher {result.metric_name} {result.teacher_metric:.4f} on {result.num_test_samples} images; "
          f"{len(result.blocks)} descendants profiled: {Path(args.blocks) / 'block_profile.json'}")
    if report is not None:
        fitted = f", fitted {report.mean_abs_error_fitted:.4f}" if report.estimated_fitted else ""
        print(f"estimates on {args.validate} new compositions: mean abs error additive {report.mean_abs_error:.4f}"
              f"{fitted} (best: {report.best})")
    if args.plot:
        from ..plots import accuracy_series, plot_drop_heatmap, plot_estimated_vs_measured

        paths = [plot_drop_heatmap(result, Path(args.blocks) / "accuracy_drop.png")]
        if report is not None:
            path = Path(args.blocks) / "accuracy_estimates.png"
            paths.append(plot_estimated_vs_measured(accuracy_series(report), path, result.metric_name))
        print("plots: " + ", ".join(str(p) for p in paths))
    return 0
