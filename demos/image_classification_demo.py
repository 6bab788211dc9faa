"""LegoDNN end to end on real images: teacher, blocks, retraining, profiling, optimizer, hot-swap.

1. **Data.** CIFAR-10 when ``--data ROOT`` holds it (``ROOT/cifar-10-batches-py``) or it
   can be downloaded there; otherwise, and by default, scikit-learn's 1,797 handwritten
   digits (real images shipped inside the scikit-learn wheel, upsampled to 32x32 RGB), so
   the demo runs on a machine without network. The output says which data is used.
2. **Teacher.** A CIFAR ResNet-18 of base width 16 (16-32-64-128 channels, 1/16 of the
   FLOPs of the usual 64; width 8 with ``--quick``), trained from scratch (or loaded with
   ``--teacher PATH``).
3. **Blocks.** ``AutoBlockManager`` cuts it into 8 blocks and ``extract_all_blocks``
   writes every block at sparsities 0, 0.3, 0.6 and 0.8: 4^8 = 65,536 descendant models.
4. **Retraining.** ``BlockRetrainer`` distils every pruned block from the teacher's block,
   then trains sampled whole compositions end to end against the teacher
   (composition-aware retraining).
5. **Profiling.** ``BlockProfiler`` measures each block's accuracy drop, size and FLOPs
   and, in the same pass, whole compositions, on which it fits the accuracy estimate the
   optimizer maximizes; new random models check it.
6. **Descendants.** A table of composed models: size and FLOPs (also as a share of the
   teacher's), estimated and measured accuracy.
7. **Online.** Latency of every block on this machine, the optimizer's choice under
   budgets given as fractions of the teacher's latency and size, the hot-swap, and two
   plots (the accuracy/size front, the per-block drops) when matplotlib is installed.

Times (wall and CPU seconds per step) are printed as the run goes; docs/demos.md has
those measured here. The torch thread count defaults to the cores other programs leave
idle (from the load average) and is printed; ``--threads N`` sets it. Run from the
repository root, with the package installed with its demo extra
(``pip install -e ".[demo]"``) or ``PYTHONPATH=.``::

    python demos/image_classification_demo.py [--quick] [--data ROOT] [--out DIR] [--threads N] [--quiet]

Everything is written under ``--out`` (replacing an earlier run there):
``teacher.safetensors`` (reusable with ``--teacher``), ``blocks/`` (untrained
descendants), ``trained_blocks/`` (retrained, with the profiles, ``block_profile.csv`` and
the plots ``front_size.png`` and ``accuracy_drop.png``) and ``results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

import cv_tasks
from cv_tasks.image_classification import datasets
from cv_tasks.image_classification.train import (
    evaluate,
    load_weights,
    save_weights,
    train_classifier,
)
from legodnn import (
    AutoBlockManager,
    BlockProfiler,
    BlockRetrainer,
    CommonModelManager,
    InfeasibleBudgetError,
    LatencyEstimator,
    LatencyProfile,
    ModelProfile,
    ScalingOptimizer,
)
from legodnn.blockmanager.measure import count_params
from legodnn.offline import AccuracyModelReport, FittedAccuracyModel
from legodnn.offline.accuracy_fit import ACCURACY_ESTIMATE_JSON

MODEL = "cifar_resnet18"
BASE_WIDTH = 16
INPUT_SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.3, 0.6, 0.8]
COMPRESS_LAYER_MAX_RATIO = 0.125
DEFAULT_OUT = Path("runs") / "image_classification"
DIGITS_EPOCHS, QUICK_EPOCHS = 4, 4  # teacher epochs on the digits: full set / --quick subset


def busy_cores_now(interval: float = 0.3, stat: Path = Path("/proc/stat")) -> Optional[float]:
    """How many cores other programs keep busy right now, from the kernel's CPU counters
    sampled ``interval`` seconds apart; ``None`` where there are none (not Linux).

    The load average lags: a minute after a big job (an install) ends, it still says a
    core is busy, and a demo started then would run on half the machine.
    """

    def sample() -> Optional[Tuple[int, int]]:
        try:
            fields = stat.read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        if not fields or fields[0] != "cpu" or len(fields) < 6:
            return None
        ticks = [int(v) for v in fields[1:]]
        return sum(ticks[:8]), ticks[3] + ticks[4]  # all time (guest is inside user), idle + iowait

    first = sample()
    if first is None:
        return None
    time.sleep(interval)
    second = sample()
    if second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    cores = os.cpu_count() or 1
    return cores * (1.0 - idle / total)


def default_threads() -> Tuple[int, str]:
    """Torch CPU threads for this machine now, and why: one per core that other programs leave
    idle (sampled now; the 1-minute load average where the kernel's counters are missing),
    at least 1, at most 4.

    Two threads on a machine whose other core is busy wait on each other at every op: a run
    that took 4 minutes with one thread took 12 with two.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = busy_cores_now()
    if busy is not None:
        idle = max(1, min(4, cores - math.floor(busy + 0.5)))
        return idle, f"{cores} cores, {busy:.1f} busy now"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return max(1, min(4, cores)), f"{cores} cores"
    idle = max(1, min(4, cores - math.floor(load + 0.5)))
    return idle, f"{cores} cores, load average {load:.1f}"


@dataclass(frozen=True)
class Settings:
    """How long each step trains, on how much data, and how much each step measures."""

    epochs: int
    block_epochs: int
    batch_size: int
    lr: float
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    random_compositions: int = 6
    base_width: int = BASE_WIDTH
    composition_epochs: Optional[int] = None  # None: two thirds of block_epochs, at least 1
    profile_compositions: int = 24  # whole compositions measured to fit the accuracy estimate
    latency_runs: int = 30  # timed runs per descendant
    latency_compositions: int = 20  # random compositions to calibrate and to check the latency estimate

    @classmethod
    def defaults(cls, dataset: str, quick: bool = False) -> "Settings":
        """Defaults per data set; ``quick`` trims them to a run of seconds (a smaller teacher, subsets)."""
        if quick:
            return cls(epochs=QUICK_EPOCHS, block_epochs=1, batch_size=32, lr=0.05, train_subset=512,
                       test_subset=160, random_compositions=2, base_width=8, composition_epochs=1,
                       profile_compositions=6, latency_runs=5, latency_compositions=4)
        if dataset == "digits":
            return cls(epochs=DIGITS_EPOCHS, block_epochs=2, batch_size=64, lr=0.05, composition_epochs=1,
                       profile_compositions=12, latency_runs=10, latency_compositions=8)
        return cls(epochs=30, block_epochs=10, batch_size=128, lr=0.1)  # CIFAR: hours on a CPU, minutes on a GPU

    @property
    def composition_epochs_or_default(self) -> int:
        """The composition-aware epochs this run trains (the retrainer's default rule when unset)."""
        if self.composition_epochs is not None:
            return self.composition_epochs
        return max(1, (2 * self.block_epochs) // 3)


@dataclass
class DemoData:
    """The data the demo runs on, and a sentence saying what it is."""

    name: str
    description: str
    num_classes: int
    train_loader: DataLoader
    test_loader: DataLoader


# -- printing and timing --------------------------------------------------------
@contextlib.contextmanager
def step(title: str, timings: Dict[str, float], key: str, cpu: Optional[Dict[str, float]] = None) -> Iterator[None]:
    """Print a step's title, run it, print and record its wall time (and, into ``cpu``, the CPU
    seconds of this process: on a machine other programs keep busy, wall time says little)."""
    print(f"\n== {title}", flush=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    yield
    timings[key] = time.perf_counter() - start
    used = time.process_time() - start_cpu
    if cpu is not None:
        cpu[key] = used
    print(f"   [{key}: {timings[key]:.1f} s, {used:.1f} CPU s]", flush=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fmt_sparsities(config: Sequence[float]) -> str:
    return " ".join(f"{s:.1f}" for s in config)


# -- steps ----------------------------------------------------------------------
def load_data(
    data_root: Optional[Path],
    dataset: str = "cifar10",
    quick: bool = False,
    download: bool = True,
    seed: int = 0,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
) -> DemoData:
    """CIFAR-10/100 from ``data_root`` (downloaded there if missing and ``download``), else the digits.

    Batch size and subsets are the data set's :meth:`Settings.defaults`, unless
    ``train_subset`` / ``test_subset`` are given. Files that are there but unreadable are
    an error, not a reason to fall back.
    """
    reason = "no --data given"
    if data_root is not None:
        title, make, classes = (("CIFAR-10", datasets.cifar10_dataloaders, 10) if dataset == "cifar10"
                                else ("CIFAR-100", datasets.cifar100_dataloaders, 100))
        s = Settings.defaults(dataset, quick)
        kwargs = dict(batch_size=s.batch_size, train_subset=train_subset or s.train_subset,
                      test_subset=test_subset or s.test_subset, seed=seed)
        loaders = None
        try:
            loaders = make(data_root, **kwargs)
        except datasets.DatasetNotFoundError as missing:
            reason = str(missing)
            if download:
                print(f"   {title} is not under {data_root}: downloading it there")
                try:
                    loaders = make(data_root, download=True, **kwargs)
                except (OSError, RuntimeError, ImportError) as exc:  # no network, a proxy, a bad archive
                    reason = f"{title} is not under {data_root} and downloading it failed ({type(exc).__name__}: {exc})"
        if loaders is not None:
            train, test = loaders
            description = (f"{title} from {data_root}: {len(train.dataset):,} training and "
                           f"{len(test.dataset):,} test images, 32x32 RGB, {classes} classes")
            return DemoData(dataset, description, classes, train, test)
        print(f"   {reason}")
        print("   falling back to the digits, which need no download")
        reason = f"{title} unavailable"
    s = Settings.defaults("digits", quick)
    train, test = datasets.digits_dataloaders(batch_size=s.batch_size, train_subset=train_subset or s.train_subset,
                                              test_subset=test_subset or s.test_subset, seed=seed)
    description = (f"scikit-learn's handwritten digits ({reason}): {len(train.dataset):,} training and "
                   f"{len(test.dataset):,} test images, real 8x8 scans upsampled to 32x32 RGB, 10 classes; "
                   "pass --data ROOT for CIFAR-10")
    return DemoData("digits", description, 10, train, test)


def build_teacher(num_classes: int, device: str, base_width: int = BASE_WIDTH, seed: int = 0) -> nn.Module:
    """The untrained teacher: a CIFAR ResNet-18 of ``base_width`` channels in its first stage."""
    torch.manual_seed(seed)
    return cv_tasks.get_model(MODEL, num_classes=num_classes, base_width=base_width).to(device)


def train_teacher(
    teacher: nn.Module, data: DemoData, settings: Settings, device: str, weights_path: Path, verbose: bool
) -> float:
    """Train the teacher from scratch, save it to ``weights_path``; returns its test accuracy."""
    accuracy = train_classifier(teacher, data.train_loader, data.test_loader, settings.epochs, settings.lr,
                                device, verbose)
    save_weights(teacher, weights_path, {"model": MODEL, "kwargs": {"num_classes": data.num_classes,
                                         "base_width": settings.base_width}, "dataset": data.name,
                                         "epochs": settings.epochs, "test_accuracy": accuracy})
    return accuracy


def load_teacher(teacher: nn.Module, weights_path: Path, data: DemoData, device: str) -> float:
    """Load trained weights into the teacher; returns its test accuracy on ``data``."""
    load_weights(teacher, weights_path)
    teacher.to(device).eval()
    return evaluate(teacher, data.test_loader, device)


def extract_blocks(
    teacher: nn.Module, blocks_dir: Path, device: str, verbose: bool
) -> Tuple[AutoBlockManager, CommonModelManager, list]:
    """Cut the teacher into blocks and write every descendant (untrained) to ``blocks_dir``,
    replacing the store an earlier run left there."""
    model_manager = CommonModelManager()
    block_manager = AutoBlockManager(SPARSITIES, teacher.eval(), model_manager, INPUT_SIZE,
                                     COMPRESS_LAYER_MAX_RATIO, device, verbose=verbose)
    # the demo owns its --out: an earlier run's store (perhaps of a --quick teacher, another model) is replaced
    descendants = block_manager.extract_all_blocks(str(blocks_dir), overwrite=True)
    return block_manager, model_manager, descendants


def retrain_blocks(
    teacher: nn.Module,
    block_manager: AutoBlockManager,
    model_manager: CommonModelManager,
    blocks_dir: Path,
    trained_dir: Path,
    data: DemoData,
    settings: Settings,
    device: str,
    verbose: bool,
) -> Dict[str, Dict[str, List[float]]]:
    """Distil every pruned block from the teacher's (MSE on block outputs), then train whole
    compositions against the teacher's class scores; returns the block stage's loss history.

    ``trained_dir`` is emptied first: the retrainer would resume a run on the same blocks, and
    refuse one on other blocks (a teacher trained again), but the demo always starts afresh.
    """
    shutil.rmtree(trained_dir, ignore_errors=True)
    return BlockRetrainer(teacher, block_manager, model_manager, str(blocks_dir), str(trained_dir),
                          settings.block_epochs, data.train_loader, device=device, verbose=verbose,
                          composition_epochs=settings.composition_epochs_or_default).train_all_blocks()


def profile_blocks(
    teacher: nn.Module,
    block_manager: AutoBlockManager,
    model_manager: CommonModelManager,
    trained_dir: Path,
    data: DemoData,
    settings: Settings,
    device: str,
    verbose: bool,
) -> Tuple[ModelProfile, AccuracyModelReport]:
    """Accuracy drop, size and FLOPs of every descendant block, and the accuracy model checked on
    ``settings.random_compositions`` random descendant models."""
    profiler = BlockProfiler(teacher, block_manager, model_manager, str(trained_dir), data.test_loader,
                             INPUT_SIZE, device, verbose=verbose)
    profile = profiler.profile_all_blocks(num_compositions=settings.profile_compositions)
    report = profiler.validate_accuracy_model(num_compositions=settings.random_compositions, seed=0)
    return profile, report


def descendant_table(
    block_manager: AutoBlockManager,
    model_manager: CommonModelManager,
    profile: ModelProfile,
    report: AccuracyModelReport,
    trained_dir: Path,
    data: DemoData,
    device: str,
) -> List[Dict[str, Any]]:
    """One row per descendant model: every block at one sparsity, then the random compositions.

    Size and FLOPs are the frame's plus each chosen block's (from the profile); the estimated
    accuracy is the teacher's minus the chosen blocks' drops (the method's additive model),
    and, beside it, the teacher's times the fraction each block keeps (the multiplicative
    model of ``validate_accuracy_model``); the measured accuracy comes from running the
    composed model on the test set (for the random compositions, the profiler's
    ``validate_accuracy_model`` has just done exactly that: compose, then ``get_model_acc``).
    """
    table = profile.table()
    names = block_manager.block_names
    fitted = FittedAccuracyModel.load(trained_dir) if (trained_dir / ACCURACY_ESTIMATE_JSON).is_file() else None

    teacher = profile.teacher_metric

    def row(label: str, config: Sequence[float], measured: float) -> Dict[str, Any]:
        chosen = [table[n][s] for n, s in zip(names, config)]
        # as the optimizer reads them: a measured gain (negative drop) is noise, counted as 0
        drops = [max(0.0, p.metric_drop) for p in chosen]
        kept = math.prod(max(0.0, 1 - d / teacher) for d in drops) if teacher > 0 else 1.0
        return {
            "label": label,
            "sparsities": list(config),
            "size_bytes": profile.frame_size_bytes + sum(p.size_bytes for p in chosen),
            "flops": profile.frame_flops + sum(p.flops for p in chosen),
            "params": profile.frame_params + sum(p.params for p in chosen),
            # what the optimizer maximizes: fitted on measured compositions when the profile has it
            "estimated_accuracy": fitted.estimate(config) if fitted else teacher - sum(drops),
            "estimated_accuracy_additive": teacher - sum(drops),
            "estimated_accuracy_multiplicative": teacher * kept,
            "measured_accuracy": measured,
        }

    rows = []
    for s in SPARSITIES:
        config = [s] * len(names)
        model = block_manager.compose({n: block_manager.load_descendant(str(trained_dir), n, s) for n in names})
        measured = model_manager.get_model_acc(model, data.test_loader, device)
        r = row("teacher" if s == 0 else f"all {s:.1f}", config, measured)
        if r["size_bytes"] != model_manager.get_model_size(model):  # the profile's sizes add up to the model's
            raise RuntimeError(f"{r['label']}: profiled size {r['size_bytes']} != model size "
                               f"{model_manager.get_model_size(model)}")
        rows.append(r)
    for i, (config, measured) in enumerate(zip(report.compositions, report.measured)):
        rows.append(row(f"random {i + 1}", config, measured))
    return rows


def _pct(x: float) -> str:
    """An accuracy (a fraction) for people: ``0.98611`` -> ``98.6%``."""
    return f"{100 * x:.1f}%"


def print_profile(
    block_manager: AutoBlockManager, profile: ModelProfile, report: AccuracyModelReport, trained_dir: Path
) -> None:
    """The accuracy drop of every descendant block, and how well the estimates predict compositions."""
    table = profile.table()
    names = block_manager.block_names
    print(f"   accuracy drop per block, in points (teacher {_pct(profile.teacher_metric)} on "
          f"{profile.num_test_samples} test images; one image = {100 / profile.num_test_samples:.2f} points); "
          f"profile in {trained_dir / 'block_profile.csv'}")
    print(f"   {'sparsity':<9}" + "".join(f"{name:>9}" for name in names))
    for s in SPARSITIES[1:]:
        print(f"   {s:<9.1f}" + "".join(f"{100 * table[name][s].metric_drop:>9.1f}" for name in names))
    if any(p.metric_drop < 0 for p in profile.blocks):
        print("   (a negative drop: with that block alone replaced, a few more test images happened to be right)")
    fitted = ""
    if report.estimated_fitted:
        fitted = (f"fitted (what ScalingOptimizer maximizes) off by {100 * report.mean_abs_error_fitted:.1f} points "
                  f"on average (max {100 * report.max_abs_error_fitted:.1f}); ")
    print(f"   accuracy estimates on {len(report.measured)} new random descendant models: {fitted}additive (teacher "
          f"minus summed drops) off by {100 * report.mean_abs_error:.1f} (max {100 * report.max_abs_error:.1f}); "
          f"multiplicative off by {100 * report.mean_abs_error_multiplicative:.1f}")


def print_table(rows: Sequence[Dict[str, Any]], metric: str = "acc") -> None:
    """The descendant models of :func:`descendant_table`, one line each; sizes and FLOPs also as a
    share of the teacher's (the first row)."""
    width = max(len(_fmt_sparsities(r["sparsities"])) for r in rows)
    teacher = rows[0]
    print(f"   {'':<9} {'':<{width}} {'':>8} {'size':>13} {'MFLOPs':>11} {'estimated ' + metric:>17} "
          f"{'measured':>8}")
    print(f"   {'model':<9} {'block sparsities':<{width}} {'params':>8} {'MB':>6} {'teacher':>6} "
          f"{'':>4} {'teacher':>6} {'fitted':>8} {'additive':>8} {metric:>8}")
    for r in rows:
        size_f, flops_f = r["size_bytes"] / teacher["size_bytes"], r["flops"] / teacher["flops"]
        print(f"   {r['label']:<9} {_fmt_sparsities(r['sparsities']):<{width}} {r['params']:>8,} "
              f"{r['size_bytes'] / 1e6:>6.2f} {size_f:>6.0%} {r['flops'] / 1e6:>4.0f} {flops_f:>6.0%} "
              f"{_pct(r['estimated_accuracy']):>8} {_pct(r['estimated_accuracy_additive']):>8} "
              f"{_pct(r['measured_accuracy']):>8}")


#: budgets as (latency, memory) fractions of the teacher's (None: no limit), from generous to
#: impossible and back. On a CPU a small model's latency shrinks far less than its FLOPs (every
#: layer has a fixed cost), so the memory budgets are the ones that move the choice here.
BUDGETS: List[Tuple[Optional[float], Optional[float]]] = [
    (None, 1.0), (None, 0.6), (None, 0.4), (None, 0.25), (0.95, 0.5), (None, 1.0), (0.05, 0.01)]


def optimize_and_swap(
    block_manager: AutoBlockManager, model_manager: CommonModelManager, trained_dir: Path,
    latency: LatencyProfile, device: str,
) -> List[Dict[str, Any]]:
    """Budgets from generous to impossible, as fractions of the teacher's latency and size: the
    optimizer's choice, and what the swap cost."""
    optimizer = ScalingOptimizer(str(trained_dir), INPUT_SIZE, block_manager, model_manager, device)
    t_lat, t_mem = latency.teacher_latency_s, optimizer.profile.teacher_size_bytes
    x = torch.rand(INPUT_SIZE, device=device)
    rows = []
    print(f"   budgets as fractions of the teacher's latency and size ({1e3 * t_lat:.1f} ms, {t_mem / 1e6:.2f} MB; "
          f"- for none)")
    print(f"   {'latency':>7s} {'size':>5s}  {'sparsities':<31s} {'est. acc':>8s} {'est. ms':>7s} {'MB':>5s} "
          f"{'swapped':>7s} {'swap ms':>7s} {'solve ms':>8s}")
    for lat_f, mem_f in BUDGETS:
        budget = f"{'-' if lat_f is None else f'{lat_f:.0%}':>7} {'-' if mem_f is None else f'{mem_f:.0%}':>5}"
        try:
            r = optimizer.update_model(None if lat_f is None else lat_f * t_lat,
                                       None if mem_f is None else mem_f * t_mem)
        except InfeasibleBudgetError as exc:
            print(f"   {budget}  infeasible: {str(exc).split('. Closest')[0].replace('infeasible budget: ', '')}")
            rows.append({"latency_fraction": lat_f, "memory_fraction": mem_f, "feasible": False,
                         "binding": list(exc.closest.binding)})
            continue
        assert optimizer.model(x).shape[0] == 1
        print(f"   {budget}  {_fmt_sparsities(r.sparsities):<31s} {_pct(r.estimated_metric):>8s} "
              f"{1e3 * r.estimated_latency_s:7.1f} {r.model_bytes / 1e6:5.2f} {len(r.blocks_swapped):7d} "
              f"{1e3 * r.swap_seconds:7.1f} {1e3 * r.solve_seconds:8.1f}")
        rows.append({"latency_fraction": lat_f, "memory_fraction": mem_f, "feasible": True,
                     "sparsities": list(r.sparsities),
                     "estimated_accuracy": r.estimated_metric, "estimated_latency_s": r.estimated_latency_s,
                     "model_bytes": r.model_bytes, "blocks_swapped": list(r.blocks_swapped),
                     "swap_seconds": r.swap_seconds, "solve_seconds": r.solve_seconds})
    return rows


def draw_plots(trained_dir: Path, online: Sequence[Dict[str, Any]]) -> List[Path]:
    """The accuracy/size front with the optimizer's picks, and the per-block drop heatmap, as PNGs
    in ``trained_dir``; none without matplotlib (the ``demo`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("   no plots: matplotlib is not installed (pip install -e \".[demo]\")")
        return []
    from legodnn.plots import (
        Composition,
        measured_compositions,
        plot_accuracy_front,
        plot_drop_heatmap,
    )

    profile, latency = ModelProfile.load(str(trained_dir)), LatencyProfile.load(str(trained_dir))
    picks = [Composition.of(r["sparsities"], r["estimated_accuracy"], profile, latency)
             for r in online if r["feasible"]]
    points = measured_compositions(str(trained_dir))
    return [plot_accuracy_front(points, trained_dir / "front_size.png", x="size_bytes", picks=picks),
            plot_drop_heatmap(profile, trained_dir / "accuracy_drop.png")]


def _write_json(path: Path, payload: Dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, path)


# -- main -----------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="root holding cifar-10-batches-py (downloaded there if missing); "
                             "default: scikit-learn's digits, no download")
    parser.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10",
                        help="which CIFAR to use with --data (default cifar10)")
    parser.add_argument("--no-download", action="store_true", help="never download CIFAR; fall back to the digits")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="trained teacher weights (.safetensors, e.g. OUT/teacher.safetensors of an earlier "
                             "run) instead of training one")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"teacher training epochs (digits: {DIGITS_EPOCHS}, CIFAR: 30)")
    parser.add_argument("--block-epochs", type=int, default=None,
                        help="block distillation epochs (digits: 2, then 1 composition-aware epoch; CIFAR: 10, "
                             "then two thirds as many)")
    parser.add_argument("--train-subset", type=int, default=None, help="use this many random training images")
    parser.add_argument("--test-subset", type=int, default=None, help="use this many random test images")
    parser.add_argument("--quick", action="store_true",
                        help=f"the same steps in seconds: a base-width-8 teacher, 512 training images, "
                             f"{QUICK_EPOCHS} teacher epochs, 1 block and 1 composition epoch")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: one per core the other programs leave idle, "
                             "from the load average; 1 is faster when other programs keep the cores busy)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        threads, why = args.threads, "--threads"
    else:
        threads, why = default_threads()
    torch.set_num_threads(threads)
    verbose = not args.quiet
    started = time.perf_counter()
    timings: Dict[str, float] = {}
    cpu: Dict[str, float] = {}  # CPU seconds of each step (all threads)
    started_cpu = time.process_time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    blocks_dir, trained_dir = out / "blocks", out / "trained_blocks"

    with step("data", timings, "data", cpu):
        data = load_data(args.data, args.dataset, args.quick, download=not args.no_download, seed=args.seed,
                         train_subset=args.train_subset, test_subset=args.test_subset)
        settings = Settings.defaults(data.name, args.quick)
        settings = replace(settings, epochs=args.epochs or settings.epochs,
                           block_epochs=args.block_epochs or settings.block_epochs,
                           composition_epochs=None if args.block_epochs else settings.composition_epochs,
                           train_subset=args.train_subset or settings.train_subset,
                           test_subset=args.test_subset or settings.test_subset)
        print(f"   DATA: {data.description}")
        print(f"   device {device}, {_plural(torch.get_num_threads(), 'torch thread')} ({why}); teacher epochs "
              f"{settings.epochs}, block epochs {settings.block_epochs}, composition epochs "
              f"{settings.composition_epochs_or_default}, batch {settings.batch_size}"
              f"{' (--quick: small subsets, base width 8)' if args.quick else ''}")
        if data.name != "digits" and device == "cpu" and args.teacher is None and not args.quick:
            print("   note: training a CIFAR teacher on a CPU takes hours; use a GPU, --teacher PATH, "
                  "--epochs/--train-subset, or --quick")

    teacher = build_teacher(data.num_classes, device, base_width=settings.base_width, seed=args.seed)
    teacher_path = out / "teacher.safetensors"
    if args.teacher is not None:
        with step(f"teacher: {MODEL}, base width {settings.base_width}, weights from {args.teacher}", timings,
                  "teacher", cpu):
            teacher_acc = load_teacher(teacher, args.teacher, data, device)
            teacher_path = args.teacher
    else:
        title = (f"teacher: train {MODEL}, base width {settings.base_width}, from scratch for "
                 f"{_plural(settings.epochs, 'epoch')}")
        with step(title, timings, "teacher", cpu):
            teacher_acc = train_teacher(teacher, data, settings, device, teacher_path, verbose)
            print(f"   weights saved to {teacher_path}")
    print(f"   {count_params(teacher):,} parameters; test accuracy {_pct(teacher_acc)} "
          f"(chance: {_pct(1 / data.num_classes)})")

    with step(f"AutoBlockManager + extract_all_blocks: sparsities {SPARSITIES}", timings, "extract", cpu):
        block_manager, model_manager, descendants = extract_blocks(teacher, blocks_dir, device, verbose)
        n = len(block_manager.blocks)
        print(f"   {n} blocks cover {100 * block_manager.coverage:.1f}% of the conv parameters; "
              f"{len(descendants)} descendant blocks in {blocks_dir}: "
              f"{len(SPARSITIES)}^{n} = {len(SPARSITIES) ** n:,} descendant models")

    composition_epochs = settings.composition_epochs_or_default
    with step(f"BlockRetrainer: distil the {n * (len(SPARSITIES) - 1)} pruned blocks for "
              f"{_plural(settings.block_epochs, 'epoch')}, then train whole compositions for "
              f"{_plural(composition_epochs, 'epoch')}", timings, "retrain", cpu):
        history = retrain_blocks(teacher, block_manager, model_manager, blocks_dir, trained_dir, data, settings,
                                 device, verbose)
        first = sum(h["val"][0] for h in history.values()) / len(history)
        last = sum(min(h["val"]) for h in history.values()) / len(history)
        print(f"   mean held-out block MSE: {first:.4g} after epoch 1, {last:.4g} best")
        comp = json.loads((trained_dir / "training" / "composition" / "state.json").read_text())
        print(f"   held-out distillation loss of whole compositions: {comp['best_val']:.4g} best "
              f"(epoch {comp['best_epoch']} of {comp['epochs_done']}; 0 = the block-distilled weights)")

    with step("BlockProfiler: accuracy drop, size and FLOPs of every descendant block", timings, "profile", cpu):
        profile, report = profile_blocks(teacher, block_manager, model_manager, trained_dir, data, settings,
                                         device, verbose)
        print_profile(block_manager, profile, report, trained_dir)

    with step("descendant models: compose trained blocks and measure", timings, "table", cpu):
        rows = descendant_table(block_manager, model_manager, profile, report, trained_dir, data, device)
        print_table(rows)

    with step("LatencyEstimator: time every block on this device, check the estimate", timings, "latency", cpu):
        latency = LatencyEstimator(block_manager, model_manager, str(trained_dir), settings.latency_runs,
                                   INPUT_SIZE, device, verbose=verbose).profile_all_blocks(
                                       num_compositions=settings.latency_compositions)
        v = latency.validation
        print(f"   teacher {1e3 * latency.teacher_latency_s:.1f} ms, frame {1e3 * latency.frame_latency_s:.1f} ms "
              f"({latency.device}, {latency.num_threads} thread(s)); estimate within +-10% for "
              f"{100 * v['within_10pct']:.0f}% of {v['n']} random models (mean error {100 * v['mean_abs_rel_error']:.1f}%)")

    with step("ScalingOptimizer: best model for each budget, hot-swapped", timings, "online", cpu):
        online = optimize_and_swap(block_manager, model_manager, trained_dir, latency, device)

    with step("plots", timings, "plots", cpu):
        plots = draw_plots(trained_dir, online)
        for path in plots:
            print(f"   {path}")

    elapsed, elapsed_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    smallest = min(rows, key=lambda r: r["size_bytes"])
    teacher_row = rows[0]
    print(f"\n== done in {elapsed:.0f} s ({elapsed_cpu:.0f} CPU s) on {data.name} with "
          f"{_plural(torch.get_num_threads(), 'thread')}: teacher "
          f"{_pct(teacher_acc)}, {teacher_row['size_bytes'] / 1e6:.2f} MB; smallest model ({smallest['label']}) "
          f"{smallest['size_bytes'] / 1e6:.2f} MB ({smallest['size_bytes'] / teacher_row['size_bytes']:.0%} of the "
          f"teacher), {_pct(smallest['measured_accuracy'])}. Results in {out / 'results.json'}")
    results = {
        "dataset": data.name,
        "data_description": data.description,
        "device": device,
        "threads": torch.get_num_threads(),
        "settings": asdict(settings),
        "teacher_accuracy": teacher_acc,
        "teacher_path": str(teacher_path),
        "blocks_dir": str(blocks_dir),
        "trained_dir": str(trained_dir),
        "num_blocks": n,
        "coverage": block_manager.coverage,
        "num_descendants": len(descendants),
        "accuracy_model": {"mean_abs_error": report.mean_abs_error, "max_abs_error": report.max_abs_error,
                           "mean_abs_error_multiplicative": report.mean_abs_error_multiplicative,
                           "mean_abs_error_fitted": report.mean_abs_error_fitted if report.estimated_fitted else None,
                           "max_abs_error_fitted": report.max_abs_error_fitted if report.estimated_fitted else None,
                           "best": report.best},
        "rows": rows,
        "latency": {"teacher_s": latency.teacher_latency_s, "within_10pct": latency.validation["within_10pct"],
                    "mean_abs_rel_error": latency.validation["mean_abs_rel_error"]},
        "online": online,
        "plots": [str(p) for p in plots],
        "timings": timings,
        "cpu_seconds": cpu,
        "seconds": elapsed,
        "total_cpu_seconds": elapsed_cpu,
    }
    _write_json(out / "results.json", results)
    return results


if __name__ == "__main__":
    main()
