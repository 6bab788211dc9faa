"""Pascal VOC mAP@0.5: per-class AP with all-point interpolation (VOC2010 and later).

Written from the VOC devkit's definition: detections of a class, in falling score
order, are matched to the not-yet-matched ground-truth box of highest IoU in the same
image; IoU >= the threshold makes a true positive, else a false positive. A detection
whose best match is a "difficult" box counts as neither, and difficult boxes are not
in the recall denominator. AP is the area under the precision envelope (precision made
monotone from the right) over all recall points. mAP averages the classes that have
at least one non-difficult ground-truth box; detections of other classes are ignored.
COCO crowd boxes (``iscrowd``), when the targets carry them, are treated as difficult.
Box areas are continuous ``(x2 - x1) * (y2 - y1)``, as in COCO (the devkit adds one pixel).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import torch

from cv_tasks.object_detection.metrics.accumulator import MapAccumulator
from cv_tasks.object_detection.metrics.checks import checked_pairs

__all__ = ["VocMAP", "average_precision", "box_iou", "voc_map"]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix (len(a), len(b)) of ``(x1, y1, x2, y2)`` boxes; degenerate boxes have IoU 0."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def average_precision(recall: torch.Tensor, precision: torch.Tensor) -> float:
    """All-point interpolated AP: area under the right-to-left running max of precision."""
    mrec = torch.cat([torch.zeros(1, dtype=torch.float64), recall.double(), torch.ones(1, dtype=torch.float64)])
    mpre = torch.cat([torch.zeros(1, dtype=torch.float64), precision.double(), torch.zeros(1, dtype=torch.float64)])
    mpre = torch.flip(torch.cummax(torch.flip(mpre, [0]), 0).values, [0])
    steps = torch.nonzero(mrec[1:] != mrec[:-1]).flatten() + 1
    return float(((mrec[steps] - mrec[steps - 1]) * mpre[steps]).sum())


def _class_ap(pairs: List[tuple], label: int, iou_threshold: float) -> float:
    gts, dets = [], []  # per image: (boxes, difficult); detections as (score, image, box)
    npos = 0
    for img, (pred, tgt) in enumerate(pairs):
        keep = tgt["labels"] == label
        ignored = (tgt["difficult"] | tgt["iscrowd"])[keep]
        gts.append((tgt["boxes"][keep], ignored))
        npos += int((~ignored).sum())
        sel = pred["labels"] == label
        dets.extend((float(s), img, b) for s, b in zip(pred["scores"][sel], pred["boxes"][sel]))
    dets.sort(key=lambda d: -d[0])  # stable: ties keep image order
    matched = [torch.zeros(len(b), dtype=torch.bool) for b, _ in gts]
    tp: List[float] = []
    fp: List[float] = []
    for _, img, box in dets:
        boxes, difficult = gts[img]
        if len(boxes):
            ious = box_iou(box[None], boxes)[0]
            best = int(ious.argmax())
            if ious[best] >= iou_threshold:
                if difficult[best]:
                    continue  # neither true nor false positive
                if not matched[img][best]:
                    matched[img][best] = True
                    tp.append(1.0)
                    fp.append(0.0)
                    continue
        tp.append(0.0)
        fp.append(1.0)
    if not tp:
        return 0.0
    ctp, cfp = torch.tensor(tp).cumsum(0), torch.tensor(fp).cumsum(0)
    return average_precision(ctp / npos, ctp / (ctp + cfp))


def voc_map(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    per_class: bool = False,
) -> Any:
    """VOC mAP of ``predictions`` against ``targets`` (one dict per image, torchvision format).

    Returns the mean AP, or ``(mean, {label: AP})`` with ``per_class=True``. Raises
    ``ValueError`` for malformed input or when no target has a non-difficult box.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    pairs = checked_pairs(predictions, targets)
    labels = sorted({int(lab) for _, t in pairs for lab in t["labels"][~(t["difficult"] | t["iscrowd"])]})
    if not labels:
        raise ValueError("the targets hold no (non-difficult) box, so no AP can be computed; "
                         "evaluate on images with annotations")
    aps: Dict[int, float] = {lab: _class_ap(pairs, lab, iou_threshold) for lab in labels}
    mean = sum(aps.values()) / len(aps)
    return (mean, aps) if per_class else mean


class VocMAP(MapAccumulator):
    """:func:`voc_map` accumulated over ``(images, targets)`` batches (a metric accumulator)."""

    def __init__(self, iou_threshold: float = 0.5) -> None:
        super().__init__(lambda predictions, targets: voc_map(predictions, targets, iou_threshold))
        self.iou_threshold = iou_threshold
