"""Brief teacher training, so a demo's metric means something before legodnn prunes it.

The loss follows the model's output: weighted MSE on heatmaps (SimpleBaseline), L1 on
normalised coordinates (DeepPose), and Keypoint R-CNN's own losses, with a target made
from the crop's labelled joints. Joints with target weight 0 (unlabelled, outside the
crop) never contribute.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["pose_loss", "train_pose_model"]


def _rcnn_targets(batch: Sequence[Any], device: torch.device) -> list[dict[str, torch.Tensor]]:
    images, _, weight, meta = batch
    h, w = images.shape[2:]
    joints = meta["crop_joints"].to(device) * torch.tensor([w, h], device=device)
    targets = []
    for j, v in zip(joints, weight.to(device)):
        seen = j[v > 0] if bool((v > 0).any()) else j.new_tensor([[w / 2, h / 2]])
        lo, hi = seen.min(0).values - 4, seen.max(0).values + 4
        box = torch.cat([lo.clamp(min=0), torch.stack([hi[0].clamp(max=w - 1), hi[1].clamp(max=h - 1)])])
        kp = torch.cat([j, (v > 0).float()[:, None] * 2], dim=1)
        targets.append({"boxes": box[None], "labels": torch.ones(1, dtype=torch.int64, device=device), "keypoints": kp[None]})
    return targets


def pose_loss(model: nn.Module, batch: Sequence[Any], device: torch.device) -> torch.Tensor:
    """The training loss of ``model`` (in train mode) on one loader batch."""
    images, heatmaps, weight = batch[0].to(device), batch[1].to(device), batch[2].to(device)
    from torchvision.models.detection import KeypointRCNN

    if isinstance(model, KeypointRCNN):
        return sum(model(list(images), _rcnn_targets(batch, device)).values())
    out = model(images)
    if out.dim() == 4:
        if out.shape != heatmaps.shape:
            raise ValueError(f"model heatmaps {tuple(out.shape)} differ from targets {tuple(heatmaps.shape)}: make the "
                             "data set's input_size / stride match the model (input sides multiples of 32)")
        return (((out - heatmaps) ** 2).mean(dim=(2, 3)) * weight).mean() * 1000
    target = batch[3]["crop_joints"].to(device).float()
    return ((out - target).abs().sum(dim=2) * weight).mean()


def train_pose_model(
    model: nn.Module,
    loader: Iterable[Any],
    epochs: int = 1,
    lr: float = 2e-3,
    device: str = "cpu",
    verbose: bool = True,
) -> list[float]:
    """Train ``model`` with Adam for ``epochs``; returns the mean loss of each epoch."""
    torch_device = torch.device(device)
    model.to(torch_device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    history: list[float] = []
    for epoch in range(epochs):
        total, n = 0.0, 0
        for batch in tqdm(loader, desc=f"training teacher {epoch + 1}/{epochs}", disable=not verbose, leave=False):
            loss = pose_loss(model, batch, torch_device)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item(), n + 1
        sched.step()
        history.append(total / max(1, n))
    model.eval()
    return history
