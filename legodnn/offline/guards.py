"""The check both retraining stages make on every loss: finite, or stop with what to do."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import LegoDNNError

__all__ = ["finite_loss"]


def finite_loss(loss: torch.Tensor, what: str, epoch: int, hint: str, state_dir: Path, name: str = "loss") -> float:
    """``loss`` as a float; a NaN or infinite one raises naming ``what``, the epoch and the fix."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise LegoDNNError(
            f"{what}: the {name} became {value} in epoch {epoch + 1}; lower the learning rate ({hint}) or check "
            f"the data. Completed epochs are saved in {state_dir}"
        )
    return value
