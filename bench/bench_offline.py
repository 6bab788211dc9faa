"""The offline phase on real CIFAR-10: teacher, blocks, retraining, profiling, with timings.

    python bench/bench_offline.py --cifar ../shared/data/cifar10-jpg.tar.gz [--train 10000] [--test 2000]
        [--width 16] [--epochs 15] [--block-epochs 3] [--threads 2] [--out offline.json]

``--cifar`` is CIFAR-10 as JPEGs in ImageFolder layout (``train/<class>/*.jpg``,
``test/<class>/*.jpg``), a folder or a .tar.gz of it. On this 2-core CPU the full data
set and the full-width ResNet-18 take hours, so the defaults use a random subset and a
narrower ResNet-18 (``--width``); the output says which. Prints the teacher's accuracy;
per sparsity level with every block at that level, the accuracy of the retrained
descendants against the same pruning without retraining; the error of the additive
accuracy estimate (teacher minus summed drops) over random compositions; and the wall
time of each stage.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cv_tasks import get_model
from cv_tasks.image_classification.train import train_classifier
from legodnn import AutoBlockManager, BlockProfiler, BlockRetrainer, CommonModelManager

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.3, 0.6, 0.8]
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)


def _root(path: Path, cache: Path) -> Path:
    if path.is_dir():
        return path
    target = cache / "cifar10-jpg"
    if not (target / "train").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(target, filter="data")
    found = next(p.parent for p in target.rglob("train") if (p.parent / "test").is_dir())
    return found


def _load(split: Path, n: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    classes = sorted(p.name for p in split.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((split / c).iterdir())]
    random.Random(seed).shuffle(files)
    files = files[:n]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in files])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor([i for _, i in files])


class _Cifar(Dataset):
    """uint8 images in memory; random crop (pad 4) and flip when training; CIFAR normalization."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, train: bool) -> None:
        self.x, self.y, self.train = x, y, train

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i].float() / 255
        if self.train:
            img = torch.nn.functional.pad(img, (4, 4, 4, 4), mode="reflect")
            dx, dy = random.randint(0, 8), random.randint(0, 8)
            img = img[:, dy : dy + 32, dx : dx + 32]
            if random.random() < 0.5:
                img = img.flip(2)
        return (img - MEAN) / STD, self.y[i]


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", required=True)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "legodnn-bench"))
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 base width (64 is the usual)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--block-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--compositions", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    timings: Dict[str, float] = {}
    results: Dict[str, Any] = {"settings": vars(args)}

    t = time.perf_counter()
    root = _root(Path(args.cifar), Path(args.cache))
    xtr, ytr = _load(root / "train", args.train, 0)
    xte, yte = _load(root / "test", args.test, 1)
    train = DataLoader(_Cifar(xtr, ytr, True), batch_size=args.batch_size, shuffle=True)
    test = DataLoader(_Cifar(xte, yte, False), batch_size=256)
    timings["load data"] = time.perf_counter() - t
    print(f"CIFAR-10 from {root}: {len(ytr)} training and {len(yte)} test images (random subsets)")

    work = Path(args.cache) / "run"
    shutil.rmtree(work, ignore_errors=True)  # a fresh run: no resume from another configuration
    t = time.perf_counter()
    teacher = get_model("cifar_resnet18", num_classes=10, base_width=args.width)
    acc = train_classifier(teacher, train, test, args.epochs, lr=0.1, device="cpu", verbose=False)
    teacher.eval()
    timings["train teacher"] = time.perf_counter() - t
    print(f"teacher: cifar_resnet18 base width {args.width}, {args.epochs} epochs, test accuracy {acc:.4f}")

    mm = CommonModelManager()
    t = time.perf_counter()
    bm = AutoBlockManager(SPARSITIES, teacher, mm, SIZE, 0.125, "cpu", verbose=False)
    bm.extract_all_blocks(str(work / "compressed"))
    timings["extract blocks"] = time.perf_counter() - t

    t = time.perf_counter()
    BlockRetrainer(teacher, bm, mm, str(work / "compressed"), str(work / "trained"), args.block_epochs, train,
                   device="cpu", verbose=False).train_all_blocks()
    timings["retrain blocks"] = time.perf_counter() - t

    t = time.perf_counter()
    profiler = BlockProfiler(teacher, bm, mm, str(work / "trained"), test, SIZE, "cpu", verbose=False)
    profile = profiler.profile_all_blocks()
    timings["profile blocks"] = time.perf_counter() - t

    t = time.perf_counter()
    report = profiler.validate_accuracy_model(args.compositions, seed=0)
    timings["validate accuracy model"] = time.perf_counter() - t

    t = time.perf_counter()
    levels = []
    for s in SPARSITIES[1:]:
        row = {"sparsity": s}
        for kind in ("compressed", "trained"):
            blocks = {n: bm.load_descendant(str(work / kind), n, s) for n in bm.block_names}
            model = bm.compose(blocks)
            row[kind] = mm.get_model_acc(model, test, "cpu")
            row["params"] = sum(p.numel() for p in model.parameters())
        levels.append(row)
    timings["uniform levels"] = time.perf_counter() - t

    print(f"\n{'sparsity':>8} {'params':>10} {'no retraining':>14} {'retrained':>10}")
    print(f"{0.0:8.1f} {sum(p.numel() for p in teacher.parameters()):10,d} {acc:14.4f} {acc:10.4f}")
    for r in levels:
        print(f"{r['sparsity']:8.1f} {r['params']:10,d} {r['compressed']:14.4f} {r['trained']:10.4f}")
    print(f"\nadditive accuracy estimate over {args.compositions} random compositions: mean |error| "
          f"{report.mean_abs_error:.4f}, max |error| {report.max_abs_error:.4f} (accuracy points as fractions)")
    print("\nwall time per stage:")
    for k, v in timings.items():
        print(f"  {k:26s} {v:8.1f} s")
    results.update(teacher_accuracy=acc, levels=levels, timings=timings,
                   accuracy_model={"mean_abs_error": report.mean_abs_error, "max_abs_error": report.max_abs_error,
                                   "estimated": report.estimated, "measured": report.measured},
                   teacher_metric_profile=profile.teacher_metric)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
