"""Load a descendant block from a blocks directory: spec -> architecture -> weights.

The one place where stored descendants become modules, shared by the switcher, the
retrainer and the profilers, so every reader validates a store the same way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple

import torch
from torch import fx, nn

from ..errors import CorruptedStoreError
from .channels import ChannelAnalysis, analyze_channels
from .pruning import build_descendant
from .store import BlockStore

__all__ = ["load_state_into", "load_descendant", "DescendantFactory"]


def _meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers are shape-only (meta) tensors: no weight copying."""
    memo = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for m in module.modules():
        for name, b in m._buffers.items():
            if b is None or id(b) in memo:
                continue
            # a non-persistent buffer (a constant table) is not stored: it keeps its values
            memo[id(b)] = b.clone() if name in m._non_persistent_buffers_set else torch.empty_like(b, device="meta")
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


def _structure_copy(module: nn.Module, twins: Dict[int, nn.Module]) -> nn.Module:
    """New module objects with the same classes, attributes and compiled forward as
    ``module``, each with its own parameter, buffer and hook tables (the tensors in them
    still the skeleton's until replaced); ``twins`` maps each old module's id to its copy.
    Much cheaper than ``copy.deepcopy`` of an fx ``GraphModule``, which regenerates and
    recompiles its code."""
    new = object.__new__(type(module))
    new.__dict__ = {k: (v.copy() if isinstance(v, dict) else v) for k, v in module.__dict__.items()}
    new._modules = {k: (None if m is None else _structure_copy(m, twins)) for k, m in module._modules.items()}
    twins[id(module)] = new
    return new


@dataclass(frozen=True)
class _Slot:
    """Where one stored tensor goes: owner module, table, attribute, expected shape and dtype."""

    key: str
    owner: nn.Module
    table: str  # "_parameters" or "_buffers"
    attr: str
    shape: Tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool


def _slots(skeleton: nn.Module) -> List[_Slot]:
    out = []
    for path, mod in skeleton.named_modules():
        prefix = f"{path}." if path else ""
        for table in ("_parameters", "_buffers"):
            for attr, t in getattr(mod, table).items():
                if t is None or (table == "_buffers" and attr in mod._non_persistent_buffers_set):
                    continue
                out.append(_Slot(prefix + attr, mod, table, attr, tuple(t.shape), t.dtype,
                                 bool(getattr(t, "requires_grad", False))))
    return out


class DescendantFactory:
    """Builds descendants from a store fast, for the switcher's reads from disk.

    The architecture of a descendant (the pruned graph, recompiled) is built once per
    (block, sparsity), on the meta device, and kept: it holds no weights. Every later
    read of that descendant copies the skeleton's structure and puts the stored tensors
    straight into its tables (after checking every name, shape and dtype against the
    skeleton), so a read costs little more than reading the file.
    """

    def __init__(self, store: BlockStore, templates: Mapping[str, fx.GraphModule],
                 analyses: Mapping[str, ChannelAnalysis], device: str = "cpu") -> None:
        self.store = store
        self.templates = templates
        self.analyses = dict(analyses)  # filled on first use for the blocks not given
        self.device = torch.device(device)
        self._skeletons: Dict[Tuple[str, float], Tuple[nn.Module, List[_Slot]]] = {}

    def skeleton(self, name: str, sparsity: float) -> Tuple[nn.Module, List[_Slot]]:
        key = (name, sparsity)
        if key not in self._skeletons:
            desc = self.store.descendant(name, sparsity)
            try:
                if name not in self.analyses:
                    self.analyses[name] = analyze_channels(self.templates[name])
                module = build_descendant(_meta_copy(self.templates[name]), desc.kept, self.analyses[name],
                                          inplace=True)
            except ValueError as exc:
                raise CorruptedStoreError(
                    f"the recorded architecture of {name} at sparsity {sparsity} in {self.store.root} is invalid: "
                    f"{exc}") from exc
            self._skeletons[key] = (module, _slots(module))
        return self._skeletons[key]

    def build(self, name: str, sparsity: float) -> Tuple[nn.Module, int]:
        """A new module for (block, sparsity) with its stored weights, on the factory's
        device; returns it and the bytes read."""
        skeleton, slots = self.skeleton(name, sparsity)
        state = self.store.descendant_tensors(name, sparsity)
        if set(state) != {s.key for s in slots}:
            missing = sorted({s.key for s in slots} - set(state))
            unexpected = sorted(set(state) - {s.key for s in slots})
            raise CorruptedStoreError(
                f"weights of {name} at sparsity {sparsity} in {self.store.root} do not fit its recorded architecture "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]}); extract the blocks again")
        twins: Dict[int, nn.Module] = {}
        module = _structure_copy(skeleton, twins)
        loaded = 0
        for slot in slots:
            tensor = state[slot.key]
            if tuple(tensor.shape) != slot.shape or tensor.dtype != slot.dtype:
                raise CorruptedStoreError(
                    f"weights of {name} at sparsity {sparsity} in {self.store.root}: {slot.key} is "
                    f"{tuple(tensor.shape)} {tensor.dtype}, its architecture needs {slot.shape} {slot.dtype}; "
                    "extract the blocks again")
            if tensor.device != self.device:
                tensor = tensor.to(self.device)
            table = getattr(twins[id(slot.owner)], slot.table)
            table[slot.attr] = nn.Parameter(tensor, slot.requires_grad) if slot.table == "_parameters" else tensor
            loaded += tensor.numel() * tensor.element_size()
        return module, loaded
