"""Object detection on real COCO images: the loader, both metrics on real annotations, the pipeline per model.

    python bench/bench_object_detection.py [--data ../shared/data/coco128] [--size 256] [--train 16] [--test 8]
        [--models fasterrcnn_resnet50_fpn,...] [--threads 2] [--out bench_object_detection.json]

``--data`` is a COCO folder with ``annotations/instances_train2017.json`` and ``train2017/``
(by default ``../shared/data/coco128``: the first 128 COCO train2017 images, 939 boxes,
80 categories). Everything goes through the task's real code:

1. loading: images/s through ``CocoDetection`` (decode + boxes + resize), images without
   annotations, crowd and dropped (degenerate) boxes;
2. the metrics on the real annotations: ground truth as predictions gives 1.0 for COCO
   mAP@[.5:.95] and VOC mAP@0.5; predictions shifted by a random 0-40 % of each box's width give the
   same COCO mAP through this package (ground truth built from the loader's targets) as
   through pycocotools on the original JSON file;
3. ``run_pipeline`` on each model (random weights: 128 images cannot train a COCO detector
   on a CPU; what matters here is blocks, coverage, sizes and wall time per stage), with
   ``--size`` x ``--size`` images (the standard 800 px is a GPU's job).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import Subset

import cv_tasks
from cv_tasks.object_detection import datasets as D
from cv_tasks.object_detection.metrics import coco_map, voc_map
from cv_tasks.object_detection.model_manager import DetectionModelManager
from cv_tasks.pipeline import describe, run_pipeline

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"
DEFAULT_MODELS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet18_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                  "fcos_mobilenet_v3_large_fpn")


def loading(ds: D.CocoDetection) -> Dict[str, Any]:
    start = time.perf_counter()
    targets = [ds[i][1] for i in range(len(ds))]
    seconds = time.perf_counter() - start
    return {"images": len(ds), "images_per_s": round(len(ds) / seconds, 1),
            "boxes": sum(len(t["boxes"]) for t in targets), "crowd_boxes": sum(int(t["iscrowd"].sum()) for t in targets),
            "dropped_degenerate_boxes": ds.dropped_boxes,
            "images_without_annotations": sum(len(t["boxes"]) == 0 for t in targets),
            "categories": ds.num_classes - 1}


def metric_checks(ann_file: Path, image_dir: Path) -> Dict[str, Any]:
    """Known answers on the real annotations, and this package's COCO mAP against pycocotools' own."""
    from pycocotools.cocoeval import COCOeval

    ds = D.CocoDetection(image_dir, ann_file)  # no resize: the frame of the JSON file
    targets = [ds._target(i, ds.coco.imgs[i]["height"], ds.coco.imgs[i]["width"]) for i in ds.ids]
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["boxes"]))} for t in targets]
    shifted = []
    g = torch.Generator().manual_seed(0)
    for t in targets:  # each box moved right by a random 0-40 % of its width: IoUs from 1 down to 0.43
        boxes = t["boxes"].clone()
        boxes[:, 0::2] += 0.4 * torch.rand(len(boxes), 1, generator=g) * (boxes[:, 2:3] - boxes[:, 0:1])
        shifted.append({"boxes": boxes, "labels": t["labels"], "scores": torch.linspace(1, 0.5, len(boxes))})
    official = []
    for image_id, p in zip(ds.ids, shifted):
        for box, label, score in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist()):
            official.append({"image_id": image_id, "category_id": ds.label_to_category_id(label), "score": score,
                             "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(official), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {
        "ground_truth_as_predictions": {"coco_mAP": coco_map(perfect, targets), "voc_mAP@0.5": voc_map(perfect, targets)},
        "shifted_0_40pct": {"coco_mAP_this_package": coco_map(shifted, targets),
                          "coco_mAP_pycocotools_on_json": float(ev.stats[0]),
                          "voc_mAP@0.5": voc_map(shifted, targets)},
    }


def pipeline(name: str, train: Any, test: Any, size: int, num_classes: int, out: Path, args: argparse.Namespace,
             verbose: bool) -> Dict[str, Any]:
    torch.manual_seed(0)
    kwargs = {"num_classes": num_classes, "min_size": size, "max_size": size}
    model = cv_tasks.get_model(name, **kwargs).eval()
    loaders = D.detection_dataloaders(train, test, batch_size=2)
    sparsities = tuple(float(s) for s in args.sparsities.split(","))
    report = run_pipeline(model, DetectionModelManager("coco"), *loaders, (1, 3, size, size), str(out / name),
                          sparsities=sparsities, latency_samples=3, num_compositions=3, device=args.device,
                          verbose=verbose)
    print(describe(report, name), flush=True)
    return {"model": name, "kwargs": kwargs, "params": sum(p.numel() for p in model.parameters()),
            "report": report.to_json()}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--size", type=int, default=256, help="image side for the pipeline (models' min/max_size)")
    p.add_argument("--train", type=int, default=16, help="images for block retraining")
    p.add_argument("--test", type=int, default=8, help="images for profiling")
    p.add_argument("--sparsities", default="0.0,0.3,0.6")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("runs") / "bench_object_detection")
    p.add_argument("--out", type=Path, default=Path("bench_object_detection.json"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ann, images = args.data / "annotations" / "instances_train2017.json", args.data / "train2017"
    full = D.CocoDetection(images, ann, D.detection_transforms((args.size, args.size)))
    results: Dict[str, Any] = {"data": str(args.data), "size": args.size, "threads": args.threads,
                               "loading": loading(full)}
    print("loading:", results["loading"], flush=True)
    results["metric_checks"] = metric_checks(ann, images)
    print("metric checks:", json.dumps(results["metric_checks"]), flush=True)
    train = Subset(full, list(range(args.train)))
    test = Subset(full, list(range(len(full) - args.test, len(full))))
    results["models"] = [pipeline(m.strip(), train, test, args.size, full.num_classes, args.work, args,
                                  not args.quiet) for m in args.models.split(",") if m.strip()]
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
