"""PCK: the share of labelled joints predicted within ``threshold`` x a per-person size.

PCKh@0.5 (MPII) takes the head size as that size; for other data the person box's
longer side is used (PCK@0.2 being the usual threshold). Unlabelled joints do not count.
"""

from __future__ import annotations

import torch

__all__ = ["PCKAccumulator", "pck", "pck_counts"]


def _check(pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor, norm: torch.Tensor) -> None:
    if pred.shape != gt.shape or pred.dim() != 3 or pred.shape[-1] != 2:
        raise ValueError(f"predictions {tuple(pred.shape)} and ground truth {tuple(gt.shape)} must both be (N, K, 2); "
                         "a different K means the model predicts another joint set than the data has")
    if visible.shape != gt.shape[:2] or norm.shape != gt.shape[:1]:
        raise ValueError(f"visible must be (N, K) and norm (N,), got {tuple(visible.shape)} and {tuple(norm.shape)}")


def pck_counts(
    pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor, norm: torch.Tensor, threshold: float
) -> tuple[int, int]:
    """(correct, counted) joints; ``visible`` > 0 marks labelled joints, ``norm`` is (N,)."""
    _check(pred, gt, visible, norm)
    dist = torch.linalg.vector_norm(pred.double() - gt.double(), dim=-1)
    labelled = visible > 0
    correct = (dist <= threshold * norm.double()[:, None]) & labelled
    return int(correct.sum()), int(labelled.sum())


def pck(pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor, norm: torch.Tensor, threshold: float = 0.5) -> float:
    """PCK over all labelled joints of the (N, K, 2) arrays; raises if none is labelled."""
    correct, counted = pck_counts(pred, gt, visible, norm, threshold)
    if counted == 0:
        raise ValueError("no labelled joint to score (every visible flag is 0)")
    return correct / counted


class PCKAccumulator:
    """PCK over batches: ``update(image-space predictions, scores, meta)`` then ``compute``.

    ``head_size=True`` is PCKh: ``meta`` must hold head sizes (MPII data), else a box size.
    """

    def __init__(self, threshold: float = 0.5, head_size: bool = False) -> None:
        if not 0 < threshold:
            raise ValueError(f"PCK threshold must be positive, got {threshold}")
        self.threshold = threshold
        self.head_size = head_size
        self.correct = 0
        self.counted = 0

    def update(self, pred: torch.Tensor, scores: torch.Tensor, meta: dict) -> None:
        if "head_norm" in meta and bool(torch.as_tensor(meta["head_norm"]).all()) != self.head_size:
            raise ValueError("PCKh needs head sizes, which MPII data has (use PCK@0.2 for COCO data)" if self.head_size
                             else "this data is normalised by head size (MPII): use PCKh@0.5, not PCK")
        c, n = pck_counts(pred, meta["joints"], meta["visible"], meta["norm"], self.threshold)
        self.correct += c
        self.counted += n

    def compute(self) -> float:
        if self.counted == 0:
            raise ValueError("the test loader yielded no labelled joint; cannot compute PCK")
        return self.correct / self.counted


