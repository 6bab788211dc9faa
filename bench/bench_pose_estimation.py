"""Pose estimation on real COCO person keypoints: loader, the metric on real annotations,
the pipeline per model.

    python bench/bench_pose_estimation.py [--data ../shared/data/coco-keypoints] [--preset standard|small]
        [--models simple_baseline_resnet,deeppose_resnet,keypoint_rcnn_resnet_fpn] [--threads 1] [--out bench.json]

``--data`` holds ``test_coco.json`` (COCO person-keypoints format) and its ``*.jpg`` files
(by default ``../shared/data/coco-keypoints``: 4 COCO val2017 images, 14 people). It is read
through the task's real loader, then:

1. the loader: people kept and skipped (crowd / no labelled keypoint), crop and heatmap
   shapes, crops per second;
2. the metric on the real annotations: the ground truth as predictions gives keypoint AP
   1.0 both through pycocotools directly on the json and through the model manager's full
   path (crop coordinates -> inverse affine -> COCOeval); PCK@0.2 1.0; decoding the target
   heatmaps shows the cost of the heatmap grid;
3. ``run_pipeline`` on each model with random weights (a dozen people cannot train a
   teacher; what matters here is blocks, coverage, sizes and wall time per stage). The
   same people serve as retraining and test data.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cv_tasks import get_model
from cv_tasks.pipeline import describe, run_pipeline
from cv_tasks.pose_estimation.datasets import load_pose_dataset, make_pose_loader
from cv_tasks.pose_estimation.model_manager import PoseModelManager

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-keypoints"
MODELS = ("simple_baseline_resnet", "deeppose_resnet", "keypoint_rcnn_resnet_fpn")
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # the standard architectures (ResNet-18 SimpleBaseline / DeepPose, torchvision's
    # keypointrcnn_resnet50_fpn layout) on 256x192 crops
    "standard": {"simple_baseline_resnet": {}, "deeppose_resnet": {},
                 "keypoint_rcnn_resnet_fpn": {"min_size": 256, "max_size": 256}},
    "small": {"simple_baseline_resnet": {"base_width": 16, "head_width": 64}, "deeppose_resnet": {"base_width": 16},
              "keypoint_rcnn_resnet_fpn": {"depth": 18, "base_width": 16, "fpn_width": 32, "box_head_width": 64,
                                           "head_width": 32, "head_layers": 4}},
}


def check_loader(ds: Any) -> dict[str, Any]:
    start = time.perf_counter()
    x, maps, _weight, _meta = ds[0]
    for i in range(1, len(ds)):
        ds[i]
    return {"people": len(ds), "skipped": ds.skipped, "crop": list(x.shape), "heatmaps": list(maps.shape),
            "labelled_joints": int(sum(int((r.visible > 0).sum()) for r in ds.records)),
            "crops_per_s": round(len(ds) / (time.perf_counter() - start), 1)}


def check_metric(ann_file: Path, loader: Any) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        anns = [dict(a, score=1.0) for a in gt.loadAnns(gt.getAnnIds()) if a["num_keypoints"] > 0]
        ev = COCOeval(gt, gt.loadRes(anns), iouType="keypoints")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    out = {"pycocotools_gt_as_prediction_AP": float(ev.stats[0])}
    for name, metric, pred in (("manager_gt_as_prediction_AP", "keypoint AP", "coords"),
                               ("manager_gt_as_prediction_PCK@0.2", "PCK@0.2", "coords"),
                               ("manager_target_heatmaps_AP", "keypoint AP", "heatmaps"),
                               ("manager_target_heatmaps_PCK@0.2", "PCK@0.2", "heatmaps")):
        acc = PoseModelManager(metric).metric_accumulator()
        for batch in loader:
            acc.update(batch[3]["crop_joints"] if pred == "coords" else batch[1], batch)
        out[name] = acc.compute()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--input-size", default="256,192", help="crop height,width (multiples of 32)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady timings on a shared machine)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench_pose_estimation.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.input_size.split(","))
    ann = args.data / "test_coco.json"
    test_set = load_pose_dataset("coco", str(ann), str(args.data), input_size=size)
    train_set = load_pose_dataset("coco", str(ann), str(args.data), input_size=size, train=True)
    loader = make_pose_loader(test_set, 4)
    results: dict[str, Any] = {"data": str(args.data), "input_size": list(size), "preset": args.preset,
                               "threads": args.threads, "loader": check_loader(test_set)}
    print("loader:", results["loader"], flush=True)
    results["metric"] = check_metric(ann, loader)
    print("metric:", results["metric"], flush=True)
    results["models"] = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = get_model(name, **PRESETS[args.preset][name]).eval()
        with tempfile.TemporaryDirectory() as tmp:
            report = run_pipeline(model, PoseModelManager("keypoint AP"), make_pose_loader(train_set, 4, shuffle=True),
                                  loader, (1, 3, *size), tmp, verbose=not args.quiet)
        print(describe(report, name), flush=True)
        params = sum(p.numel() for p in model.parameters())
        results["models"][name] = {"params": params, **report.to_json()}
        args.out.write_text(json.dumps(results, indent=1))
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
