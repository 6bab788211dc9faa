"""Load a user's segmentation checkpoint into a model, safely and strictly.

Reads safetensors files, or ``torch.save``d state dicts with ``weights_only=True`` (so a
checkpoint can never run code). Accepts what training scripts commonly write: a bare
state dict, ``{"model": ...}`` / ``{"state_dict": ...}`` wrappers (torchvision's
reference scripts), a ``module.`` prefix (DataParallel), and torchvision's
``aux_classifier.*`` weights, which are dropped because the models here run without the
auxiliary head (it only adds a training loss).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, Mapping, TypeVar

import torch
from torch import nn

__all__ = ["load_checkpoint", "read_state_dict"]

M = TypeVar("M", bound=nn.Module)

_DROPPED_PREFIXES = ("aux_classifier.",)


def read_state_dict(path: str | Path) -> Dict[str, torch.Tensor]:
    """The tensors of the checkpoint at ``path``; ``ValueError`` when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}: pass weights_path=None for random weights")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path))
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"cannot read {path} as a state dict with torch.load(weights_only=True): {first}. "
                "Save the weights with torch.save(model.state_dict(), path) (whole pickled models are refused)"
            ) from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    return {k: v for k, v in state.items() if not k.startswith(_DROPPED_PREFIXES)}


def load_checkpoint(model: M, path: str | Path) -> M:
    """Load the checkpoint at ``path`` into ``model`` strictly; returns ``model``.

    Any missing, unexpected or wrongly shaped tensor raises ``ValueError`` listing a few
    of each, since a partial load would silently give a half-random model.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        raise ValueError(
            f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(parts)
            + ". Build the model with the num_classes and width the checkpoint was trained with"
        )
    model.load_state_dict(state)
    return model
