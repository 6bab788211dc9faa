"""Loading a user's checkpoint into an action-recognition model, without unpickling code.

Accepts safetensors files and ``torch.save``d state dicts (read with ``weights_only=True``),
also when the state dict is nested under ``"state_dict"`` or ``"model"`` (as training
scripts often save it) or its keys carry a ``"module."`` prefix (``DataParallel``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch
from torch import nn

__all__ = ["load_weights_file"]

PathLike = Union[str, Path]


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or a corrupt file: say which and why
        raise ValueError(
            f"could not read weights from {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "save a state dict (torch.save(model.state_dict(), path)) or a .safetensors file"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors; save model.state_dict() instead")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_weights_file(model: nn.Module, path: PathLike) -> nn.Module:
    """Load the weights at ``path`` into ``model`` (strictly) and return the model.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the
    mismatched keys or shapes when the weights belong to another architecture or width.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}; pass the path of a saved state dict or .safetensors file")
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise ValueError(
            f"the weights in {path} do not fit this {type(model).__name__}: " + "; ".join(parts)
            + ". Build the model the checkpoint was saved from (same name, num_classes and width)."
        )
    model.load_state_dict(state)
    return model
