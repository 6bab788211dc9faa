"""Semantic segmentation on real COCO data: the mask loader, the metric, and the pipeline per model.

1. Loads ``coco128`` (128 COCO train2017 images, polygon and RLE masks, 80 categories)
   through :class:`COCOSegmentation` and checks the metric on the real annotations:
   every ground-truth label map as its own prediction must score mIoU = pixel accuracy
   = 1.0, both at full resolution and after the loaders' resize.
2. Runs ``cv_tasks.pipeline.run_pipeline`` on each registered segmenter, on those images
   through the real loaders (a held-out quarter is the test set), and prints blocks,
   conv-parameter coverage, descendant size range and wall time per stage.

On a CPU the models are the CPU-sized variants below (same design, fewer channels and
layers) and the teacher is untrained, so its mIoU is near 0: the point is what legodnn
finds and how long each stage takes on real images. ``--full`` runs the torchvision-size
models instead (for a GPU). ``--structure`` also extracts blocks of the full-size models
(no retraining), to report their real block counts, coverage and descendant sizes::

    python bench/bench_semantic_segmentation.py [--data ../shared/data/coco128] [--out DIR] [--structure]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

import cv_tasks
from cv_tasks.pipeline import describe, run_pipeline
from cv_tasks.semantic_segmentation.datasets import COCOSegmentation, coco_dataloaders
from cv_tasks.semantic_segmentation.metrics import ConfusionMatrix
from cv_tasks.semantic_segmentation.model_manager import SegmentationModelManager
from cv_tasks.semantic_segmentation.models.variants import BLOCK_SIZE_RATIO, CPU_VARIANTS
from legodnn import AutoBlockManager

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"


def check_metric_on_annotations(data: Path, size: int) -> Dict[str, Any]:
    """Ground truth as prediction over every image: must be exactly 1.0."""
    ds = COCOSegmentation(data / "train2017", data / "annotations" / "instances_train2017.json")
    cm = ConfusionMatrix(ds.num_classes)
    labelled = void = 0
    present: set = set()
    for i in range(len(ds)):
        mask = ds.load_mask(i)
        cm.update(mask.clamp(max=ds.num_classes - 1), mask)
        void += int((mask == 255).sum())
        labelled += int((mask != 255).sum())
        present |= set(mask.unique().tolist()) - {255}
    full = cm.compute()
    train, test, _ = coco_dataloaders(data / "train2017", data / "annotations" / "instances_train2017.json",
                                      batch_size=16, size=size)
    cm_resized = ConfusionMatrix(ds.num_classes)
    for loader in (train, test):
        for _, masks in loader:
            cm_resized.update(masks.clamp(max=ds.num_classes - 1), masks)
    resized = cm_resized.compute()
    anns = list(ds.coco.anns.values())
    result = {
        "images": len(ds), "num_classes": ds.num_classes, "classes_present": len(present) - (0 in present),
        "annotations": len(anns), "polygon": sum(isinstance(a["segmentation"], list) for a in anns),
        "rle": sum(isinstance(a["segmentation"], dict) for a in anns),
        "crowd": sum(a.get("iscrowd", 0) for a in anns),
        "images_without_annotations": sum(1 for i in ds.ids if not ds.coco.imgToAnns.get(i)),
        "labelled_pixels": labelled, "void_pixels": void,
        "gt_as_prediction": {"miou": full.miou, "pixel_accuracy": full.pixel_accuracy,
                             f"miou_at_{size}px": resized.miou, f"pixel_accuracy_at_{size}px": resized.pixel_accuracy},
    }
    if full.miou != 1.0 or full.pixel_accuracy != 1.0 or resized.miou != 1.0:
        raise AssertionError(f"ground truth as prediction must score 1.0: {result['gt_as_prediction']}")
    return result


def structure_of_full_models(names: Sequence[str], size: int, out: Path, num_classes: int) -> Dict[str, Any]:
    """Blocks of the torchvision-size models (extraction only): counts, coverage, bytes."""
    rows = {}
    mm = SegmentationModelManager()
    for name in names:
        model = cv_tasks.get_model(name, num_classes=num_classes).eval()
        start = time.perf_counter()
        bm = AutoBlockManager([0.0, 0.3, 0.6, 0.8], model, mm, (1, 3, size, size), 0.125, "cpu", verbose=False)
        specs = bm.extract_all_blocks(str(out / "structure" / name))
        pruned = [d.bytes for d in specs if d.sparsity > 0]
        rows[name] = {"params": sum(p.numel() for p in model.parameters()), "blocks": len(bm.blocks),
                      "coverage": bm.coverage, "descendant_bytes": [min(pruned), max(pruned)],
                      "block_bytes": [min(d.bytes for d in specs if d.sparsity == 0),
                                      max(d.bytes for d in specs if d.sparsity == 0)],
                      "extract_s": round(time.perf_counter() - start, 2)}
        r = rows[name]
        print(f"  {name}: {r['params'] / 1e6:.1f} M params, {r['blocks']} blocks, {r['coverage']:.1%} of conv params, "
              f"descendants {r['descendant_bytes'][0] / 1e3:.1f}-{r['descendant_bytes'][1] / 1e3:.1f} kB "
              f"(blocks {r['block_bytes'][0] / 1e3:.1f}-{r['block_bytes'][1] / 1e3:.1f} kB), extracted in "
              f"{r['extract_s']:.1f} s", flush=True)
    return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"coco128 folder (default {DEFAULT_DATA})")
    p.add_argument("--out", type=Path, default=Path("runs") / "bench_semantic_segmentation")
    p.add_argument("--models", nargs="*", default=sorted(CPU_VARIANTS), choices=sorted(CPU_VARIANTS))
    p.add_argument("--size", type=int, default=128, help="input side in pixels (default 128)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--full", action="store_true", help="torchvision-size models (slow on a CPU)")
    p.add_argument("--structure", action="store_true", help="also extract the full-size models' blocks")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {"data": str(args.data), "size": args.size, "device": args.device,
                               "threads": torch.get_num_threads(), "full": args.full}
    print(f"== metric on the real annotations of {args.data}", flush=True)
    results["annotations"] = check_metric_on_annotations(args.data, args.size)
    print("  " + json.dumps(results["annotations"]), flush=True)

    train, test, classes = coco_dataloaders(args.data / "train2017",
                                            args.data / "annotations" / "instances_train2017.json",
                                            args.batch_size, args.size)
    results["split"] = {"train_images": len(train.dataset), "test_images": len(test.dataset),
                        "num_classes": len(classes)}
    results["pipeline"] = {}
    for name in args.models:
        kwargs = {} if args.full else CPU_VARIANTS[name]
        print(f"\n== pipeline: {name} {kwargs}", flush=True)
        shutil.rmtree(args.out / name, ignore_errors=True)  # a fresh run: the retrainer would resume
        torch.manual_seed(0)
        teacher = cv_tasks.get_model(name, num_classes=len(classes), **kwargs).eval()
        start = time.perf_counter()
        report = run_pipeline(teacher, SegmentationModelManager(), train, test, (1, 3, args.size, args.size),
                              str(args.out / name), block_size_ratio=BLOCK_SIZE_RATIO.get(name, 0.125) if not args.full
                              else 0.125, device=args.device, verbose=not args.quiet)
        print(describe(report, name), flush=True)
        results["pipeline"][name] = {"kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
                                     "params": sum(p.numel() for p in teacher.parameters()),
                                     "total_s": round(time.perf_counter() - start, 2), **report.to_json()}
    if args.structure:
        print("\n== full-size models: blocks (extraction only)", flush=True)
        results["structure"] = structure_of_full_models(args.models, args.size, args.out, len(classes))
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults in {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
