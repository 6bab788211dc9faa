"""COCO mAP@[.5:.95] (box) with pycocotools' COCOeval, on torchvision-format lists.

The ground truth is built in memory from the loader's targets (as torchvision's
reference scripts do), so predictions and ground truth share one coordinate frame
whatever resize the loader applied, and any data set (COCO or VOC) can be scored.
Crowd boxes (``iscrowd``) and VOC "difficult" boxes become COCO crowd regions, which
COCOeval ignores: a detection on one is neither a true nor a false positive.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Dict, List, Mapping, Sequence

from cv_tasks.object_detection.metrics.accumulator import MapAccumulator
from cv_tasks.object_detection.metrics.checks import checked_pairs

__all__ = ["CocoMAP", "coco_map"]


def _coco_objects(pairs: List[tuple]) -> tuple:
    from pycocotools.coco import COCO

    images, annotations, detections = [], [], []
    labels = set()
    for img, (pred, tgt) in enumerate(pairs, start=1):
        images.append({"id": img})
        for box, label, crowd in zip(tgt["boxes"].tolist(), tgt["labels"].tolist(),
                                     (tgt["iscrowd"] | tgt["difficult"]).tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": img, "category_id": label,
                                "bbox": [box[0], box[1], w, h], "area": max(w, 0.0) * max(h, 0.0),
                                "iscrowd": int(crowd)})
            labels.add(label)
        for box, score, label in zip(pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist()):
            detections.append({"image_id": img, "category_id": label, "score": score,
                               "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": lab, "name": str(lab)} for lab in sorted(labels)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt, detections


def coco_map(
    predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]], all_stats: bool = False
) -> Any:
    """COCO box mAP@[.5:.95] of ``predictions`` against ``targets`` (one dict per image).

    With ``all_stats=True`` returns COCOeval's 12 summary numbers by name instead
    (``"mAP"``, ``"mAP@0.5"``, ``"mAP@0.75"``, ...). Raises ``ValueError`` for malformed
    input or when no target has a (non-crowd) box. No detections at all scores 0.0.
    """
    from pycocotools.cocoeval import COCOeval

    pairs = checked_pairs(predictions, targets)
    if not any(bool((~(t["iscrowd"] | t["difficult"])).any()) for _, t in pairs):
        raise ValueError("the targets hold no (non-crowd, non-difficult) box, so no AP can be computed; "
                         "evaluate on images with annotations")
    gt, detections = _coco_objects(pairs)
    names = ["mAP", "mAP@0.5", "mAP@0.75", "mAP_small", "mAP_medium", "mAP_large",
             "AR@1", "AR@10", "AR@100", "AR_small", "AR_medium", "AR_large"]
    if not detections:
        return dict.fromkeys(names, 0.0) if all_stats else 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval writes -1 where a size range has no ground truth
    stats: Dict[str, float] = {n: max(float(s), 0.0) for n, s in zip(names, ev.stats)}
    return stats if all_stats else stats["mAP"]


class CocoMAP(MapAccumulator):
    """:func:`coco_map` accumulated over ``(images, targets)`` batches (a metric accumulator)."""

    def __init__(self) -> None:
        super().__init__(coco_map)
