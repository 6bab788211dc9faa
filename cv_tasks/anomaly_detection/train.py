"""Train an anomaly teacher on normal images: minimise its own anomaly score.

Every model of this task returns its anomaly score from ``forward``, and that score on
normal data is the training objective: the reconstruction error of the autoencoder, the
rotation negative log-likelihood of the rotation ResNet. So one loop trains them all,
and it must only ever see normal images (``train/good``, or the normal class): the
loaders of this package give exactly those.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Union

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["train_anomaly_model"]


def train_anomaly_model(
    model: nn.Module,
    train_loader: Iterable[Any],
    epochs: int = 10,
    lr: float = 1e-3,
    device: Union[str, torch.device] = "cpu",
    verbose: bool = True,
) -> List[float]:
    """Adam on ``model(images).mean()`` for ``epochs`` passes; returns each epoch's mean loss.

    The model is left in eval mode. Raises ``ValueError`` for ``epochs < 1`` or an empty loader.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    history: List[float] = []
    for epoch in tqdm(range(epochs), desc="training teacher", disable=not verbose, leave=False):
        total, n = 0.0, 0
        for batch in train_loader:
            images = batch[0].to(device)
            loss = model(images).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(images), n + len(images)
        if n == 0:
            raise ValueError("train_loader yielded no images; the teacher needs normal training images")
        sched.step()
        history.append(total / n)
    model.eval()
    return history
