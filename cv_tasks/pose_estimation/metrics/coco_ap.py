"""COCO keypoint AP (OKS-based, averaged over OKS 0.50:0.95) through pycocotools' COCOeval.

The ground truth is rebuilt from the batches' ``meta`` (joints, visibility, area, box,
image id), so the score covers exactly the people the loader yields, as top-down
evaluation with ground-truth person boxes does; COCOeval itself ignores people with no
labelled keypoint. Data without COCO's 17 joints (MPII) uses one OKS sigma for every
joint (0.05 by default): there is no official per-joint constant for it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cv_tasks.pose_estimation.keypoints import COCO_LAYOUT

__all__ = ["KeypointAPAccumulator", "keypoint_ap"]


def keypoint_ap(
    gt_people: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]], sigmas: Sequence[float] | None = None
) -> float:
    """COCO keypoint AP@[.5:.95] of ``predictions`` against ``gt_people``.

    A ground-truth person is ``{"image_id", "joints" (K, 2), "visible" (K,), "area",
    "box" [x, y, w, h]}``; a prediction is ``{"image_id", "joints" (K, 2), "score"}``.
    Raises ``ValueError`` when no ground-truth person has a labelled joint.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not gt_people:
        raise ValueError("no ground-truth person to score keypoint AP against")
    k = len(gt_people[0]["joints"])
    if sigmas is None:
        sigmas = COCO_LAYOUT.sigmas if k == COCO_LAYOUT.num_joints else [0.05] * k
    if len(sigmas) != k:
        raise ValueError(f"{len(sigmas)} OKS sigmas for {k} joints")
    anns: list[dict[str, Any]] = []
    for i, p in enumerate(gt_people):
        joints, vis = np.asarray(p["joints"], dtype=np.float64), np.asarray(p["visible"]) > 0
        if joints.shape != (k, 2) or vis.shape != (k,):
            raise ValueError(f"ground-truth person {i} has joints {joints.shape}, expected ({k}, 2)")
        flat = np.concatenate([np.where(vis[:, None], joints, 0.0), 2.0 * vis[:, None]], axis=1).reshape(-1)
        anns.append({"id": i + 1, "image_id": int(p["image_id"]), "category_id": 1, "iscrowd": 0,
                     "keypoints": flat.tolist(), "num_keypoints": int(vis.sum()),
                     "area": float(p["area"]), "bbox": [float(v) for v in p["box"]]})
    if not any(a["num_keypoints"] for a in anns):
        raise ValueError("no ground-truth person has a labelled keypoint; keypoint AP is undefined")
    images = [{"id": i} for i in sorted({a["image_id"] for a in anns})]
    results = []
    for i, p in enumerate(predictions):
        joints = np.asarray(p["joints"], dtype=np.float64)
        if joints.shape != (k, 2):
            raise ValueError(f"prediction {i} has joints {joints.shape}, expected ({k}, 2): "
                             "the model predicts another joint set than the data has")
        flat = np.concatenate([joints, np.ones((k, 1))], axis=1).reshape(-1)
        results.append({"image_id": int(p["image_id"]), "category_id": 1, "keypoints": flat.tolist(),
                        "score": float(p["score"])})
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(0.0, float(ev.stats[0]))


class KeypointAPAccumulator:
    """Keypoint AP over batches: ``update(image-space predictions, scores, meta)`` then ``compute``."""

    def __init__(self, sigmas: Sequence[float] | None = None) -> None:
        self.sigmas = sigmas
        self.gt: list[dict[str, Any]] = []
        self.pred: list[dict[str, Any]] = []

    def update(self, pred: torch.Tensor, scores: torch.Tensor, meta: dict) -> None:
        for i in range(pred.shape[0]):
            image_id = int(meta["image_id"][i])
            self.gt.append({"image_id": image_id, "joints": meta["joints"][i].numpy(),
                            "visible": meta["visible"][i].numpy(), "area": float(meta["area"][i]),
                            "box": meta["box"][i].tolist()})
            self.pred.append({"image_id": image_id, "joints": pred[i].numpy(), "score": float(scores[i])})

    def compute(self) -> float:
        if not self.gt:
            raise ValueError("the test loader yielded no person; cannot compute keypoint AP")
        return keypoint_ap(self.gt, self.pred, self.sigmas)
