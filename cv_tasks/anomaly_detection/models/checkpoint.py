"""Load a user's checkpoint into an anomaly model without unpickling code.

Accepts a ``.safetensors`` file or a ``torch.save``d state dict (optionally wrapped as
``{"state_dict": ...}`` or ``{"model": ...}``, as training scripts often save it), read
with ``weights_only=True``. A missing file or weights of another architecture raise an
error that says what to build instead of a deep ``load_state_dict`` trace.
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
    except Exception as exc:  # pickle errors, truncated files, code objects refused by weights_only
        raise ValueError(
            f"cannot read {path} as a weights-only checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "save it with torch.save(model.state_dict(), path) or as .safetensors"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor); save model.state_dict()")
    return state


def load_checkpoint(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load the weights at ``path`` into ``model`` (strictly) and return it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass weights_path=None for random weights")
    state = _read_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ValueError(
            f"the checkpoint {path} does not fit this {type(model).__name__} "
            f"({lines[1] if len(lines) > 1 else lines[0]}); build the model with the options it was saved from "
            "(width, in_channels, layers)"
        ) from exc
    return model
