"""LegoDNN on semantic segmentation: train a segmenter briefly, then run every legodnn stage.

1. **Data.** Your Pascal VOC 2012 folder (``JPEGImages``, ``SegmentationClass``,
   ``ImageSets/Segmentation``) or COCO folder (``annotations/instances_<split>.json`` and
   ``<split>/*.jpg``) with ``--data``. Without it, a small synthetic set (coloured shapes
   on noise, 3 object classes) is generated under ``--out/data`` in the VOC layout and
   read back through the VOC loader; the output says which data is used.
2. **Teacher.** A registered segmenter (default: FCN on a dilated ResNet-50 design at
   1/4 width and 6 bottlenecks instead of 16; ``--model`` picks another), trained for a
   few epochs (or loaded with ``--weights``), scored by mIoU.
3. **Pipeline.** ``cv_tasks.pipeline.run_pipeline``: blocks, pruned descendants, block
   distillation, profiling, latency, and the optimizer's pick under a latency/memory
   budget, hot-swapped into the live model.

About 15 s with ``--threads 1`` by default, ``--quick`` under 10 seconds. Run from the
repository root (``PYTHONPATH=.`` or the package installed)::

    python demos/semantic_segmentation_demo.py [--data DIR] [--out DIR] [--quick] [--quiet]

Writes ``teacher.pt`` (the trained weights, reusable with ``--weights``), ``pipeline/``
(the blocks) and ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import cv_tasks
from cv_tasks.demo_support import add_run_options, start_run, write_results
from cv_tasks.pipeline import describe, run_pipeline
from cv_tasks.semantic_segmentation.datasets import VOC_CLASSES, coco_dataloaders, voc_dataloaders
from cv_tasks.semantic_segmentation.model_manager import SegmentationModelManager
from cv_tasks.semantic_segmentation.models.variants import BLOCK_SIZE_RATIO, CPU_VARIANTS
from cv_tasks.semantic_segmentation.synthetic import synthetic_class_names, write_synthetic_voc
from cv_tasks.semantic_segmentation.train import train_segmenter

DEFAULT_OUT = Path("runs") / "semantic_segmentation"


@dataclass(frozen=True)
class Settings:
    """How much data and training a run uses."""

    size: int
    num_train: int
    num_val: int
    batch_size: int
    epochs: int
    block_epochs: int
    sparsities: Tuple[float, ...]

    @classmethod
    def defaults(cls, quick: bool) -> "Settings":
        if quick:
            return cls(size=64, num_train=16, num_val=8, batch_size=8, epochs=2, block_epochs=1,
                       sparsities=(0.0, 0.5))
        return cls(size=64, num_train=96, num_val=32, batch_size=16, epochs=6, block_epochs=2,
                   sparsities=(0.0, 0.3, 0.6, 0.8))


def _coco_layout(root: Path) -> Optional[Tuple[Path, Path]]:
    """``(images dir, annotation file)`` when ``root`` is a COCO folder, else None."""
    for ann in sorted((root / "annotations").glob("instances_*.json")):
        images = root / ann.stem[len("instances_"):]
        if images.is_dir():
            return images, ann
    return None


def load_data(data: Optional[Path], out: Path, s: Settings, num_classes: Optional[int], seed: int,
              verbose: bool) -> Dict[str, Any]:
    """Loaders, class names and a sentence saying what the data is."""
    if data is None:
        classes = num_classes or 4
        root = write_synthetic_voc(out / "data", s.num_train, s.num_val, s.size, classes, seed)
        train, test = voc_dataloaders(root, s.batch_size, s.size, classes, seed=seed)
        names = synthetic_class_names(classes)
        what = (f"synthetic shapes on noise (no --data given), {s.num_train} train / {s.num_val} val images of "
                f"{s.size}x{s.size}, written as Pascal VOC under {root}; classes {names}")
        return {"train": train, "test": test, "classes": names, "description": what}
    coco = _coco_layout(data)
    if coco is not None:
        train, test, names = coco_dataloaders(*coco, s.batch_size, s.size, seed=seed, verbose=verbose)
        what = f"COCO masks from {coco[1]} ({len(train.dataset)} train / {len(test.dataset)} held-out images)"
        return {"train": train, "test": test, "classes": names, "description": what}
    classes = num_classes or 21
    train, test = voc_dataloaders(data, s.batch_size, s.size, classes, seed=seed)
    what = f"Pascal VOC from {data} ({len(train.dataset)} train / {len(test.dataset)} val images)"
    names = list(VOC_CLASSES) if classes == len(VOC_CLASSES) else [str(c) for c in range(classes)]
    return {"train": train, "test": test, "classes": names, "description": what}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None,
                   help="a Pascal VOC or COCO folder (default: generate a synthetic VOC set under --out)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes incl. background for VOC-layout data (default 21; synthetic: 4)")
    p.add_argument("--model", choices=sorted(CPU_VARIANTS), default="fcn_resnet50",
                   help="the teacher, at a CPU-sized width (default fcn_resnet50)")
    p.add_argument("--weights", type=Path, default=None, help="trained teacher weights instead of training")
    p.add_argument("--epochs", type=int, default=None, help="teacher training epochs")
    p.add_argument("--block-epochs", type=int, default=None, help="block retraining epochs (default 2)")
    p.add_argument("--latency-budget", type=float, default=0.9, help="latency budget, x the teacher's")
    p.add_argument("--memory-budget", type=float, default=0.6, help="memory budget, x the teacher's")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="a smoke run: less data, 2 epochs, 2 sparsities")
    return add_run_options(p).parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    run = start_run(args)
    device, verbose, say = run.device, run.verbose, run.say
    s = Settings.defaults(args.quick)
    epochs = args.epochs if args.epochs is not None else s.epochs
    block_epochs = args.block_epochs if args.block_epochs is not None else s.block_epochs
    out: Path = args.out
    shutil.rmtree(out / "pipeline", ignore_errors=True)  # a fresh run; the retrainer would resume
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    data = load_data(args.data, out, s, args.num_classes, args.seed, verbose)
    say(f"data: {data['description']}")
    num_classes = len(data["classes"])
    kwargs = dict(CPU_VARIANTS[args.model], num_classes=num_classes)
    teacher = cv_tasks.get_model(args.model, weights_path=str(args.weights) if args.weights else None, **kwargs)
    manager = SegmentationModelManager()
    before = manager.evaluate(teacher, data["test"], device)
    losses: List[float] = []
    if args.weights is None:
        losses = train_segmenter(teacher, data["train"], epochs, device=device, verbose=verbose)
        torch.save(teacher.state_dict(), out / "teacher.pt")
    after = manager.evaluate(teacher, data["test"], device)
    say(f"teacher {args.model} {kwargs}: mIoU {before.miou:.3f} -> {after.miou:.3f}, "
          f"pixel accuracy {after.pixel_accuracy:.3f} ({'loaded' if args.weights else f'{epochs} epochs'})")
    train_seconds = time.perf_counter() - start

    report = run_pipeline(teacher.eval(), manager, data["train"], data["test"], (1, 3, s.size, s.size),
                          str(out / "pipeline"), sparsities=s.sparsities, epochs=block_epochs,
                          latency_budget=args.latency_budget, memory_budget=args.memory_budget,
                          block_size_ratio=BLOCK_SIZE_RATIO.get(args.model, 0.125),
                          latency_samples=3 if args.quick else 10, num_compositions=2 if args.quick else 6,
                          device=device, verbose=verbose)
    say(describe(report, args.model))
    results = {
        "data": data["description"],
        "classes": data["classes"],
        "model": args.model,
        "model_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "teacher": {"loss_per_epoch": losses, "miou_before": before.miou, "miou": after.miou,
                    "pixel_accuracy": after.pixel_accuracy, "iou_per_class": after.iou},
        "settings": asdict(s) | {"epochs": epochs, "block_epochs": block_epochs,
                                 "latency_budget": args.latency_budget, "memory_budget": args.memory_budget},
        "pipeline": report.to_json(),
        "seconds": {"data_and_teacher": round(train_seconds, 2),
                    "total": round(time.perf_counter() - start, 2)},
    }
    say(f"total {results['seconds']['total']:.1f} s; results in {write_results(out, results)}")
    return results


if __name__ == "__main__":
    main()
