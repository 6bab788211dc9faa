"""LegoDNN on anomaly detection: train a teacher on normal images, cut it into blocks, scale it.

1. **Data.** By default the one-class protocol on scikit-learn's handwritten digits
   (real images shipped inside scikit-learn, no download): one digit (``--normal-class``,
   3 by default) is normal, the other nine are anomalies. ``--data PATH`` reads your own
   data in the MVTec AD layout (``PATH/train/good``, ``PATH/test/<defect>``,
   ``PATH/ground_truth/<defect>/*_mask.png``; or ``--data ROOT --category NAME``);
   ``--data synthetic`` writes a small generated MVTec-layout set (striped textures with
   painted spots and scratches) under ``--out`` and uses that. The output says which.
2. **Teachers.** A convolutional autoencoder (its output: the per-pixel reconstruction
   error) and a rotation-prediction ResNet (its output: the rotation negative
   log-likelihood), each trained on normal images only to minimise its own anomaly score.
3. **Pipeline.** ``cv_tasks.pipeline.run_pipeline``: blocks, descendants retrained by
   block distillation on normal images, profiled by image AUROC, latency, and the
   optimizer picking a sparsity per block under a budget, hot-swapped in.

About 45 s with ``--threads 1`` and the defaults; ``--quick`` about 20 seconds. Run from
the repository root with ``PYTHONPATH=.`` (or the package installed)::

    python demos/anomaly_detection_demo.py [--data PATH|synthetic] [--out DIR] [--quick] [--quiet]

Writes ``results.json`` (and ``<model>/teacher.safetensors``, ``<model>/trained``) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from cv_tasks import get_model, get_model_manager
from cv_tasks.anomaly_detection.datasets import digits_one_class_dataloaders, mvtec_dataloaders
from cv_tasks.anomaly_detection.synthetic import write_synthetic_mvtec
from cv_tasks.anomaly_detection.train import train_anomaly_model
from cv_tasks.demo_support import add_run_options, start_run, write_results
from cv_tasks.pipeline import describe, run_pipeline

MODELS = ("conv_autoencoder", "rotation_resnet")
DEFAULT_OUT = Path("runs") / "anomaly_detection"

#: model options: the defaults are CPU-sized variants (the registered builders default to full width)
MODEL_OPTIONS: Dict[str, Dict[str, Any]] = {
    "conv_autoencoder": dict(width=16),
    "rotation_resnet": dict(layers=(1, 1, 1, 1), base_width=16),
}
QUICK_OPTIONS: Dict[str, Dict[str, Any]] = {
    "conv_autoencoder": dict(width=8),
    "rotation_resnet": dict(layers=(1, 1, 1, 1), base_width=8),
}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="an MVTec-AD-layout category folder (or its parent, with --category), or 'synthetic'; "
                        "default: scikit-learn's digits, one digit normal")
    p.add_argument("--category", default=None, help="the category folder under --data (MVTec layout)")
    p.add_argument("--normal-class", type=int, default=3, help="the normal digit for the default data (0-9)")
    p.add_argument("--image-size", type=int, default=None, help="resize MVTec images to this square size (default 64; 32 with --quick)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated, as in the other demos (default {','.join(MODELS)})")
    p.add_argument("--epochs", type=int, default=None, help="teacher epochs (default 12; 2 with --quick)")
    p.add_argument("--block-epochs", type=int, default=None, help="block retraining epochs (default 3; 1 with --quick)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="small models and few epochs: a smoke run of ~20 s")
    args = add_run_options(p).parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        p.error(f"--models: {', '.join(unknown) or 'none given'}; pick from {', '.join(MODELS)}")
    if not 0 <= args.normal_class <= 9:
        p.error(f"--normal-class must be a digit 0-9, got {args.normal_class}")
    return args


def load_data(args: argparse.Namespace) -> Tuple[str, DataLoader, DataLoader, int]:
    """(description, train loader, test loader, image size) for the chosen data."""
    quick = args.quick
    if args.data is None:
        train, test = digits_one_class_dataloaders(args.normal_class, batch_size=32, seed=args.seed,
                                                   test_subset=120 if quick else None)
        what = (f"scikit-learn's handwritten digits (real, shipped with scikit-learn), one-class: digit "
                f"{args.normal_class} normal ({len(train.dataset)} training images), the other digits anomalous "
                f"({len(test.dataset)} test images), 32x32")
        return what, train, test, 32
    size = args.image_size or (32 if quick else 64)
    if args.data == "synthetic":
        root = write_synthetic_mvtec(args.out / "data", "texture", image_size=size, seed=args.seed,
                                     num_train=24 if quick else 60, num_test_good=8 if quick else 20,
                                     num_test_defect=4 if quick else 10)
        source = f"a generated MVTec-layout set in {root} (striped textures; spot and scratch defects with masks)"
    else:
        root = Path(args.data).expanduser() / (args.category or "")
        source = f"your MVTec-AD-layout data in {root}"
    train, test = mvtec_dataloaders(root, image_size=size, batch_size=16, seed=args.seed)
    return (f"{source}: {len(train.dataset)} normal training images, {len(test.dataset)} test images "
            f"(defects {test.dataset.defects}), {size}x{size}"), train, test, size


def run_model(name: str, args: argparse.Namespace, train: DataLoader, test: DataLoader, size: int,
              device: str, say: Any) -> Dict[str, Any]:
    """Train one teacher, run the pipeline on it; what it measured."""
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    options = (QUICK_OPTIONS if args.quick else MODEL_OPTIONS)[name]
    epochs = args.epochs or (2 if args.quick else 12)
    teacher = get_model(name, **options)
    start = time.perf_counter()
    losses = train_anomaly_model(teacher, train, epochs=epochs, lr=3e-3, device=device, verbose=not args.quiet)
    train_s = time.perf_counter() - start
    mm = get_model_manager("anomaly_detection")
    evaluation = mm.evaluate(teacher, test, device)
    work = args.out / name
    work.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}, str(work / "teacher.safetensors"))
    pixel = "" if evaluation.pixel_auroc is None else f", pixel AUROC {evaluation.pixel_auroc:.4f}"
    say(f"\n== {name} {options}: trained {epochs} epochs on normal images in {train_s:.1f} s "
        f"(loss {losses[0]:.4f} -> {losses[-1]:.4f}); image AUROC {evaluation.image_auroc:.4f}{pixel}")
    report = run_pipeline(teacher, mm, train, test, (1, 3, size, size), str(work),
                          epochs=args.block_epochs or (1 if args.quick else 3), device=device,
                          verbose=not args.quiet)
    say(describe(report, name))
    return {
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "teacher": {"epochs": epochs, "train_seconds": round(train_s, 2), "loss": losses,
                    "image_auroc": evaluation.image_auroc, "pixel_auroc": evaluation.pixel_auroc},
        "pipeline": report.to_json(),
    }


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the demo; returns what it writes to ``results.json``."""
    args = parse_args(argv)
    run = start_run(args)
    device, say = run.device, run.say
    started = time.perf_counter()
    for name in args.models:  # a fresh run: stale blocks of another run must not be resumed
        shutil.rmtree(args.out / name, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    what, train, test, size = load_data(args)
    say(f"DATA: {what}")
    models: Dict[str, Any] = {}
    for name in args.models:
        models[name] = run_model(name, args, train, test, size, device, say)
    result: Dict[str, Any] = {"data": what, "device": device, "quick": args.quick, "models": models,
                              "seconds": round(time.perf_counter() - started, 1)}
    result = json.loads(json.dumps(result))  # tuples -> lists, as read back from the file
    say(f"\nwrote {write_results(args.out, result)} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
