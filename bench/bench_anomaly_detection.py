"""Anomaly detection through legodnn: metric checks on real labels, then the pipeline on each model.

    python bench/bench_anomaly_detection.py [--data ../shared/data/mvtec_ad] [--category NAME]
        [--epochs 12] [--block-epochs 3] [--accuracy-compositions 8] [--threads 2] [--out bench_anomaly_detection.json]

Data, all read through the task's own loaders:

* **digits, one-class** (real): scikit-learn's handwritten digits, digit ``--normal-class``
  normal, the other nine anomalous (the images ship with scikit-learn);
* **MVTec AD layout**: ``--data`` when it holds that layout; there is no shared MVTec data,
  so by default the bench writes a small generated set (striped textures with painted
  spots and scratches, and their masks) under the output folder, and says so.

Checks the metric code on the real labels and masks (ground truth as predictions gives
1.0, reversed 0.0, random scores match ``sklearn.metrics.roc_auc_score``), then per model
and data set: trains the teacher on normal images only, runs ``cv_tasks.pipeline.run_pipeline``
and prints blocks found, conv-parameter coverage, descendant size range, teacher image
(and pixel) AUROC and the wall time of each stage. The models are CPU-sized variants
(printed); their builders default to the full widths.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch.utils.data import DataLoader

from cv_tasks import get_model, get_model_manager
from cv_tasks.anomaly_detection.datasets import (
    MVTecAD,
    digits_one_class_dataloaders,
    mvtec_dataloaders,
)
from cv_tasks.anomaly_detection.metrics import pixel_roc_auc, roc_auc
from cv_tasks.anomaly_detection.synthetic import write_synthetic_mvtec
from cv_tasks.anomaly_detection.train import train_anomaly_model
from cv_tasks.pipeline import describe, run_pipeline

MODELS: Dict[str, Dict[str, Any]] = {
    "conv_autoencoder": dict(width=16),
    "rotation_resnet": dict(layers=(1, 1, 1, 1), base_width=16),
}


def check_metric(name: str, test: DataLoader) -> Dict[str, Any]:
    """The AUROC code on the data set's real labels (and masks): known answers and scikit-learn."""
    from sklearn.metrics import roc_auc_score

    labels = torch.cat([b[1] for b in test]).double()
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 20, labels.shape, generator=g).double()  # ties on purpose
    out: Dict[str, Any] = {
        "samples": int(labels.numel()),
        "anomalous": int(labels.sum()),
        "truth_as_scores": roc_auc(labels, labels),
        "reversed": roc_auc(-labels, labels),
        "random_ours": roc_auc(noise, labels),
        "random_sklearn": float(roc_auc_score(labels.numpy(), noise.numpy())),
    }
    if isinstance(test.dataset, MVTecAD):
        masks = torch.cat([b[2] for b in test])
        out["pixel_truth_as_map"] = pixel_roc_auc(masks, masks)
        blurred = torch.nn.functional.avg_pool2d(masks, 5, 1, 2)  # a smeared prediction: below 1, above 0.5
        out["pixel_blurred_ours"] = pixel_roc_auc(blurred, masks)
        out["pixel_blurred_sklearn"] = float(roc_auc_score(masks.flatten().numpy() > 0.5, blurred.flatten().numpy()))
    ok = (out["truth_as_scores"] == 1.0 and out["reversed"] == 0.0
          and abs(out["random_ours"] - out["random_sklearn"]) < 1e-9
          and ("pixel_truth_as_map" not in out or (out["pixel_truth_as_map"] == 1.0
               and abs(out["pixel_blurred_ours"] - out["pixel_blurred_sklearn"]) < 1e-9)))
    out["ok"] = ok
    print(f"[{name}] metric check on {out['samples']} real labels ({out['anomalous']} anomalous): "
          f"truth {out['truth_as_scores']}, reversed {out['reversed']}, random {out['random_ours']:.6f} "
          f"(sklearn {out['random_sklearn']:.6f})"
          + (f"; pixels: mask as map {out['pixel_truth_as_map']}, blurred {out['pixel_blurred_ours']:.6f} "
             f"(sklearn {out['pixel_blurred_sklearn']:.6f})" if "pixel_truth_as_map" in out else "")
          + f" -> {'OK' if ok else 'MISMATCH'}", flush=True)
    return out


