"""Loading a user's checkpoint into a pose model, safely and with a clear mismatch error."""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["load_checkpoint"]


def load_checkpoint(model: nn.Module, path: str) -> nn.Module:
    """Load the state dict at ``path`` (``weights_only=True``: tensors, never code) into ``model``.

    A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped. Raises
    ``FileNotFoundError`` or ``ValueError`` naming the missing/unexpected/mis-shaped keys,
    which usually means other builder options (width, joints) than the checkpoint's.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"cannot read {path} as a tensor-only checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]}); save it with torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    own = model.state_dict()
    # BatchNorm fills a missing step counter itself: torchvision's released detection
    # weights (FrozenBatchNorm2d) have none, and still fit a model with plain BatchNorm
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {path} does not fit {type(model).__name__}: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, shape mismatch {shapes[:3]} (and {max(0, len(missing) + len(unexpected) + len(shapes) - 9)} more); "
            "build the model with the options (num_joints, width, depth) it was trained with"
        )
    model.load_state_dict(state, strict=False)  # exactly the missing counters, checked above
    return model
