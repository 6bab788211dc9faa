"""From any pose model's output to joints in image coordinates.

Three output forms are understood: heatmaps (N, K, h, w), normalised coordinates
(N, K, 2) in [0, 1] of the crop, and Keypoint R-CNN's list of detections (the best
one per crop; a crop with none predicts the crop centre with score 0). Crop positions
go back to the image through each sample's inverse crop affine (``meta["inverse"]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cv_tasks.pose_estimation.heatmaps import decode_heatmaps

__all__ = ["crop_predictions", "decode_output", "to_image_space"]


def crop_predictions(output: Any, input_hw: tuple[int, int], num_joints: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop-space joints (N, K, 2) and per-person scores (N,) from a model output."""
    h, w = input_hw
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        coords, joint_scores = decode_heatmaps(output)
        stride = torch.tensor([w / output.shape[3], h / output.shape[2]], dtype=torch.float64)
        return coords.double() * stride, joint_scores.double().mean(dim=1)
    if isinstance(output, torch.Tensor) and output.dim() == 3 and output.shape[2] == 2:
        coords = output.detach().double().cpu() * torch.tensor([w, h], dtype=torch.float64)
        return coords, torch.ones(output.shape[0], dtype=torch.float64)
    if isinstance(output, (list, tuple)) and all(isinstance(d, dict) and "keypoints" in d for d in output):
        return _best_detections(output, (h, w), num_joints)
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    raise ValueError(f"cannot read pose predictions from a model output of {shape}: expected heatmaps (N, K, h, w), "
                     "coordinates (N, K, 2) or Keypoint R-CNN detections")


def _best_detections(output: Sequence[dict[str, torch.Tensor]], hw: tuple[int, int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    joints, scores = [], []
    for d in output:
        kp, s = d["keypoints"].detach().cpu().double(), d["scores"].detach().cpu().double()
        if len(s):
            best = int(s.argmax())
            joints.append(kp[best, :, :2])
            scores.append(s[best])
        else:
            joints.append(torch.tensor([(hw[1] - 1) / 2, (hw[0] - 1) / 2], dtype=torch.float64).expand(kp.shape[1] or k, 2))
            scores.append(torch.tensor(0.0, dtype=torch.float64))
    return torch.stack(joints), torch.stack(scores)


def to_image_space(crop_joints: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Map (N, K, 2) crop positions through each sample's (N, 2, 3) inverse affine."""
    inv = inverse.double().cpu()
    return torch.einsum("nkc,nrc->nkr", crop_joints.double(), inv[:, :, :2]) + inv[:, None, :, 2]


def decode_output(output: Any, batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-space joints (N, K, 2) and person scores (N,) for a loader batch's output."""
    images, meta = batch[0], batch[3]
    k = int(meta["joints"].shape[1])
    crop, scores = crop_predictions(output, (int(images.shape[2]), int(images.shape[3])), k)
    return to_image_space(crop, meta["inverse"]), scores
