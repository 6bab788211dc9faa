"""Loading a user's detector checkpoint without unpickling code.

Two forms are read: a safetensors file, or a ``torch.save``d state dict (possibly
wrapped as ``{"model": state_dict}`` as torchvision's reference scripts save it),
always with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch
from torch import nn

__all__ = ["load_checkpoint"]


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # an unsafe pickle, a truncated file, not a torch file
        raise ValueError(
            f"cannot read {path} as a state dict with torch.load(weights_only=True) ({exc}); "
            "save the weights with torch.save(model.state_dict(), path) or as .safetensors"
        ) from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor); save model.state_dict()")
    return state


def load_checkpoint(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load the weights at ``path`` into ``model`` (strictly) and return it.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` when the weights
    belong to another architecture or another ``num_classes``, naming the first mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass weights_path=None for random weights")
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} shape mismatches, e.g. {k}: file {tuple(state[k].shape)} "
                          f"vs model {tuple(own[k].shape)}")
        if missing:
            detail.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        raise ValueError(
            f"the checkpoint {path} does not fit this {type(model).__name__} ({'; '.join(detail)}): "
            "build the model with the same name and options (num_classes, width) it was saved from"
        )
    model.load_state_dict(state)
    return model
