"""Training a clip classifier briefly, so that the metric the pipeline profiles means something."""

from __future__ import annotations

import math
from typing import Any, Iterable, List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["train_clip_classifier"]


def train_clip_classifier(
    model: nn.Module,
    train_loader: Iterable[Sequence[Any]],
    epochs: int,
    lr: float = 2e-3,
    device: Union[str, torch.device] = "cpu",
    verbose: bool = True,
    *,
    weight_decay: float = 1e-4,
) -> List[float]:
    """Train ``model`` in place on ``(clips, labels, ...)`` batches with AdamW and a cosine schedule.

    Returns the mean training loss of each epoch; the model ends in eval mode on ``device``.
    Raises ``ValueError`` for an empty loader and ``FloatingPointError`` if the loss diverges.
    """
    from tqdm.auto import tqdm

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    steps = epochs * len(train_loader)  # type: ignore[arg-type]
    if steps == 0:
        raise ValueError("train_loader yielded no batches")
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    for epoch in range(epochs):
        model.train()
        total = seen = 0.0
        for batch in tqdm(train_loader, desc=f"teacher epoch {epoch + 1}/{epochs}", disable=not verbose,
                          leave=False):
            clips, labels = batch[0].to(device), torch.as_tensor(batch[1]).to(device)
            loss = F.cross_entropy(model(clips), labels)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value}; lower the learning rate (lr={lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += value * len(labels)
            seen += len(labels)
        losses.append(total / seen)
        if verbose:
            tqdm.write(f"teacher epoch {epoch + 1}/{epochs}: train loss {losses[-1]:.4f}")
    model.eval()
    return losses
