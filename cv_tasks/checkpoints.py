"""Loading a user's checkpoint into any cv_tasks model: tensors only, all or nothing.

Every task's builders take ``weights_path=`` and come here, so every task reads the same
files and fails the same way. Read: a safetensors file, or a ``torch.save``d state dict
through ``torch.load(weights_only=True)`` (a checkpoint can never run code), unwrapped
from the ``{"model": ...}`` / ``{"state_dict": ...}`` wrappers training scripts write,
without DataParallel's ``module.`` prefix. The load is strict (a partial load would
silently give a half-random model) except for BatchNorm's step counters, which
BatchNorm fills itself: torchvision's released detection weights use FrozenBatchNorm2d,
which has none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Sequence, TypeVar, Union

import torch
from torch import nn

__all__ = ["load_checkpoint", "read_state_dict"]

M = TypeVar("M", bound=nn.Module)
PathLike = Union[str, Path]

_OPTIONS_HINT = "build the model with the same name and options (num_classes, width, ...) it was saved from"


def read_state_dict(path: PathLike, drop_prefixes: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """The tensors of the checkpoint at ``path``, minus keys starting with ``drop_prefixes``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is
    not a tensor-only state dict (a pickled module, a truncated file).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}; pass weights_path=None for random weights")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path))
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # an unsafe pickle, a truncated file, not a torch file at all
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(
                f"cannot read {path} with torch.load(weights_only=True) ({type(exc).__name__}: {first}); "
                "save the weights with torch.save(model.state_dict(), path) or as .safetensors "
                "(whole pickled models are refused: they can run code)"
            ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor); save model.state_dict()")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    return {k: v for k, v in state.items() if not k.startswith(tuple(drop_prefixes))}


def load_checkpoint(
    model: M, path: PathLike, drop_prefixes: Sequence[str] = (), hint: str = _OPTIONS_HINT
) -> M:
    """Load the checkpoint at ``path`` into ``model`` and return ``model``.

    Any missing (other than BatchNorm's ``num_batches_tracked``), unexpected or wrongly
    shaped tensor raises ``ValueError`` listing a few of each, followed by ``hint``.
    """
    state = read_state_dict(path, drop_prefixes)
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
        raise ValueError(f"checkpoint {path} does not fit this {type(model).__name__} ({'; '.join(parts)}); {hint}")
    model.load_state_dict(state, strict=False)  # strict above, bar the BatchNorm counters
    return model
