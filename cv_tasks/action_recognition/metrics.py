"""Top-k accuracy of clips and of videos (the mean of a video's clip scores).

A video is tested with several clips; the clip level scores each clip alone, the video
level averages the softmax scores of a video's clips first (as TSN and the multi-clip
test of C3D/R3D do) and scores the average. With one clip per video the two agree.
``k`` larger than the number of classes counts every prediction correct (all classes
are in the top k).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["METRIC_NAMES", "VideoAccuracy", "topk_accuracy", "video_level_scores"]

METRIC_NAMES = ("top-1 (clip)", "top-5 (clip)", "top-1 (video)", "top-5 (video)")


def _check(scores: Tensor, labels: Tensor) -> None:
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"expected scores (N, num_classes) and labels (N,), got {tuple(scores.shape)} "
                         f"and {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no samples to score; the test loader yielded nothing")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must be in [0, {scores.shape[1]}), got {labels.min()}..{labels.max()}")


def topk_accuracy(scores: Tensor, labels: Tensor, k: int = 1) -> float:
    """Share of rows whose label is among the ``k`` highest scores (ties: the lower class index wins)."""
    _check(scores, labels)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return float((top == labels.unsqueeze(1)).any(dim=1).float().mean())


def video_level_scores(clip_scores: Tensor, labels: Tensor, video_ids: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean softmax score and label per video, videos in increasing id order.

    Raises ``ValueError`` if clips of one video carry different labels.
    """
    _check(clip_scores, labels)
    ids, inverse = torch.unique(video_ids, return_inverse=True)
    probs = clip_scores.float().softmax(dim=1)
    sums = torch.zeros(len(ids), probs.shape[1]).index_add_(0, inverse, probs)
    counts = torch.zeros(len(ids)).index_add_(0, inverse, torch.ones(len(inverse)))
    video_labels = torch.full((len(ids),), -1, dtype=torch.long).scatter_(0, inverse, labels.long())
    if not torch.equal(video_labels[inverse], labels.long()):
        raise ValueError("clips of one video have different labels; check the video indices in the batches")
    return sums / counts.unsqueeze(1), video_labels


class VideoAccuracy:
    """Accumulates clip scores over ``(clips, labels[, video_ids])`` batches; reports all four accuracies.

    Without video ids every clip is its own video. ``compute`` returns ``primary``.
    """

    def __init__(self, primary: str = "top-1 (video)") -> None:
        if primary not in METRIC_NAMES:
            raise ValueError(f"primary must be one of {METRIC_NAMES}, got {primary!r}")
        self.primary = primary
        self._scores: List[Tensor] = []
        self._labels: List[Tensor] = []
        self._ids: List[Tensor] = []
        self._seen = 0

    def update(self, outputs: Tensor, batch_data: Sequence[Any]) -> None:
        labels = torch.as_tensor(batch_data[1]).reshape(-1).cpu()
        if len(batch_data) > 2:
            ids = torch.as_tensor(batch_data[2]).reshape(-1).cpu()
        else:  # make ids unique across batches: each clip a video of its own
            ids = torch.arange(self._seen, self._seen + len(labels)) + (1 << 40)
        self._seen += len(labels)
        self._scores.append(outputs.detach().float().cpu())
        self._labels.append(labels)
        self._ids.append(ids)

    def results(self) -> Dict[str, float]:
        """All of ``METRIC_NAMES`` as fractions in [0, 1]."""
        if not self._scores:
            raise ValueError("no batches were scored; the test loader yielded nothing")
        scores, labels, ids = torch.cat(self._scores), torch.cat(self._labels), torch.cat(self._ids)
        video_scores, video_labels = video_level_scores(scores, labels, ids)
        return {
            "top-1 (clip)": topk_accuracy(scores, labels, 1),
            "top-5 (clip)": topk_accuracy(scores, labels, 5),
            "top-1 (video)": topk_accuracy(video_scores, video_labels, 1),
            "top-5 (video)": topk_accuracy(video_scores, video_labels, 5),
        }

    def compute(self) -> float:
        return self.results()[self.primary]
