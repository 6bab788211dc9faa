"""Pose estimation end to end: train a small teacher briefly, then run every legodnn stage.

    python demos/pose_estimation_demo.py                 # synthetic stick figures (no download)
    python demos/pose_estimation_demo.py --quick --quiet # a ~10 s smoke run
    python demos/pose_estimation_demo.py --data person_keypoints_val2017.json --images val2017/
    python demos/pose_estimation_demo.py --data mpii_valid.json --images mpii/images/ --metric PCKh@0.5

``--data`` is a COCO person-keypoints json or an MPII json (a list of people; see
``cv_tasks.pose_estimation.datasets.mpii``); its people are split 80/20 into train and
test. Without it, a deterministic stick-figure set in COCO format is written under
``--out`` and used. Writes ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

DEFAULT_OUT = Path("runs") / "pose_estimation"
DEFAULT_MODELS = ("simple_baseline_resnet", "deeppose_resnet")
MODEL_OPTIONS = {  # narrow variants that train on a CPU in a minute
    "simple_baseline_resnet": {"base_width": 16, "head_width": 64},
    "deeppose_resnet": {"base_width": 16},
    "keypoint_rcnn_resnet_fpn": {"depth": 18, "base_width": 16, "fpn_width": 32, "box_head_width": 64,
                                 "head_width": 32, "head_layers": 4, "rpn_pre_nms_top_n_test": 100,
                                 "rpn_post_nms_top_n_test": 20},
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="COCO keypoints json or MPII json (default: synthetic stick figures)")
    p.add_argument("--images", default=None, help="image folder of --data (default: <json dir>/images or <json dir>)")
    p.add_argument("--format", choices=("auto", "coco", "mpii"), default="auto", help="format of --data")
    p.add_argument("--metric", default=None, help="keypoint AP, PCK@0.2 or PCKh@0.5 (default: PCK@0.2 for COCO, PCKh@0.5 for MPII)")
    p.add_argument("--models", default=None,
                   help=f"comma-separated pose models (default {','.join(DEFAULT_MODELS)}; quick: the first)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder, replaced (default {DEFAULT_OUT})")
    p.add_argument("--epochs", type=int, default=None, help="teacher epochs (default 12; quick 1)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about 10 s")
    from cv_tasks.demo_support import (
        add_run_options,  # cv_tasks: importable once __main__ set sys.path
    )

    return add_run_options(p).parse_args(argv)


def _detect_format(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        head = f.read(1).strip() or " "
    return "mpii" if head == "[" else "coco"


def _data(args: argparse.Namespace, input_size: tuple[int, int], say: Any) -> tuple[DataLoader, DataLoader, str, str]:
    from cv_tasks.pose_estimation.datasets import (
        load_pose_dataset,
        make_pose_loader,
        write_synthetic_pose_set,
    )
    from cv_tasks.pose_estimation.datasets.loaders import split_indices

    batch = 8 if args.quick else 16
    if args.data is None:
        n_train, n_test = (12, 6) if args.quick else (96, 24)
        train_set = write_synthetic_pose_set(str(args.out / "data" / "train"), n_train, 96 if args.quick else 128, seed=0)
        test_set = write_synthetic_pose_set(str(args.out / "data" / "test"), n_test, 96 if args.quick else 128, seed=1)
        say(f"data: synthetic stick figures in COCO person-keypoints format, {n_train} train / {n_test} test images, "
            f"written to {args.out / 'data'} (no --data given)")
        train = load_pose_dataset("coco", train_set.coco_json, train_set.image_dir, input_size=input_size, train=True)
        test = load_pose_dataset("coco", test_set.coco_json, test_set.image_dir, input_size=input_size)
        return make_pose_loader(train, batch, shuffle=True), make_pose_loader(test, batch), "coco", "synthetic"
    fmt = _detect_format(args.data) if args.format == "auto" else args.format
    root = os.path.dirname(os.path.abspath(args.data))
    images = args.images or (os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root)
    train = load_pose_dataset(fmt, args.data, images, input_size=input_size, train=True)
    test = load_pose_dataset(fmt, args.data, images, input_size=input_size)
    tr, te = split_indices(len(train), 0.2)
    say(f"data: {args.data} ({fmt}), {len(train)} people ({train.skipped} skipped: crowd or no visible keypoint), "
        f"{len(tr)} train / {len(te)} test")
    return (DataLoader(Subset(train, tr), batch, shuffle=True, generator=torch.Generator().manual_seed(0)),
            make_pose_loader(Subset(test, te), batch), fmt, args.data)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns what it writes to ``results.json``."""
    args = _parse(argv)
    from cv_tasks import get_model
    from cv_tasks.demo_support import start_run, task_models, write_results
    from cv_tasks.pipeline import describe, run_pipeline
    from cv_tasks.pose_estimation.model_manager import PoseModelManager
    from cv_tasks.pose_estimation.train import train_pose_model

    run = start_run(args)
    device, say = run.device, run.say
    models = task_models("pose_estimation",
                         (args.models or ",".join(DEFAULT_MODELS[:1] if args.quick else DEFAULT_MODELS)).split(","))
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    input_size = (64, 64) if args.quick else (128, 96)
    train_loader, test_loader, fmt, source = _data(args, input_size, say)
    metric = args.metric or ("PCKh@0.5" if fmt == "mpii" else "PCK@0.2")
    manager = PoseModelManager(metric)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 12)
    k = 16 if fmt == "mpii" else 17
    results: dict[str, Any] = {"data": source, "format": fmt, "metric": metric, "input_size": list(input_size),
                               "device": device, "models": {}}
    for name in models:
        torch.manual_seed(args.seed)
        options = dict(MODEL_OPTIONS[name])
        if args.quick:
            options["base_width"] = 8
        if name == "keypoint_rcnn_resnet_fpn":
            options.update(min_size=min(input_size), max_size=max(input_size))
        model = get_model(name, num_joints=k, **options)
        start = time.perf_counter()
        losses = train_pose_model(model, train_loader, epochs, device=device, verbose=not args.quiet)
        train_s = time.perf_counter() - start
        say(f"{name}: teacher trained {epochs} epoch(s) in {train_s:.1f} s, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        report = run_pipeline(model, manager, train_loader, test_loader, (1, 3, *input_size), str(args.out / name),
                              sparsities=(0.0, 0.5) if args.quick else (0.0, 0.3, 0.6, 0.8),
                              latency_samples=2 if args.quick else 5, num_compositions=2 if args.quick else 4,
                              device=device, verbose=not args.quiet)
        say(describe(report, name))
        results["models"][name] = {"teacher_train_s": round(train_s, 2), "teacher_losses": losses, **report.to_json()}
    say(f"wrote {write_results(args.out, results)}")
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
