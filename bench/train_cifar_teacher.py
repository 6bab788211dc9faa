"""Train the converged CIFAR-10 teacher that ``bench_accuracy.py`` cuts into blocks.

The recipe of ``cv_tasks.image_classification.train`` (SGD, Nesterov momentum 0.9,
weight decay 5e-4, linear warm-up then cosine, stepped per batch) with the standard
CIFAR augmentation (4-pixel padded random crop, flip). Every epoch writes a resumable
checkpoint (model, momentum buffers, epoch, the test accuracy so far) as safetensors, so
a killed run continues where it stopped; the final weights go to ``--out`` with the
command's arguments and the per-epoch test accuracies as metadata.

    python bench/train_cifar_teacher.py --cache ~/.cache/legodnn/cifar10 \\
        --train-images 20000 --epochs 40 --threads 1 --out bench/weights/cifar10_resnet18_w16.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cifar10_jpg  # noqa: E402

from cv_tasks import get_model  # noqa: E402
from cv_tasks.image_classification.train import evaluate, save_weights, warmup_cosine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, required=True, help="where the decoded CIFAR-10 arrays are kept")
    p.add_argument("--archive", type=Path, default=cifar10_jpg.DEFAULT_ARCHIVE)
    p.add_argument("--train-images", type=int, default=50000)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = cifar10_jpg.load_split("train", args.cache, args.archive).subset(args.train_images, args.seed)
    test = cifar10_jpg.load_split("test", args.cache, args.archive)
    train_batches = cifar10_jpg.Batches(train, args.batch_size, train=True, seed=args.seed)
    test_batches = cifar10_jpg.Batches(test, 500, train=False)
    # channels_last: about 1.5x faster convolutions on this CPU (0.36 s against 0.54 s a batch of 128)
    model = get_model("cifar_resnet18", num_classes=10, base_width=args.base_width).to(
        args.device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    total = args.epochs * len(train_batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total))
    ckpt = args.out.with_suffix(".resume.safetensors")
    history: list = []
    start_epoch = 0
    if ckpt.is_file():
        from safetensors import safe_open
        from safetensors.torch import load_file

        tensors = load_file(str(ckpt))
        with safe_open(str(ckpt), framework="pt") as f:
            meta = f.metadata()
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        for i, param in enumerate(model.parameters()):
            opt.state[param]["momentum_buffer"] = tensors[f"momentum.{i}"].to(args.device)
        start_epoch = int(meta["epoch"])
        history = json.loads(meta["history"])
        for _ in range(start_epoch * len(train_batches)):
            sched.step()
        train_batches.epoch = start_epoch
        print(f"resuming after epoch {start_epoch}", flush=True)
    began = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        model.train()
        t0 = time.perf_counter()
        loss_sum = 0.0
        for x, y in train_batches:
            x, y = x.to(args.device, memory_format=torch.channels_last), y.to(args.device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss)
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"loss became {loss_sum} in epoch {epoch + 1}")
        acc = evaluate(model, test_batches, args.device)
        history.append(round(acc, 4))
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        for i, param in enumerate(model.parameters()):
            tensors[f"momentum.{i}"] = opt.state[param]["momentum_buffer"].detach().cpu().contiguous()
        from safetensors.torch import save_file

        tmp = ckpt.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"epoch": str(epoch + 1), "history": json.dumps(history)})
        tmp.replace(ckpt)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {loss_sum / len(train_batches):.4f}, "
              f"test accuracy {acc:.4f}, {time.perf_counter() - t0:.0f} s", flush=True)
    model.eval()
    meta = {"model": "cifar_resnet18", "kwargs": {"num_classes": 10, "base_width": args.base_width},
            "dataset": "cifar10", "train_images": len(train), "epochs": args.epochs, "seed": args.seed,
            "batch_size": args.batch_size, "lr": args.lr, "test_accuracy": history[-1],
            "test_accuracy_per_epoch": history}
    save_weights(model, args.out, meta)
    print(f"test accuracy {history[-1]:.4f} after {args.epochs} epochs ({time.perf_counter() - began:.0f} s this run); "
          f"weights in {args.out}")


if __name__ == "__main__":
    main()
