"""Gaussian heatmap targets and their decoding (argmax + quarter-pixel offset).

Targets are drawn at the exact sub-pixel joint position on the heatmap grid (crop
coordinates / stride), so encoding then decoding an integer-grid joint returns it
exactly. Joints that are unlabelled or fall outside the crop get weight 0, so the
loss ignores them rather than teaching the model to predict an empty map.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["decode_heatmaps", "encode_heatmaps"]


def encode_heatmaps(
    joints: np.ndarray, visible: np.ndarray, heatmap_size: tuple[int, int], stride: float, sigma: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """(K, h, w) float32 Gaussians and (K,) float32 weights for crop-space ``joints`` (K, 2).

    ``visible`` > 0 marks labelled joints (COCO flags 1 and 2, MPII ``joints_vis`` 1).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    h, w = heatmap_size
    k = len(joints)
    maps = np.zeros((k, h, w), dtype=np.float32)
    weights = np.zeros(k, dtype=np.float32)
    ys, xs = np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]
    for j in range(k):
        x, y = joints[j] / stride
        if visible[j] <= 0 or not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            continue
        maps[j] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
        weights[j] = 1.0
    return maps, weights


def decode_heatmaps(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint positions (N, K, 2) on the heatmap grid and scores (N, K) from (N, K, h, w) maps.

    The argmax is moved a quarter pixel toward the higher neighbour on each axis, the
    usual correction for the grid's quantisation (SimpleBaseline, HRNet).
    """
    if heatmaps.dim() != 4:
        raise ValueError(f"heatmaps must be (N, K, h, w), got shape {tuple(heatmaps.shape)}")
    n, k, h, w = heatmaps.shape
    hm = heatmaps.detach().float().cpu()
    flat = hm.reshape(n, k, -1)
    scores, idx = flat.max(dim=2)
    x = (idx % w).float()
    y = torch.div(idx, w, rounding_mode="floor").float()
    xi, yi = x.long(), y.long()
    rows = hm.reshape(n * k, h, w)
    r = torch.arange(n * k)
    xi_f, yi_f = xi.reshape(-1), yi.reshape(-1)
    right = rows[r, yi_f, (xi_f + 1).clamp(max=w - 1)]
    left = rows[r, yi_f, (xi_f - 1).clamp(min=0)]
    down = rows[r, (yi_f + 1).clamp(max=h - 1), xi_f]
    up = rows[r, (yi_f - 1).clamp(min=0), xi_f]
    inner_x = (xi_f > 0) & (xi_f < w - 1)
    inner_y = (yi_f > 0) & (yi_f < h - 1)
    dx = torch.where(inner_x, torch.sign(right - left) * 0.25, torch.zeros_like(right))
    dy = torch.where(inner_y, torch.sign(down - up) * 0.25, torch.zeros_like(down))
    coords = torch.stack([x + dx.reshape(n, k), y + dy.reshape(n, k)], dim=2)
    return coords, scores
