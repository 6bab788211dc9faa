"""Brief detector training: torchvision detectors return their losses in train mode.

Enough to make a randomly initialised detector's mAP meaningful on a small data set
(the demo and the bench); not a recipe for COCO-scale training.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["train_detector"]


def train_detector(model: nn.Module, loader: Iterable[Any], epochs: int = 1, lr: float = 1e-3,
                   device: str = "cpu", weight_decay: float = 1e-4, max_grad_norm: float = 10.0,
                   verbose: bool = True, max_steps: Optional[int] = None) -> List[float]:
    """Train with AdamW and a cosine schedule; returns the mean total loss per epoch.

    Batches are ``(images, targets)`` from :func:`detection_collate`. Raises ``ValueError``
    when a loss is not finite (a learning rate too high, or boxes outside the image).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * len(loader) if hasattr(loader, "__len__") else epochs * 100  # type: ignore[arg-type]
    steps = min(steps, max_steps) if max_steps else steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    history: List[float] = []
    step = 0
    for epoch in range(epochs):
        total, n = 0.0, 0
        bar = tqdm(loader, desc=f"train epoch {epoch + 1}/{epochs}", disable=not verbose, leave=False)
        for images, targets in bar:
            images = [img.to(device) for img in images]
            targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
            losses: Dict[str, torch.Tensor] = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise ValueError(f"non-finite training loss {({k: float(v) for k, v in losses.items()})}; "
                                 "lower lr or check the boxes")
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            if step < steps - 1:
                sched.step()
            step += 1
            total += float(loss.detach())
            n += 1
            bar.set_postfix(loss=f"{total / n:.3f}")
            if max_steps and step >= max_steps:
                break
        history.append(total / max(n, 1))
        if max_steps and step >= max_steps:
            break
    model.eval()
    return history
