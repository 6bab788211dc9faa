"""Brief teacher training for segmentation: per-pixel cross-entropy, void ignored.

Enough to make a demo's or benchmark's mIoU meaningful before legodnn prunes the model;
not a recipe for state-of-the-art training (no poly schedule, no auxiliary loss).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, List

import torch
import torch.nn.functional as F
from torch import nn

from cv_tasks.semantic_segmentation.metrics import IGNORE_INDEX, logits_of

__all__ = ["recalibrate_batchnorm", "train_segmenter"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: Iterable[Any], device: str = "cpu",
                          max_batches: int = 50) -> None:
    """Re-estimate every BatchNorm's running statistics as a plain average over up to
    ``max_batches`` batches of ``loader``.

    After a brief training the running statistics lag the weights: torchvision's
    MobileNetV3 updates them with momentum 0.01, so a few dozen steps leave them mostly at
    their initial values and the model in eval mode predicts one class everywhere.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            model(batch[0].to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def train_segmenter(model: nn.Module, train_loader: Iterable[Any], epochs: int = 1, lr: float = 3e-3,
                    device: str = "cpu", ignore_index: int = IGNORE_INDEX, verbose: bool = True) -> List[float]:
    """Train ``model`` in place with AdamW on ``(images, masks)`` batches; returns the mean
    loss of each epoch. BatchNorm statistics are then re-estimated
    (:func:`recalibrate_batchnorm`) and the model is left in eval mode."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    from tqdm.auto import tqdm

    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    history: List[float] = []
    for epoch in range(epochs):
        total, batches = 0.0, 0
        for images, masks in tqdm(train_loader, desc=f"train epoch {epoch + 1}/{epochs}", disable=not verbose,
                                  leave=False):
            logits = logits_of(model(images.to(device)))
            loss = F.cross_entropy(logits, masks.to(device), ignore_index=ignore_index)
            if not torch.isfinite(loss):
                raise ValueError(f"the training loss is {loss.item()} at epoch {epoch + 1}; lower lr (now {lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.detach().item(), batches + 1
        if batches == 0:
            raise ValueError("train_loader yielded no batches")
        history.append(total / batches)
    recalibrate_batchnorm(model, train_loader, device)
    model.eval()
    return history
