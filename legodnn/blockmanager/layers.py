"""Which layers the block manager knows, and how users add their own.

Built in: convs and ``nn.Linear`` have filters to prune; BatchNorm, GroupNorm, LayerNorm
and the other ``torch.nn`` layers listed in :mod:`.channels` are understood. Any other
module is traced through by torch.fx, down to the torch functions it calls. That fails
for a layer whose forward has data-dependent Python control flow, and prunes nothing
in a layer written with ``F.conv2d`` on its own parameters. For such a layer the user
declares it a *leaf* (kept as one call in the graph, as timm's
``register_notrace_module`` does) and says how channels go through it and how to cut it
(as Torch-Pruning's customized pruners do):

- ``"channelwise"``: output channel ``k`` depends only on input channel ``k`` (a
  per-channel scale, a custom norm or activation). Pruning the channels before it
  prunes it too; its slicer gets the kept channels.
- ``"conv"``: it has filters of its own, like a conv: its output channels are new
  prunable channels (ranked by the L1 norm of ``weight``'s rows unless an
  ``importance`` function is given), its input channels follow the layer before. Its
  slicer gets the kept input and output channels. It counts as a conv (block size,
  coverage).
- ``"opaque"``: kept whole; the channels going in and out are never pruned.

A :class:`LayerRegistry` holds these declarations. The block manager, the channel
analysis and the descendant builder take one (``layers=``); they default to
:data:`default_layers`, which is empty at import (nothing is registered behind the
user's back) and is what :class:`~legodnn.BlockSwitcher` uses on the device. Register
there, on both machines, before building the block manager and the switcher::

    from legodnn.blockmanager import register_leaf
    register_leaf(ChannelScale, "channelwise", slice_channel_scale)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import ArgumentTypeError, InvalidArgumentError

__all__ = [
    "CHANNEL_RULES", "CONV_TYPES", "PRUNABLE_TYPES", "LeafLayer", "LayerRegistry", "default_layers",
    "register_leaf", "slice_channels",
]

CONV_TYPES: Tuple[type, ...] = (nn.modules.conv._ConvNd,)
PRUNABLE_TYPES: Tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)
#: torch.nn layers kept as one graph node (never traced into)
BUILTIN_LEAF_TYPES: Tuple[type, ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
)
CHANNEL_RULES = ("channelwise", "conv", "opaque")

#: ``slicer(module, keep_in, keep_out)``: cut ``module`` in place to the kept channels
Slicer = Callable[[nn.Module, torch.Tensor, torch.Tensor], None]
#: ``importance(module) -> one non-negative number per output channel``
Importance = Callable[[nn.Module], "np.ndarray | torch.Tensor"]


def slice_channels(t: torch.Tensor, keep: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """A copy of ``t`` keeping the indices ``keep`` along ``dim``, on ``t``'s device; a
    parameter stays a parameter (with its ``requires_grad``). The building block of
    slicers: ``m.weight = slice_channels(slice_channels(m.weight, keep_out), keep_in, 1)``.
    A copy, so the descendant never shares storage with the teacher."""
    new = t.detach().index_select(dim, keep.to(device=t.device, dtype=torch.long)).clone()
    return nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new


def _slice_leading(module: nn.Module, keep: torch.Tensor, size: int) -> None:
    """The default slicer of a channel-wise leaf: every parameter and buffer of the module
    itself whose leading dim is the channel count ``size`` keeps the rows ``keep``.

    Fits a per-channel scale, shift or mask stored as ``(C,)`` or ``(C, 1, 1)``; a tensor
    laid out otherwise, e.g. ``(1, C, 1, 1)``, needs its own slicer.
    """
    for table in ("_parameters", "_buffers"):
        entries = getattr(module, table)
        for name, t in list(entries.items()):
            if t is not None and t.dim() > 0 and t.shape[0] == size:
                entries[name] = slice_channels(t, keep)


@dataclass(frozen=True)
class LeafLayer:
    """One registered layer type: its channel rule, slicer and (``"conv"`` rule) importance."""

    cls: type
    channel_rule: str
    slicer: Optional[Slicer] = None
    importance: Optional[Importance] = None

    def slice(self, module: nn.Module, keep_in: np.ndarray, keep_out: np.ndarray, channels: int) -> None:
        """Run the slicer with the kept channels as CPU ``torch.long`` tensors; ``channels``
        is the original channel count (what the default channel-wise slicer cuts)."""
        t_in = torch.as_tensor(keep_in, dtype=torch.long)
        t_out = torch.as_tensor(keep_out, dtype=torch.long)
        if self.slicer is not None:
            self.slicer(module, t_in, t_out)
        else:
            _slice_leading(module, t_out, channels)

    def filter_importance(self, module: nn.Module, out_channels: int) -> np.ndarray:
        """One importance per output channel (``"conv"`` rule); a wrong length is the user's
        registration to fix, so it is named rather than pruned wrongly."""
        if self.importance is not None:
            value = self.importance(module)
        else:
            w = getattr(module, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() == 0:
                raise InvalidArgumentError(
                    f"{self.cls.__name__} is registered with channel_rule='conv' but has no `weight` tensor "
                    "to rank its filters by; register it with importance=<function returning one value per "
                    "output channel>")
            value = w.detach().float().reshape(w.shape[0], -1).abs().sum(dim=1)
        arr = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, float)
        if arr.shape != (out_channels,):
            raise InvalidArgumentError(
                f"{self.cls.__name__} (channel_rule='conv') gives {arr.shape[0] if arr.ndim else 0} filter "
                f"importances but has {out_channels} output channels; its weight's rows must be its filters, "
                "or register it with importance=<function returning one value per output channel>")
        return arr


class LayerRegistry:
    """Custom layer types the block manager treats as leaves, each with its channel rule.

    Registration is idempotent: registering a type again with the same rule, slicer and
    importance changes nothing; registering it with different ones is refused unless
    ``replace=True`` (two libraries declaring one layer differently is a bug to see,
    not to settle silently). A subclass of a registered type gets its entry unless it is
    registered itself; a registration overrides the built-in handling (a conv subclass
    registered as ``"opaque"`` is kept whole).
    """

    def __init__(self) -> None:
        self._entries: Dict[type, LeafLayer] = {}

    def register(self, cls: type, channel_rule: str, slicer: Optional[Slicer] = None, *,
                 importance: Optional[Importance] = None, replace: bool = False) -> type:
        """Declare ``cls`` a leaf with ``channel_rule`` (see :mod:`.layers`); returns ``cls``.

        ``slicer(module, keep_in, keep_out)`` cuts a module in place to the kept channel
        indices (CPU ``torch.long`` tensors): it replaces the parameters and buffers with
        the kept slices (:func:`slice_channels` makes them) and updates size attributes.
        It also runs on meta tensors (the switcher builds the architecture before loading
        the weights), so it must slice, not compute from values. A ``"channelwise"``
        layer's default slicer cuts every parameter and buffer of the layer itself whose
        leading dim is the channel count; a ``"conv"`` layer must give one. Custom layers
        are understood with their channels on dim 1 only (in a channels-last section
        they are kept whole).
        """
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ArgumentTypeError(f"register a torch.nn.Module subclass (the class itself), got {cls!r}")
        if channel_rule not in CHANNEL_RULES:
            raise InvalidArgumentError(
                f"channel_rule must be one of {list(CHANNEL_RULES)}, got {channel_rule!r}: 'channelwise' when output "
                "channel k depends only on input channel k, 'conv' when the layer has filters of its own, "
                "'opaque' to keep it whole")
        for what, fn in (("slicer", slicer), ("importance", importance)):
            if fn is not None and not callable(fn):
                raise ArgumentTypeError(f"{what} must be a function, got {fn!r}")
        if channel_rule == "conv" and slicer is None:
            raise InvalidArgumentError(
                f"{cls.__name__}: a 'conv' layer needs slicer=<function(module, keep_in, keep_out)> that cuts its "
                "weights to the kept input and output channels")
        entry = LeafLayer(cls, channel_rule, slicer, importance)
        old = self._entries.get(cls)
        if old is not None and old != entry and not replace:
            raise InvalidArgumentError(
                f"{cls.__name__} is already registered as {old.channel_rule!r} with another slicer or importance; "
                "pass replace=True to change its registration")
        self._entries[cls] = entry
        return cls

    def unregister(self, cls: type) -> None:
        """Forget ``cls`` (nothing happens if it was not registered)."""
        self._entries.pop(cls, None)

    def lookup(self, module: nn.Module) -> Optional[LeafLayer]:
        """The entry of ``module``'s class or of its nearest registered base class."""
        if not self._entries:
            return None
        for cls in type(module).__mro__:
            entry = self._entries.get(cls)
            if entry is not None:
                return entry
        return None

    # -- what the tracer, region finder and block manager ask ---------------------
    def is_leaf(self, module: nn.Module) -> bool:
        return self.lookup(module) is not None or isinstance(module, BUILTIN_LEAF_TYPES)

    def is_prunable(self, module: nn.Module) -> bool:
        """Has filters of its own: a built-in conv or linear layer, or a ``"conv"`` leaf."""
        entry = self.lookup(module)
        return entry.channel_rule == "conv" if entry is not None else isinstance(module, PRUNABLE_TYPES)

    def is_conv(self, module: nn.Module) -> bool:
        entry = self.lookup(module)
        return entry.channel_rule == "conv" if entry is not None else isinstance(module, CONV_TYPES)

    def copy(self) -> "LayerRegistry":
        """A new registry with the same entries (to extend without touching this one)."""
        new = LayerRegistry()
        new._entries = dict(self._entries)
        return new

    def __contains__(self, cls: object) -> bool:
        return cls in self._entries

    def __iter__(self) -> Iterator[LeafLayer]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        inner = ", ".join(f"{e.cls.__name__}: {e.channel_rule}" for e in self._entries.values())
        return f"LayerRegistry({{{inner}}})"


#: The registry used wherever none is passed (the block manager, the switcher, the loaders).
default_layers = LayerRegistry()


def register_leaf(cls: type, channel_rule: str, slicer: Optional[Slicer] = None, *,
                  importance: Optional[Importance] = None, replace: bool = False,
                  registry: Optional[LayerRegistry] = None) -> type:
    """Declare a custom layer type a traced leaf in ``registry`` (:data:`default_layers`
    by default); see :meth:`LayerRegistry.register`. Returns ``cls``."""
    target = default_layers if registry is None else registry
    return target.register(cls, channel_rule, slicer, importance=importance, replace=replace)
