"""Mean IoU and pixel accuracy from a confusion matrix accumulated over batches.

Accumulating counts (not per-batch scores) makes the result independent of batching:
the IoU of a class is computed once over every pixel of the test set, as the Pascal VOC
and Cityscapes benchmarks do. Pixels labelled ``ignore_index`` (255, VOC's "void") count
nowhere. A class absent from both the ground truth and the predictions has no IoU (0/0)
and is excluded from the mean; a class present in either one counts, so predicting a
class that never occurs lowers the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["ConfusionMatrix", "IGNORE_INDEX", "MeanIoU", "SegmentationScores", "logits_of", "segmentation_scores"]

IGNORE_INDEX = 255


@dataclass(frozen=True)
class SegmentationScores:
    """``miou`` and ``pixel_accuracy`` in [0, 1]; ``iou[c]`` is None for a class that
    appears in neither the ground truth nor the predictions."""

    miou: float
    pixel_accuracy: float
    iou: List[Optional[float]]
    num_pixels: int


class ConfusionMatrix:
    """``matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p``."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a class index (num_classes={num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and true label maps (same shape, integer class ids)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred and target must hold integer class ids (take logits.argmax(1) first)")
        pred, target = pred.reshape(-1).long(), target.reshape(-1).to(pred.device).long()
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        c = self.num_classes
        for what, labels in (("target", target), ("prediction", pred)):
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
                bad = sorted(set(labels[(labels < 0) | (labels >= c)].unique().tolist()))[:5]
                raise ValueError(
                    f"{what} has labels {bad} outside 0..{c - 1} (and not the ignore label {self.ignore_index}); "
                    "check num_classes matches the data set"
                )
        counts = torch.bincount(target * c + pred, minlength=c * c)
        self.matrix += counts.reshape(c, c).cpu()

    def compute(self) -> SegmentationScores:
        """Scores over everything added so far; ``ValueError`` if no pixel was counted."""
        m = self.matrix.double()
        total = int(self.matrix.sum())
        if total == 0:
            raise ValueError("no labelled pixels were seen (empty loader, or every pixel is ignore_index)")
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = [float(t / u) if u > 0 else None for t, u in zip(tp.tolist(), union.tolist())]
        present = [v for v in iou if v is not None]
        return SegmentationScores(
            miou=sum(present) / len(present),
            pixel_accuracy=float(tp.sum()) / total,
            iou=iou,
            num_pixels=total,
        )


def segmentation_scores(pred: Tensor, target: Tensor, num_classes: int,
                        ignore_index: int = IGNORE_INDEX) -> SegmentationScores:
    """Scores of one set of label maps (a shortcut for a one-batch :class:`ConfusionMatrix`)."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    cm.update(pred, target)
    return cm.compute()


def logits_of(outputs: Any) -> Tensor:
    """The logits of a segmenter's output: a tensor, or torchvision's dict's "out"."""
    if isinstance(outputs, dict) and "out" in outputs:
        outputs = outputs["out"]
    if not isinstance(outputs, Tensor) or outputs.dim() != 4:
        raise ValueError(
            "a segmentation model must return logits of shape (N, num_classes, H, W) "
            f"(or a dict with them under 'out'), got {type(outputs).__name__}"
            + (f" of shape {tuple(outputs.shape)}" if isinstance(outputs, Tensor) else "")
        )
    return outputs


class MeanIoU:
    """The model manager's accumulator: ``update(outputs, (images, masks))``, ``compute()`` -> mIoU.

    The number of classes is read from the logits of the first batch.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        self.confusion: Optional[ConfusionMatrix] = None

    def update(self, outputs: Any, batch_data: Sequence[Any]) -> None:
        logits = logits_of(outputs)
        target = batch_data[1]
        if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"masks of shape {tuple(target.shape)} do not match logits of shape {tuple(logits.shape)}: "
                "the model must return logits at the mask's resolution"
            )
        if self.confusion is None:
            self.confusion = ConfusionMatrix(logits.shape[1], self.ignore_index)
        self.confusion.update(logits.argmax(1), target)

    def scores(self) -> SegmentationScores:
        if self.confusion is None:
            raise ValueError("test_loader yielded no batches; cannot compute mIoU")
        return self.confusion.compute()

    def compute(self) -> float:
        return self.scores().miou
