"""Load a descendant block from a blocks directory: spec -> architecture -> weights.

The one place where stored descendants become modules, shared by the switcher, the
retrainer and the profilers, so every reader validates a store the same way.
"""

from __future__ import annotations

import copy
from typing import Tuple

import torch
from torch import fx, nn

from ..errors import CorruptedStoreError
from .channels import ChannelAnalysis
from .pruning import build_descendant
from .store import BlockStore

__all__ = ["load_state_into", "load_descendant"]


def _meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers are shape-only (meta) tensors: no weight copying."""
    memo = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


def load_state_into(
    store: BlockStore, module: nn.Module, name: str, sparsity: float, assign: bool = False
) -> int:
    """Put the stored weights of (block, sparsity) into ``module``; returns bytes read.

    ``assign`` adopts the loaded tensors instead of copying into the existing ones (for a
    module built on the meta device).
    """
    desc = store.descendant(name, sparsity)
    state = store.load_tensors(desc.file, desc.sha256)
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        raise CorruptedStoreError(
            f"weights of {name} at sparsity {sparsity} in {store.root} do not fit its recorded "
            f"architecture: {str(exc).splitlines()[0]}"
        ) from exc
    return sum(t.numel() * t.element_size() for t in state.values())


def load_descendant(
    store: BlockStore, template: fx.GraphModule, analysis: ChannelAnalysis, name: str, sparsity: float
) -> Tuple[nn.Module, int]:
    """A new module for (block, sparsity) built from ``template`` (the original block) and
    the store's spec and weights; returns it and the bytes read."""
    desc = store.descendant(name, sparsity)
    try:
        module = build_descendant(_meta_copy(template), desc.kept, analysis, inplace=True)
    except ValueError as exc:
        raise CorruptedStoreError(
            f"the recorded architecture of {name} at sparsity {sparsity} in {store.root} is invalid: {exc}"
        ) from exc
    return module, load_state_into(store, module, name, sparsity, assign=True)
