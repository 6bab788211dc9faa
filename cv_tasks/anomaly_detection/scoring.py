"""How an anomaly model's output becomes scores: the one place that decides it.

Every model of this task returns its anomaly score from ``forward`` (the scoring head is
inside the model, so pruned and hot-swapped models are scored the same way):

* a map ``(B, 1, H, W)`` (reconstruction models): per-pixel scores; the image score is
  the map's mean over pixels, the mean squared reconstruction error;
* scores ``(B,)`` or ``(B, 1)`` (one-class and self-supervised classifiers): image
  scores, and there is no map.

Higher means more anomalous.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from torch import Tensor

__all__ = ["image_scores", "split_output"]


def split_output(output: Any) -> Tuple[Tensor, Optional[Tensor]]:
    """(image scores ``(B,)``, anomaly map ``(B, 1, H, W)`` or None) from a model's output."""
    if not isinstance(output, Tensor):
        raise ValueError(
            f"an anomaly model must return a tensor of scores (B,) or a map (B, 1, H, W), got {type(output).__name__}"
        )
    if output.dim() == 4 and output.shape[1] == 1:
        return output.flatten(1).mean(1), output
    if output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1):
        return output.flatten(), None
    raise ValueError(
        f"an anomaly model must return scores (B,) or a map (B, 1, H, W), got shape {tuple(output.shape)}"
    )


def image_scores(output: Any) -> Tensor:
    """Image anomaly scores ``(B,)`` from a model's output (see the module docstring)."""
    return split_output(output)[0]
