"""LegoDNN on object detection: train a detector briefly, then run the whole pipeline on it.

1. **Data.** ``--data PATH``: a COCO instances file (``.../annotations/instances_<split>.json``,
   images in ``--images`` or, by default, ``.../<split>/``) or a Pascal VOC folder (holding
   ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<--image-set>.txt``); its images are
   split 75/25 into train and test. Without it, a small synthetic set is written under
   ``--out/data`` in both formats (coloured rectangles and ellipses on noise; the COCO copy
   is read), so no download is needed.
2. **Teacher.** Each model of ``--models`` (default: FCOS on a half-width MobileNetV3-Large FPN,
   which learns the shapes in a few CPU minutes; Faster R-CNN trained from scratch this briefly
   stays near mAP 0, so it is opt-in) is trained from scratch, or loaded with ``--weights``
   (a checkpoint of the standard architecture, with the data set's number of classes).
3. **Pipeline.** ``cv_tasks.pipeline.run_pipeline``: blocks from the traceable parts
   (the backbone with its FPN; Faster R-CNN's box head, FCOS's classification and
   regression towers), descendants, retraining, profiling with mAP (``--metric voc``:
   mAP@0.5, the default; ``coco``: mAP@[.5:.95]), latency, and the optimizer under 80 % of
   the teacher's latency and 60 % of its memory, hot-swapping the choice in.

About 65 s on one CPU core (``--threads 1``); ``--quick`` (fewer, smaller images) about 15 s.
Run from the repository root with ``PYTHONPATH=.``::

    python demos/object_detection_demo.py [--data PATH] [--out DIR] [--quick] [--quiet]

Writes ``results.json`` (per model: teacher mAPs and the pipeline report) under ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset, Subset

import cv_tasks
from cv_tasks.demo_support import add_run_options, start_run, task_models, write_results
from cv_tasks.object_detection import datasets
from cv_tasks.object_detection.metrics import coco_map, voc_map
from cv_tasks.object_detection.model_manager import DetectionModelManager
from cv_tasks.object_detection.synthetic import SYNTHETIC_CLASSES, make_synthetic_detection
from cv_tasks.object_detection.train import train_detector
from cv_tasks.pipeline import describe, run_pipeline

DEFAULT_OUT = Path("runs") / "object_detection"
DEFAULT_MODELS = ("fcos_mobilenet_v3_large_fpn",)
# CPU-sized options; the registered defaults are the standard architectures
SMALL = {
    "fcos_mobilenet_v3_large_fpn": dict(width_mult=0.5),
    "fasterrcnn_mobilenet_v3_large_fpn": dict(width_mult=0.5, representation_size=256, rpn_batch_size_per_image=64,
                                              box_batch_size_per_image=128, rpn_pre_nms_top_n_train=300,
                                              rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=150,
                                              rpn_post_nms_top_n_test=100),
    "fasterrcnn_resnet18_fpn": dict(representation_size=256),
    "fasterrcnn_resnet50_fpn": dict(representation_size=256),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None,
                   help="COCO instances .json or VOC folder (default: synthetic shapes)")
    p.add_argument("--images", type=Path, default=None, help="image folder of a COCO --data")
    p.add_argument("--image-set", default="trainval", help="VOC image set of a VOC --data")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated object_detection models")
    p.add_argument("--weights", type=Path, default=None, help="trained teacher weights (with one model)")
    p.add_argument("--metric", choices=("voc", "coco"), default="voc", help="mAP@0.5 (voc) or mAP@[.5:.95] (coco)")
    p.add_argument("--epochs", type=int, default=None, help="teacher epochs (default 6, quick 3)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 96, quick 64)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about 15 s")
    return add_run_options(p)


def _split(ds: Dataset, seed: int) -> Tuple[Dataset, Dataset]:
    n = len(ds)  # type: ignore[arg-type]
    if n < 2:
        raise ValueError(f"the data set has {n} image(s); the demo needs at least 2 (train and test)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, n - max(1, n // 4))
    return Subset(ds, sorted(order[:cut])), Subset(ds, sorted(order[cut:]))


def _datasets(args: argparse.Namespace, size: int) -> Tuple[Dataset, Dataset, int, str]:
    """(train, test, num_classes incl. background, description) for --data or the synthetic set."""
    train_tf, test_tf = datasets.detection_transforms((size, size), train=True), datasets.detection_transforms((size, size))
    if args.data is None:
        n_train, n_val = (24, 8) if args.quick else (64, 16)
        paths = make_synthetic_detection(args.out / "data", n_train, n_val, image_size=size, seed=args.seed)
        train = datasets.CocoDetection(paths["images"], paths["train"], train_tf)
        test = datasets.CocoDetection(paths["images"], paths["val"], test_tf)
        text = (f"synthetic shapes written to {args.out / 'data'} (COCO json + jpgs, and VOC XML): {n_train} train, "
                f"{n_val} test images of {size}x{size}, classes {list(SYNTHETIC_CLASSES)}; pass --data for your own")
        return train, test, len(SYNTHETIC_CLASSES) + 1, text
    if args.data.is_dir():
        full = [datasets.VOCDetection(args.data, args.image_set, transforms=tf) for tf in (train_tf, test_tf)]
        kind = f"Pascal VOC {args.data} ({args.image_set})"
    else:
        images = args.images or args.data.parent.parent / args.data.stem.replace("instances_", "")
        full = [datasets.CocoDetection(images, args.data, transforms=tf) for tf in (train_tf, test_tf)]
        kind = f"COCO {args.data} (images {images})"
    train, _ = _split(full[0], args.seed)
    _, test = _split(full[1], args.seed)
    return train, test, full[0].num_classes, f"{kind}: {len(train)} train, {len(test)} test images resized to {size}x{size}"


def _evaluate(model: torch.nn.Module, loader: Any, device: str) -> Dict[str, float]:
    mm = DetectionModelManager()
    preds: List[Any] = []
    targets: List[Any] = []
    for batch in loader:
        preds.extend({k: v.cpu() for k, v in o.items()} for o in mm.forward_to_gen_mid_data(model, batch, device))
        targets.extend(batch[1])
    return {"mAP@0.5": voc_map(preds, targets), "mAP@[.5:.95]": coco_map(preds, targets)}


def run_model(args: argparse.Namespace, name: str, data: Dict[str, Any], device: str, verbose: bool,
              say: Any) -> Dict[str, Any]:
    """Train (or load) one teacher, run the pipeline on it, return its results."""
    size = data["size"]
    torch.manual_seed(args.seed)
    kwargs: Dict[str, Any] = {"num_classes": data["num_classes"], "min_size": size, "max_size": size}
    if args.weights is None:  # a user's checkpoint is of the standard architecture
        kwargs.update(SMALL.get(name, {}))
    teacher = cv_tasks.get_model(name, weights_path=None if args.weights is None else str(args.weights), **kwargs)
    start = time.perf_counter()
    epochs = args.epochs or (3 if args.quick else 6)
    if args.weights is None:
        train_detector(teacher, data["train"], epochs, lr=2e-3, device=device, verbose=verbose)
    teacher.to(device).eval()
    scores = _evaluate(teacher, data["test"], device)
    train_s = time.perf_counter() - start
    say(f"   {name}: teacher ({epochs} epochs, {train_s:.1f} s) " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    work = args.out / name
    if work.exists():
        shutil.rmtree(work)  # this demo's own folder from an earlier run
    report = run_pipeline(teacher, DetectionModelManager(args.metric), data["train"], data["test"],
                          (1, 3, size, size), str(work), sparsities=(0.0, 0.5) if args.quick else (0.0, 0.3, 0.6),
                          block_size_ratio=0.25 if args.quick else 0.125,
                          epochs=1, latency_samples=2 if args.quick else 4, num_compositions=2 if args.quick else 3,
                          device=device, verbose=verbose)
    say(describe(report, name))
    return {"model": name, "kwargs": kwargs, "input_size": [1, 3, size, size], "teacher_epochs": epochs,
            "teacher_seconds": round(train_s, 2), "teacher_metrics": scores, "pipeline": report.to_json()}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the demo; returns what it writes to ``results.json``."""
    args = _parser().parse_args(argv)
    run = start_run(args)
    device, verbose, say = run.device, run.verbose, run.say
    models = task_models("object_detection", args.models.split(","))
    if args.weights is not None and len(models) != 1:
        raise ValueError("--weights needs exactly one model in --models")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    size = args.size or (64 if args.quick else 96)
    train, test, num_classes, text = _datasets(args, size)
    train_loader, test_loader = datasets.detection_dataloaders(train, test, batch_size=4, seed=args.seed)
    data = {"train": train_loader, "test": test_loader, "num_classes": num_classes, "size": size}
    say(f"data: {text}\ndevice: {device}, models: {', '.join(models)}, metric: {DetectionModelManager(args.metric).metric_name}")
    results: Dict[str, Any] = {"data": text, "device": device, "metric": DetectionModelManager(args.metric).metric_name,
                               "models": [run_model(args, m, data, device, verbose, say) for m in models]}
    results["seconds"] = round(time.perf_counter() - start, 1)
    say(f"total {results['seconds']:.1f} s; results in {write_results(args.out, results)}")
    return results


if __name__ == "__main__":
    main()
