"""Validation of the prediction and target lists both mAP metrics take.

Predictions and targets are torchvision's format: one dict per image, boxes as
``(x1, y1, x2, y2)`` in pixels. A wrong shape or a missing key is reported here, by
image index, rather than as an indexing error deep inside the matching code.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Sequence, Tuple

import torch

__all__ = ["checked_pairs"]

_PRED_KEYS = ("boxes", "scores", "labels")
_TARGET_KEYS = ("boxes", "labels")


def _boxes(d: Mapping[str, Any], i: int, what: str) -> torch.Tensor:
    boxes = torch.as_tensor(d["boxes"], dtype=torch.float64).detach().cpu()
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} {i}: boxes must have shape (N, 4) as (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{what} {i}: boxes contain NaN or infinity")
    return boxes


def _vector(d: Mapping[str, Any], key: str, n: int, i: int, what: str, dtype: torch.dtype) -> torch.Tensor:
    v = torch.as_tensor(d[key], dtype=dtype).detach().cpu().reshape(-1)
    if v.numel() != n:
        raise ValueError(f"{what} {i}: {n} boxes but {v.numel()} {key}")
    return v


def checked_pairs(
    predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]
) -> List[Tuple[dict, dict]]:
    """(prediction, target) per image as float64/int64 CPU tensors; raises ``ValueError`` on bad input.

    Targets may carry ``difficult`` (VOC) or ``iscrowd`` (COCO) flags; missing ones are 0.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets: give one dict per image")
    pairs = []
    for i, (p, t) in enumerate(zip(predictions, targets)):
        for d, keys, what in ((p, _PRED_KEYS, "prediction"), (t, _TARGET_KEYS, "target")):
            missing = [k for k in keys if k not in d]
            if missing:
                raise ValueError(f"{what} {i} lacks {missing}; expected a dict with keys {list(keys)}")
        pb, tb = _boxes(p, i, "prediction"), _boxes(t, i, "target")
        pred = {"boxes": pb, "scores": _vector(p, "scores", len(pb), i, "prediction", torch.float64),
                "labels": _vector(p, "labels", len(pb), i, "prediction", torch.int64)}
        flags = {k: _vector(t, k, len(tb), i, "target", torch.bool) if k in t else torch.zeros(len(tb), dtype=torch.bool)
                 for k in ("difficult", "iscrowd")}
        target = {"boxes": tb, "labels": _vector(t, "labels", len(tb), i, "target", torch.int64), **flags}
        pairs.append((pred, target))
    return pairs
