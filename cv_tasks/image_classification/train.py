"""Train an image classifier from scratch: the teacher that legodnn then cuts into blocks.

The recipe: SGD with Nesterov momentum 0.9 and weight decay 5e-4 on cross-entropy; the
learning rate rises linearly from 0 to ``lr`` over the first 10% of steps (BatchNorm
statistics settle before large steps) and then follows a cosine to 0, stepped per batch
so that even a one-epoch run gets the whole schedule. SGD rather than Adam: with this
schedule it is the usual CIFAR recipe, and it generalises at least as well. Measured
here: 99.4% test accuracy on the digits with ``cifar_resnet18(base_width=16)`` after 8
epochs (batch 64, lr 0.05; about a minute on two CPU cores). For CIFAR-10 the defaults
(batch 128, lr 0.1, 30 epochs) are the common ones; expect hours on a CPU, minutes on a GPU.

From the command line::

    python -m cv_tasks.image_classification.train --model cifar_resnet18 --data ROOT \\
        --epochs 30 --out weights.safetensors
    python -m cv_tasks.image_classification.train --dataset digits --base-width 16 \\
        --epochs 8 --batch-size 64 --lr 0.05 --out digits_resnet18.safetensors

Weights are saved as safetensors (no pickle), written to a temporary file and renamed,
with the model name, its arguments, the data set and the test accuracy as metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = ["evaluate", "load_weights", "main", "save_weights", "train_classifier", "warmup_cosine"]

PathLike = Union[str, Path]
Batch = Tuple[torch.Tensor, torch.Tensor]


def warmup_cosine(step: int, total: int, warmup_fraction: float = 0.1) -> float:
    """The learning-rate factor at ``step`` of ``total``: linear warm-up, then a cosine to 0."""
    warmup = max(1, round(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Batch], device: Union[str, torch.device]) -> float:
    """Top-1 accuracy in [0, 1] over ``loader``; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in loader:
            pred = model(x.to(device, non_blocking=True)).argmax(1)
            correct += int((pred.cpu() == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("the test loader yielded no samples; cannot compute accuracy")
    return correct / total


def train_classifier(
    model: nn.Module,
    train_loader: Iterable[Batch],
    test_loader: Iterable[Batch],
    epochs: int,
    lr: float = 0.1,
    device: Union[str, torch.device] = "cpu",
    verbose: bool = True,
    *,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> float:
    """Train ``model`` in place for ``epochs`` epochs and return its test accuracy in [0, 1].

    ``verbose`` shows a progress bar per epoch and one line per epoch (train loss and
    accuracy); ``verbose=False`` prints nothing. The model ends in eval mode, on ``device``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError("train_loader must have a length (a DataLoader or a list of batches)") from exc
    if steps_per_epoch == 0:
        raise ValueError("train_loader yielded no batches")
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True,
                                weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total))
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        loss_sum = 0.0
        correct = seen = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not verbose, leave=False)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"the training loss became {value} in epoch {epoch + 1}; lower the learning rate (lr={lr}) "
                    "or check the data for NaN or infinite values"
                )
            loss_sum += value * len(y)
            correct += int((out.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{schedule.get_last_lr()[0]:.3g}")
        if verbose:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: train loss {loss_sum / seen:.4f}, train accuracy "
                       f"{correct / seen:.4f}, {time.perf_counter() - start:.1f} s")
    accuracy = evaluate(model, test_loader, device)
    model.eval()
    if verbose:
        tqdm.write(f"test accuracy {accuracy:.4f}")
    return accuracy


def save_weights(model: nn.Module, path: PathLike, metadata: Optional[Dict[str, Any]] = None) -> Path:
    """Write the model's state dict as safetensors, atomically (temporary file + rename).

    ``metadata`` values are stored as strings (JSON for anything but a string).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt", **meta})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_weights(model: nn.Module, path: PathLike) -> Dict[str, str]:
    """Load safetensors weights saved by :func:`save_weights` into ``model``; returns the metadata.

    Raises ``FileNotFoundError`` or ``ValueError`` (weights of another architecture) with
    what the file holds.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights file at {path}; train one with python -m cv_tasks.image_classification.train"
        )
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    state = load_file(str(path))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        saved = {k: v for k, v in metadata.items() if k != "format"}
        reason = str(exc).strip().splitlines()
        raise ValueError(
            f"the weights in {path} do not fit this {type(model).__name__} ({reason[-1].strip() if reason else exc}); "
            f"they were saved from {saved or 'a model without metadata'}: build the same model (name, num_classes, "
            "base_width)"
        ) from exc
    return metadata


def _loaders(args: argparse.Namespace) -> Tuple[Any, Any, int]:
    from cv_tasks.image_classification import datasets

    common = dict(batch_size=args.batch_size, num_workers=args.num_workers, train_subset=args.train_subset,
                  test_subset=args.test_subset, seed=args.seed)
    if args.dataset == "digits":
        return (*datasets.digits_dataloaders(**common), 10)
    make = datasets.cifar10_dataloaders if args.dataset == "cifar10" else datasets.cifar100_dataloaders
    return (*make(args.data, download=args.download, **common), 10 if args.dataset == "cifar10" else 100)


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Command line: train a registered model on CIFAR-10/100 or the digits; returns the test accuracy."""
    import cv_tasks

    parser = argparse.ArgumentParser(
        prog="python -m cv_tasks.image_classification.train",
        description="Train an image classifier from scratch (SGD, Nesterov momentum, warm-up + cosine LR) "
        "and save its weights as safetensors.",
    )
    parser.add_argument("--model", default="cifar_resnet18", help="a registered model (default cifar_resnet18)")
    parser.add_argument("--base-width", type=int, default=None, help="first-stage channels of a ResNet (default 64)")
    parser.add_argument("--dataset", choices=("cifar10", "cifar100", "digits"), default="cifar10")
    parser.add_argument("--data", type=Path, default=None, help="root holding cifar-10-batches-py / cifar-100-python")
    parser.add_argument("--download", action="store_true", help="download CIFAR into --data if it is not there")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many random images")
    parser.add_argument("--test-subset", type=int, default=None, help="test on this many random images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.safetensors)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    if args.dataset != "digits" and args.data is None:
        parser.error(f"--data ROOT is needed for {args.dataset} (or use --dataset digits, which needs no files)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    train_loader, test_loader, num_classes = _loaders(args)
    kwargs: Dict[str, Any] = {"num_classes": num_classes}
    if args.base_width is not None:
        kwargs["base_width"] = args.base_width
    model = cv_tasks.get_model(args.model, **kwargs)
    start = time.perf_counter()
    accuracy = train_classifier(model, train_loader, test_loader, args.epochs, args.lr, device, not args.quiet)
    save_weights(model, args.out, {"model": args.model, "kwargs": kwargs, "dataset": args.dataset,
                                   "epochs": args.epochs, "test_accuracy": accuracy})
    if not args.quiet:
        print(f"{args.model} on {args.dataset}: test accuracy {accuracy:.4f} after {args.epochs} epochs "
              f"({time.perf_counter() - start:.0f} s); weights in {args.out}")
    return accuracy


if __name__ == "__main__":
    main()
