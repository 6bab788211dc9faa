"""LegoDNN on action recognition: train a video model briefly, then run the whole pipeline on it.

1. **Data.** ``--data ROOT``: your UCF101 (``ROOT/UCF-101/<Class>/*.avi`` +
   ``ROOT/ucfTrainTestlist/``) or, with ``--layout hmdb51``, HMDB51 folder, split 1.
   Without it, a small synthetic set is written under ``--out/data`` in the UCF101 layout:
   real MJPEG ``.avi`` files of one shape moving in one of four directions (the class), so
   no download is needed and only a model that sees motion can score above chance.
2. **Teacher.** Each model of ``--models`` (default ``c3d_tiny`` and a 16-channel
   ``r3d_18``) is trained from scratch for a few epochs on clips of 8 frames (TSN: 8
   segments), or loaded with ``--weights PATH`` (one model only; on the full UCF101 or
   HMDB51, train elsewhere and pass the weights, or set ``--epochs`` and ``--size``).
3. **Pipeline.** ``cv_tasks.pipeline.run_pipeline``: blocks, descendants, retraining,
   profiling (top-1 video accuracy, 2 test clips per video), latency, and the optimizer
   under 80 % of the teacher's latency and 60 % of its memory, hot-swapping the choice in.

About 30 s with ``--threads 1`` (c3d_tiny reaches top-1 (video)
1.0, r3d_18 0.75); ``--quick`` (c3d_tiny, fewer videos and epochs) about 10-15 s.
Run from the repository root with ``PYTHONPATH=.``::

    python demos/action_recognition_demo.py [--data ROOT] [--out DIR] [--quick] [--quiet]

Writes ``results.json`` (per model: teacher accuracies and the pipeline report) under ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

import cv_tasks
from cv_tasks.action_recognition import datasets
from cv_tasks.action_recognition.model_manager import ActionRecognitionModelManager
from cv_tasks.action_recognition.train import train_clip_classifier
from cv_tasks.demo_support import add_run_options, start_run, task_models, write_results
from cv_tasks.pipeline import describe, run_pipeline

DEFAULT_OUT = Path("runs") / "action_recognition"
DEFAULT_MODELS = ("c3d_tiny", "r3d_18")
WIDTH = 16  # base_width of the ResNets: CPU-sized; 64 is the standard architecture


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="UCF101 or HMDB51 root (default: synthetic videos)")
    p.add_argument("--layout", choices=("ucf101", "hmdb51"), default="ucf101", help="layout of --data")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (replaced)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated registered action_recognition models")
    p.add_argument("--weights", type=Path, default=None, help="trained teacher weights (with one model)")
    p.add_argument("--epochs", type=int, default=None, help="teacher epochs (default 10, quick 4)")
    p.add_argument("--size", type=int, default=None, help="crop size (default 32, TSN/ResNets 48)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about 15 s")
    return add_run_options(p)


def _data(args: argparse.Namespace, model: str, size: int) -> Dict[str, Any]:
    """Train/test loaders for ``model`` (TSN: segments; 3D models: 8 consecutive frames, stride 2)."""
    sampler = datasets.ClipSampler(8, "segments" if model.startswith("tsn") else "uniform",
                                   stride=1 if args.data is None else 2, num_clips=2)
    if args.data is None:
        make = datasets.ucf101_datasets
        root, flip = args.out / "data", False  # a mirror flip would swap the classes left and right
    else:
        make = datasets.ucf101_datasets if args.layout == "ucf101" else datasets.hmdb51_datasets
        root, flip = args.data, True
    train, test, classes = make(root, sampler=sampler, size=size, flip=flip)
    train_loader, test_loader = datasets.video_dataloaders(train, test, batch_size=4)
    return {"train": train_loader, "test": test_loader, "classes": classes}


def run_model(
    args: argparse.Namespace, name: str, device: str, verbose: bool, say: Callable[[str], None]
) -> Dict[str, Any]:
    """Train (or load) one teacher, run the pipeline on it, return its results."""
    size = args.size or (32 if name == "c3d_tiny" else 48)
    data = _data(args, name, size)
    torch.manual_seed(args.seed)
    kwargs: Dict[str, Any] = {"num_classes": len(data["classes"])}
    if name != "c3d_tiny":
        kwargs["base_width"] = WIDTH
    teacher = cv_tasks.get_model(name, weights_path=None if args.weights is None else str(args.weights), **kwargs)
    manager = ActionRecognitionModelManager()
    start = time.perf_counter()
    epochs = args.epochs or (4 if args.quick else 10)
    if args.weights is None:
        lr = 3e-3 if name == "c3d_tiny" else 1e-3  # the deeper ResNets learned more steadily at the lower rate
        train_clip_classifier(teacher, data["train"], epochs, lr=lr, device=device, verbose=verbose)
    teacher.to(device).eval()
    accuracy = manager.evaluate(teacher, data["test"], device)
    train_s = time.perf_counter() - start
    say(f"   {name}: teacher ({epochs} epochs, {train_s:.1f} s) " +
        ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    report = run_pipeline(teacher, manager, data["train"], data["test"], (1, 3, 8, size, size),
                          str(args.out / name), epochs=1, latency_samples=3 if args.quick else 5,
                          num_compositions=2 if args.quick else 4, device=device, verbose=verbose)
    say(describe(report, name))
    return {"model": name, "kwargs": kwargs, "input_size": [1, 3, 8, size, size], "teacher_epochs": epochs,
            "teacher_seconds": round(train_s, 2), "teacher_accuracy": accuracy, "pipeline": report.to_json()}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the demo; returns what it writes to ``results.json``."""
    args = _parser().parse_args(argv)
    run = start_run(args)
    device, verbose, say = run.device, run.verbose, run.say
    quick_default = args.quick and args.models == ",".join(DEFAULT_MODELS)
    models = task_models("action_recognition", ["c3d_tiny"] if quick_default else args.models.split(","))
    if args.weights is not None and len(models) != 1:
        raise ValueError("--weights needs exactly one model in --models")
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    start = time.perf_counter()
    if args.data is None:
        videos = datasets.write_synthetic_videos(args.out / "data", num_classes=4,
                                                 train_per_class=6 if args.quick else 12,
                                                 test_per_class=3 if args.quick else 4, frames=16,
                                                 size=(64, 48), seed=args.seed)
        data = (f"synthetic moving-shape videos written to {videos.root} (UCF101 layout, MJPEG .avi, 16 frames "
                f"of 64x48): {videos.num_train} training and {videos.num_test} test videos, classes "
                f"{videos.classes}; pass --data ROOT for UCF101/HMDB51")
    else:
        data = f"{args.layout} split 1 from {args.data}"
    say(f"data: {data}\ndevice: {device}, models: {', '.join(models)}")
    results = {"data": data, "device": device, "models": [run_model(args, m, device, verbose, say) for m in models]}
    results["seconds"] = round(time.perf_counter() - start, 1)
    say(f"total {results['seconds']:.1f} s; results in {write_results(args.out, results)}")
    return results


if __name__ == "__main__":
    main()