def datasets(args: argparse.Namespace) -> List[Tuple[str, str, DataLoader, DataLoader, int]]:
    """(name, description, train, test, image size) of every data set the bench runs on."""
    train, test = digits_one_class_dataloaders(args.normal_class, batch_size=32)
    found: List[Tuple[str, str, DataLoader, DataLoader, int]] = [
        ("digits", f"scikit-learn digits (real), digit {args.normal_class} normal, 32x32", train, test, 32)]
    root = Path(args.data).expanduser() / (args.category or "")
    if (root / "train" / "good").is_dir():
        what = f"MVTec AD layout from {root}"
    else:
        root = write_synthetic_mvtec(args.out_dir / "mvtec_synthetic", "texture", image_size=64,
                                     num_train=80, num_test_good=20, num_test_defect=10)
        what = (f"no MVTec data at {args.data}: a generated MVTec-layout set written by the bench to {root} "
                "(synthetic textures, not real data)")
    train, test = mvtec_dataloaders(root, image_size=64, batch_size=16)
    found.append(("mvtec", f"{what}, 64x64", train, test, 64))
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/mvtec_ad", help="an MVTec-AD-layout folder (category or root)")
    p.add_argument("--category", default=None)
    p.add_argument("--normal-class", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12, help="teacher epochs")
    p.add_argument("--block-epochs", type=int, default=3)
    p.add_argument("--accuracy-compositions", type=int, default=8,
                   help="random compositions measured to check the AUROC estimate (0: none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench_anomaly_detection.json"))
    p.add_argument("--out-dir", type=Path, default=Path("runs") / "bench_anomaly_detection")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shutil.rmtree(args.out_dir, ignore_errors=True)
    args.out_dir.mkdir(parents=True)
    mm = get_model_manager("anomaly_detection")
    results: Dict[str, Any] = {"threads": args.threads, "models": MODELS, "runs": {}, "metric_checks": {}}
    for data_name, what, train, test, size in datasets(args):
        print(f"\n== data {data_name}: {what}; {len(train.dataset)} normal training images, "
              f"{len(test.dataset)} test images", flush=True)
        results["metric_checks"][data_name] = check_metric(data_name, test)
        for model_name, options in MODELS.items():
            torch.manual_seed(0)
            teacher = get_model(model_name, **options)
            start = time.perf_counter()
            train_anomaly_model(teacher, train, epochs=args.epochs, lr=3e-3, verbose=False)
            train_s = time.perf_counter() - start
            evaluation = mm.evaluate(teacher, test, "cpu")
            report = run_pipeline(teacher, mm, train, test, (1, 3, size, size),
                                  str(args.out_dir / f"{data_name}_{model_name}"), epochs=args.block_epochs,
                                  accuracy_compositions=args.accuracy_compositions, verbose=False)
            print(f"-- {model_name} {options}: teacher trained {args.epochs} epochs in {train_s:.1f} s, "
                  f"image AUROC {evaluation.image_auroc:.4f}"
                  + ("" if evaluation.pixel_auroc is None else f", pixel AUROC {evaluation.pixel_auroc:.4f}"))
            print(describe(report, f"{model_name} on {data_name}"), flush=True)
            results["runs"][f"{data_name}/{model_name}"] = {
                "data": what, "teacher_train_seconds": round(train_s, 2),
                "image_auroc": evaluation.image_auroc, "pixel_auroc": evaluation.pixel_auroc,
                "pipeline": report.to_json(),
            }
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
