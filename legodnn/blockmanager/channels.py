"""Channel dependency analysis of a block: which filters can go, and which go together.

Every channel of every tensor in the block is traced back to an *atom*: channel ``k`` of
a *source*, the output of a conv/linear layer (its filters) or the block input. Ops that
join channels (a residual add, a depthwise conv, BatchNorm) merge atoms into one
coupling class; a concat lays its inputs' atoms side by side; flatten repeats them. A
class is prunable when none of its atoms is frozen: the block input and output keep
their shapes, and any op we do not understand freezes what it touches.

Channels usually sit on dim 1. A *channels-last* section (ConvNeXt and Swin blocks:
``permute`` to (N, H, W, C), LayerNorm and ``Linear`` layers acting as pointwise convs,
``permute`` back) is followed too: each layout remembers the dim its channels are on,
``permute``/``transpose`` move it, a ``Linear`` reads and writes the last dim, and
element-wise ops keep it. Ops that are only understood on dim 1 (convs, BatchNorm,
pooling, views, reductions) freeze channels found elsewhere. Pruning then
removes whole classes, so the block stays consistent by construction. Grouped convs and
GroupNorm also ask for *balanced* pruning: the same number of classes goes from each of
their groups.

A *split* (``torch.split``/``chunk``/``tensor_split`` along the channels, as in Res2Net)
gives each piece its slice of the input's atoms, and a *slice* ``x[:, a:b]`` (GhostNet)
keeps the atoms it selects; :mod:`.splits` rewrites their sizes in a descendant. Every
piece keeps at least one channel: the pieces of a split are parts of the pruning group
(each loses its share), so no piece is emptied.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .layers import LayerRegistry, default_layers
from .splits import SPLIT_FUNCTIONS, SPLIT_METHODS, SliceRecord, SplitRecord, parse_index

__all__ = ["ChannelAnalysis", "PruneGroup", "analyze_channels", "channel_importance"]

#: passthroughs that act on spatial dims (right only when the channels are on dim 1)
_SPATIAL_MODULES = (
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,  # these drop whole channels of dim 1
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d,
)
_PASSTHROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Tanh, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh,
    nn.Identity, nn.Dropout, nn.AlphaDropout,
) + _SPATIAL_MODULES
_PASSTHROUGH_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.silu, F.gelu, F.hardswish, F.hardsigmoid,
    F.sigmoid, torch.sigmoid, torch.tanh, F.tanh, F.elu, F.hardtanh, F.mish, F.softplus,
    F.dropout, F.dropout2d, F.dropout3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.interpolate, F.pad, torch.clone, operator.neg, torch.neg,
    torch.exp, torch.abs,
}
_SPATIAL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.pad, F.dropout2d, F.dropout3d,  # (channels of dim 1)
}
#: LayerNorm classes known to normalise the last dims exactly as nn.LayerNorm does (a
#: subclass may permute inside, as the LayerNorm2d of torchvision and timm do)
_PLAIN_LAYER_NORMS = {"timm.layers.norm.LayerNorm"}
_PASSTHROUGH_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone",
    "float", "half", "double", "to", "type_as", "detach", "neg", "exp", "abs", "clamp",
    "clamp_", "clamp_min", "clamp_max", "hardtanh", "hardtanh_",
}
_BINARY = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}


def _is_stochastic_depth(fn: Any) -> bool:
    """torchvision.ops.stochastic_depth (fx-wrapped, so a graph call): it drops whole
    samples or rows, every channel alike."""
    return getattr(fn, "__name__", "") == "stochastic_depth" and getattr(fn, "__module__", "").startswith(
        "torchvision.")


def _is_plain_layer_norm(m: nn.Module) -> bool:
    cls = type(m)
    return isinstance(m, nn.LayerNorm) and (
        cls.forward is nn.LayerNorm.forward or f"{cls.__module__}.{cls.__qualname__}" in _PLAIN_LAYER_NORMS)
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}


def _align(a: Tuple[int, ...], b: Tuple[int, ...]) -> List[Tuple[List[int], List[int]]]:
    """The dims of shape ``a`` and of its reshape ``b`` in groups of equal products
    (size-1 dims join the group before them)."""
    groups: List[Tuple[List[int], List[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        gi, gj = [], []
        pa = pb = 1
        while True:
            if pa <= pb and i < len(a) and (not gi or pa != pb):
                pa *= a[i]
                gi.append(i)
                i += 1
            elif j < len(b) and (not gj or pa != pb):
                pb *= b[j]
                gj.append(j)
                j += 1
            else:
                break
        while i < len(a) and a[i] == 1 and pa == pb:
            gi.append(i)
            i += 1
        while j < len(b) and b[j] == 1 and pa == pb:
            gj.append(j)
            j += 1
        if pa != pb or not gi and not gj:
            return []
        groups.append((gi, gj))
    return groups


def _shape(node: Any) -> Optional[Tuple[int, ...]]:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: List[int] = []

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class _Source:
    name: str  # module target for layers, "input" for the block input, node name otherwise
    start: int  # first atom id
    size: int
    importance: Optional[np.ndarray]  # L1 norm per filter; None for non-layer sources


@dataclass
class PruneGroup:
    """Coupling classes that share a pruning decision: filters of one or more layers.

    ``parts`` lists class indices; a grouped conv or a GroupNorm splits them into balanced
    parts (the same number is removed from each); the pieces of a split make parts that
    each lose their own share (``balanced`` False); otherwise there is a single part.
    Every part keeps at least one class.
    """

    parts: List[List[int]]
    sources: List[str]
    balanced: bool = True  # the same number goes from each part (grouped conv, GroupNorm)


@dataclass
class ChannelAnalysis:
    """Result of :func:`analyze_channels` on one block."""

    layouts: Dict[str, np.ndarray]  # node name -> class id of each channel (on dim 1, or as in axes)
    sources: Dict[str, _Source]
    class_of_atom: np.ndarray
    class_importance: np.ndarray
    groups: List[PruneGroup]
    flatten_views: List[str] = field(default_factory=list)  # view/reshape nodes to rewrite
    layers: LayerRegistry = field(default_factory=lambda: default_layers)  # custom leaves it was made with
    axes: Dict[str, int] = field(default_factory=dict)  # node name -> the dim of its channels, if not 1
    splits: Dict[str, SplitRecord] = field(default_factory=dict)  # split/chunk nodes to resize
    slices: Dict[str, SliceRecord] = field(default_factory=dict)  # x[:, a:b] nodes to resize

    def axis_of(self, node_name: str) -> int:
        return self.axes.get(node_name, 1)

    def atoms_of(self, source: str) -> np.ndarray:
        s = self.sources[source]
        return self.class_of_atom[s.start : s.start + s.size]

    @property
    def num_prunable_channels(self) -> int:
        return sum(len(c) for g in self.groups for c in g.parts)


def channel_importance(module: nn.Module) -> np.ndarray:
    """L1 norm of each output filter of a conv, transposed conv or linear layer."""
    w = module.weight.detach().float()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        groups = module.groups
        in_per_group = w.shape[0] // groups
        # (in, out/g, k...) -> per output channel o = g*out_per_group + j
        w = w.reshape(groups, in_per_group, w.shape[1], -1).transpose(1, 2)
        return w.abs().sum(dim=(2, 3)).reshape(-1).cpu().numpy()
    return w.reshape(w.shape[0], -1).abs().sum(dim=1).cpu().numpy()


class _Analyzer:
    def __init__(self, gm: fx.GraphModule, layers: LayerRegistry) -> None:
        self.gm = gm
        self.layers = layers
        self.modules = dict(gm.named_modules())
        self.uf = _UnionFind()
        self.frozen: List[bool] = []
        self.sources: Dict[str, _Source] = {}
        self.layouts: Dict[fx.Node, np.ndarray] = {}
        self.axes: Dict[fx.Node, int] = {}  # the dim the layout's channels are on, where not 1
        self.untracked_inputs: set = set()  # Linear layers that read channels we do not follow
        self.balanced: List[List[np.ndarray]] = []
        self.module_inputs: Dict[str, np.ndarray] = {}
        self.flatten_views: List[str] = []
        self.pieces: Dict[fx.Node, List[Tuple[np.ndarray, int]]] = {}  # split node -> (layout, dim) per piece
        self.splits: Dict[str, SplitRecord] = {}  # (atom ids until result())
        self.slices: Dict[str, SliceRecord] = {}
        self.nonempty: List[List[np.ndarray]] = []  # chunks of atoms that must each keep one

    # -- atoms ------------------------------------------------------------------
    def new_source(self, name: str, size: int, frozen: bool, importance: Optional[np.ndarray] = None) -> np.ndarray:
        start = self.uf.add(size)
        self.frozen.extend([frozen] * size)
        self.sources[name] = _Source(name, start, size, importance)
        return np.arange(start, start + size)

    def freeze(self, layout: Optional[np.ndarray]) -> None:
        if layout is not None:
            for a in layout:
                self.frozen[a] = True

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            self.uf.union(x, y)

    def frozen_output(self, node: fx.Node) -> Optional[np.ndarray]:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        return self.new_source(f"node:{node.name}", shape[1], frozen=True)

    def layout(self, arg: Any) -> Optional[np.ndarray]:
        return self.layouts.get(arg) if isinstance(arg, fx.Node) else None

    def axis(self, arg: Any) -> int:
        return self.axes.get(arg, 1)

    def tensor_inputs(self, node: fx.Node) -> List[np.ndarray]:
        return [self.layouts[n] for n in node.all_input_nodes if n in self.layouts]

    def opaque(self, node: fx.Node) -> Optional[np.ndarray]:
        """An op we do not model: freeze what goes in and what comes out."""
        for lay in self.tensor_inputs(node):
            self.freeze(lay)
        return self.frozen_output(node)

    # -- per op -----------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = _shape(node)
                if shape is not None and len(shape) >= 2:
                    self.layouts[node] = self.new_source("input", shape[1], frozen=True)
            elif node.op == "output":
                for lay in self.tensor_inputs(node):
                    self.freeze(lay)
            elif node.op == "get_attr":
                continue
            else:
                out, axis = self.visit(node), 1
                if isinstance(out, tuple):  # (layout, dim of its channels)
                    out, axis = out
                shape = _shape(node)
                if out is not None and shape is not None and len(shape) >= 2 and axis < len(shape):
                    if len(out) != shape[axis]:  # our model of the op disagrees with reality
                        self.freeze(out)
                        out, axis = self.frozen_output(node), 1
                    self.layouts[node] = out
                    if axis != 1:
                        self.axes[node] = axis
                elif out is not None:
                    self.freeze(out)

    def visit(self, node: fx.Node) -> Optional[np.ndarray]:
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        if node.op == "call_function":
            return self.visit_function(node, node.target)
        if node.op == "call_method":
            return self.visit_method(node, node.target)
        return self.opaque(node)

    def passthrough(self, node: fx.Node, spatial: bool = False) -> Any:
        """An op that keeps every channel where it is: element-wise, or (``spatial``) a
        pool, pad or resize over the dims after dim 1."""
        x = node.args[0] if node.args else None
        lay = self.layout(x)
        if lay is None:
            return self.opaque(node)
        for other in node.all_input_nodes[1:]:
            self.freeze(self.layouts.get(other))
        in_shape, out_shape = _shape(x), _shape(node)
        axis = self.axis(x)
        if axis != 1 and (spatial or out_shape is None or len(out_shape) != len(in_shape)):
            return self.opaque(node)
        if out_shape is None or len(out_shape) < 2 or out_shape[axis] != in_shape[axis]:
            self.freeze(lay)
            return self.frozen_output(node)
        return lay, axis

    def visit_module(self, node: fx.Node, m: nn.Module) -> Optional[np.ndarray]:
        x = node.args[0] if node.args else None
        lay = self.layout(x)
        if len(node.all_input_nodes) != 1 or node.kwargs or lay is None:
            return self.opaque(node)
        axis = self.axis(x)
        if isinstance(m, nn.Linear) and self.layers.lookup(m) is None:
            return self.visit_linear(node, m, lay, axis)
        if _is_plain_layer_norm(m) and self.layers.lookup(m) is None:
            return self.visit_layer_norm(node, m, lay, axis)
        if axis != 1:  # what follows is understood with the channels on dim 1 only
            if isinstance(m, _PASSTHROUGH_MODULES) and not isinstance(m, _SPATIAL_MODULES):
                return self.passthrough(node)
            return self.opaque(node)
        entry = self.layers.lookup(m)
        if entry is not None:  # a registered custom layer: its declared rule wins
            if entry.channel_rule == "channelwise":
                return lay  # run() freezes it if its output has another channel count
            if entry.channel_rule == "conv":
                shape = _shape(node)
                if shape is None or len(shape) < 2:
                    return self.opaque(node)
                self.consume(node, lay)
                if node.target in self.sources:
                    return self.layer_source(node, m, shape[1])
                return self.new_source(node.target, shape[1], frozen=False,
                                       importance=entry.filter_importance(m, shape[1]))
            return self.opaque(node)
        if isinstance(m, nn.modules.conv._ConvNd):
            return self.visit_conv(node, m, lay)
        if isinstance(m, nn.modules.batchnorm._NormBase):  # BatchNorm and InstanceNorm
            return lay
        if isinstance(m, nn.GroupNorm):
            return self.visit_group_norm(lay, m)
        if isinstance(m, nn.PReLU) and m.num_parameters > 1:
            return lay
        if isinstance(m, _PASSTHROUGH_MODULES) or (isinstance(m, nn.PReLU) and m.num_parameters == 1):
            return self.passthrough(node, spatial=isinstance(m, _SPATIAL_MODULES))
        if isinstance(m, nn.Flatten):
            return self.flatten(node, lay, m.start_dim, m.end_dim)
        return self.opaque(node)

    def visit_linear(self, node: fx.Node, m: nn.Linear, lay: np.ndarray, axis: int) -> Any:
        """A Linear maps the last dim: its filters are new channels there. It reads our
        channels when they are on the last dim ((N, C), or (N, H, W, C) in a
        channels-last section); channels on another dim pass through it position by
        position, untracked from here on, so they are frozen."""
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        if out_shape is None or len(out_shape) < 2:
            return self.opaque(node)
        if axis == len(in_shape) - 1 and node.target not in self.untracked_inputs:
            self.consume(node, lay)
        else:
            self.freeze(lay)
            self.untracked_inputs.add(node.target)  # every call reads its input whole
            self.freeze(self.module_inputs.get(node.target))
        return self.layer_source(node, m, m.out_features), len(out_shape) - 1

    def visit_layer_norm(self, node: fx.Node, m: nn.LayerNorm, lay: np.ndarray, axis: int) -> Any:
        """A LayerNorm over the last dims. Channels on a dim it does not normalise pass
        through; over exactly our channels (channels-last) it is sliced with them, its
        statistics then taken over the kept channels (as for GroupNorm with one group)."""
        nd, k = len(_shape(node.args[0])), len(m.normalized_shape)
        if axis < nd - k:
            return lay, axis
        if k == 1 and axis == nd - 1:
            return lay, axis
        return self.opaque(node)

    def consume(self, node: fx.Node, lay: np.ndarray) -> None:
        """A layer reads these channels; a layer called twice must read matching ones."""
        prev = self.module_inputs.get(node.target)
        if prev is None:
            self.module_inputs[node.target] = lay
        else:
            self.unite(prev, lay)

    def layer_source(self, node: fx.Node, m: nn.Module, size: int) -> np.ndarray:
        if node.target in self.sources:  # second call of the same layer: same filters
            s = self.sources[node.target]
            return np.arange(s.start, s.start + s.size)
        return self.new_source(node.target, size, frozen=False, importance=channel_importance(m))

    def visit_conv(self, node: fx.Node, m: nn.modules.conv._ConvNd, lay: np.ndarray) -> np.ndarray:
        g, cin, cout = m.groups, m.in_channels, m.out_channels
        if g == 1:
            self.consume(node, lay)
            return self.layer_source(node, m, cout)
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        if cin == cout and not transposed:
            self.consume(node, lay)
            if cin == g:  # depthwise: each output channel is its input channel
                return lay
            if cin // g > 1:  # grouped (ResNeXt): channel i stays in group i // (cin/g)
                self.balanced.append(np.split(lay, g))
                return lay
        if cin == cout == g:  # depthwise transposed conv
            self.consume(node, lay)
            return lay
        if not transposed and node.target not in self.sources:
            # grouped with new filters (ResNeSt's radix conv): each group of inputs and of
            # filters loses the same number
            self.consume(node, lay)
            self.balanced.append(np.split(lay, g))
            src = self.layer_source(node, m, cout)
            self.balanced.append(np.split(src, g))
            return src
        # other grouped convs: kept whole
        self.freeze(lay)
        src = self.layer_source(node, m, cout)
        self.freeze(src)
        return src

    def visit_group_norm(self, lay: np.ndarray, m: nn.GroupNorm) -> np.ndarray:
        """Per channel like BatchNorm, but its statistics span contiguous groups of channels.

        Rebuilt with the same ``num_groups``, the kept channels must still fall into the
        same groups, so every group loses the same number (as for a grouped conv).
        """
        if m.num_groups > 1:
            self.balanced.append(np.split(lay, m.num_groups))
        return lay

    def flatten(self, node: fx.Node, lay: np.ndarray, start: int, end: int) -> Optional[np.ndarray]:
        if self.axis(node.args[0]) != 1:
            return self.opaque(node)
        in_shape = _shape(node.args[0])
        nd = len(in_shape)
        start, end = start % nd, end % nd
        if start >= 2:
            return lay
        if start == 1 and end == nd - 1:
            spatial = int(np.prod(in_shape[2:])) if nd > 2 else 1
            return np.repeat(lay, spatial)
        return self.opaque(node)

    def binary(self, node: fx.Node) -> Optional[np.ndarray]:
        out_shape = _shape(node)
        if out_shape is None or len(out_shape) < 2:
            return self.opaque(node)
        full: List[np.ndarray] = []
        axes = set()
        for arg in list(node.args) + list(node.kwargs.values()):
            if not isinstance(arg, fx.Node):
                continue
            shape = _shape(arg)
            lay = self.layouts.get(arg)
            if shape is None or int(np.prod(shape)) == 1:
                continue  # scalars and python numbers broadcast harmlessly
            if lay is None or len(shape) != len(out_shape):
                return self.opaque(node)  # a constant tensor or odd broadcast: keep it all
            axis = self.axis(arg)
            axes.add(axis)
            if shape[axis] == out_shape[axis]:
                full.append(lay)
            elif shape[axis] != 1:
                return self.opaque(node)
        if not full or len(axes) > 1:  # channels on different dims: keep them all
            return self.opaque(node)
        for other in full[1:]:
            self.unite(full[0], other)
        return full[0], axes.pop()

    def cat(self, node: fx.Node) -> Optional[np.ndarray]:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out_shape = _shape(node)
        if not isinstance(tensors, (list, tuple)) or out_shape is None or len(out_shape) < 2:
            return self.opaque(node)
        lays = [self.layout(t) for t in tensors]
        axes = {self.axis(t) for t in tensors}
        if any(lay is None for lay in lays) or len(axes) > 1:
            return self.opaque(node)
        axis = axes.pop()
        if dim % len(out_shape) == axis:
            return np.concatenate(lays), axis
        for other in lays[1:]:
            self.unite(lays[0], other)
        return lays[0], axis

    def stack(self, node: fx.Node) -> Any:
        """``torch.stack`` along a new dim (SKNet's paths): the inputs' channels line up one
        to one, so they go together, and move up by one when the new dim comes before them.
        A new dim 0 would move the batch, which every other rule assumes on dim 0."""
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out_shape = _shape(node)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int) or out_shape is None:
            return self.opaque(node)
        lays = [self.layout(t) for t in tensors]
        axes = {self.axis(t) for t in tensors}
        dim = dim % len(out_shape)
        if any(lay is None for lay in lays) or len(axes) > 1 or dim == 0:
            return self.opaque(node)
        axis = axes.pop()
        for other in lays[1:]:
            self.unite(lays[0], other)
        return lays[0], axis + 1 if dim <= axis else axis

    def permute(self, node: fx.Node, dims: Any) -> Any:
        """``permute``/``transpose``: the channels move to the dim their old dim goes to."""
        x = node.args[0]
        lay, in_shape = self.layout(x), _shape(x)
        if lay is None or in_shape is None or not all(isinstance(d, int) for d in dims):
            return self.opaque(node)
        dims = [d % len(in_shape) for d in dims]
        if sorted(dims) != list(range(len(in_shape))):
            return self.opaque(node)
        return lay, dims.index(self.axis(x))

    def transpose(self, node: fx.Node, d0: Any, d1: Any) -> Any:
        shape = _shape(node.args[0])
        if shape is None or not isinstance(d0, int) or not isinstance(d1, int):
            return self.opaque(node)
        dims = list(range(len(shape)))
        dims[d0 % len(shape)], dims[d1 % len(shape)] = dims[d1 % len(shape)], dims[d0 % len(shape)]
        return self.permute(node, dims)

    def reduce(self, node: fx.Node, dims: Any) -> Any:
        """A mean/sum over dims other than the batch and the channels; the channels move
        down by the dims dropped before them (unless ``keepdim``)."""
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        if dims is None or in_shape is None or out_shape is None:
            return self.opaque(node)
        dims = [dims] if isinstance(dims, int) else list(dims)
        if any(not isinstance(d, int) for d in dims):
            return self.opaque(node)
        axis = self.axis(node.args[0])
        dims = [d % len(in_shape) for d in dims]
        if 0 in dims or axis in dims:
            return self.opaque(node)
        if len(out_shape) == len(in_shape):  # keepdim
            return self.layout(node.args[0]), axis
        return self.layout(node.args[0]), axis - sum(d < axis for d in dims)

    def softmax(self, node: fx.Node, dim: Any) -> Any:
        """softmax over another dim than the channels acts on each channel alone."""
        x = node.args[0]
        if not isinstance(dim, int) or self.layout(x) is None or _shape(x) is None:
            return self.opaque(node)
        if dim % len(_shape(x)) in (0, self.axis(x)):
            return self.opaque(node)
        return self.passthrough(node)

    def view(self, node: fx.Node) -> Optional[np.ndarray]:
        x = node.args[0]
        in_shape, out_shape, lay = _shape(x), _shape(node), self.layout(x)
        if in_shape is None or out_shape is None or lay is None or len(in_shape) < 2:
            return self.opaque(node)
        shape_args = node.args[1:]
        if len(shape_args) == 1 and isinstance(shape_args[0], (list, tuple)):
            shape_args = tuple(shape_args[0])
        if self.axis(x) != 1:
            return self.regroup(node, lay, in_shape, out_shape, shape_args)
        if len(out_shape) == 2 and out_shape[0] == in_shape[0] and out_shape[1] == int(np.prod(in_shape[1:])):
            self.flatten_views.append(node.name)
            return np.repeat(lay, int(np.prod(in_shape[2:])) if len(in_shape) > 2 else 1)
        if (
            len(out_shape) >= 2
            and out_shape[:2] == in_shape[:2]
            and len(shape_args) >= 2
            and isinstance(shape_args[1], fx.Node)  # the channel count is read, not fixed
        ):
            return lay
        return self.regroup(node, lay, in_shape, out_shape, shape_args)

    def regroup(self, node: fx.Node, lay: np.ndarray, in_shape: Tuple[int, ...], out_shape: Tuple[int, ...],
                shape_args: Any) -> Any:
        """A view that splits the channel dim into factors or merges it with its neighbours.

        Split ``C -> (R, C/R)`` (ResNeSt's radices, a channel shuffle): the channels stay
        on the last factor and the R copies of each are joined, so they go together.
        Merge ``(R, C) -> R*C``: each merged channel is the channel it came from. The
        channel dim's new size must be computed (``-1`` or read from a shape), not fixed.
        """
        axis = self.axis(node.args[0])
        group = next((g for g in _align(in_shape, out_shape) if axis in g[0]), None)
        if group is None or len(shape_args) != len(out_shape):
            return self.opaque(node)
        in_dims, out_dims = group
        in_big = [d for d in in_dims if in_shape[d] > 1 or d == axis]
        out_big = [d for d in out_dims if out_shape[d] > 1]
        if in_big == [axis] and out_big:
            c_out = out_big[-1]
            factors = lay.reshape(-1, out_shape[c_out])
            for row in factors[1:]:
                self.unite(factors[0], row)
            result = factors[0]
        elif len(out_big) == 1:
            c_out = out_big[0]
            sizes = [in_shape[d] for d in in_dims]
            ones = [len(lay) if d == axis else 1 for d in in_dims]
            result = np.broadcast_to(lay.reshape(ones), sizes).reshape(-1)
        else:
            return self.opaque(node)
        arg = shape_args[c_out]
        if not (isinstance(arg, fx.Node) or arg == -1) or any(
                (isinstance(shape_args[d], fx.Node) and not self.reads_other_dim(shape_args[d]))
                or shape_args[d] == -1 for d in out_dims if d != c_out):
            return self.opaque(node)  # a fixed channel count, or another factor left to work out
        return result, c_out

    def reads_other_dim(self, arg: fx.Node) -> bool:
        """Whether ``arg`` is a tensor's size on a dim other than its channels (``x.shape[2]``,
        ``x.size(3)``): pruning does not change it (SKNet's ``view(B, paths, C // paths, H, W)``)."""
        if arg.op == "call_function" and arg.target is operator.getitem and isinstance(arg.args[1], int):
            shape = arg.args[0]
            if not (isinstance(shape, fx.Node) and shape.op == "call_function" and shape.target is getattr
                    and shape.args[1] == "shape"):
                return False
            tensor, dim = shape.args[0], arg.args[1]
        elif arg.op == "call_method" and arg.target == "size" and len(arg.args) == 2 and isinstance(arg.args[1], int):
            tensor, dim = arg.args
        else:
            return False
        in_shape = _shape(tensor)
        return (isinstance(tensor, fx.Node) and tensor in self.layouts and in_shape is not None
                and dim % len(in_shape) not in (0, self.axis(tensor)))

    def split(self, node: fx.Node, dim: Any) -> Optional[np.ndarray]:
        """``split``/``chunk``/``tensor_split``: each piece gets its slice of the atoms when
        the split is along the channels, all of them when along another dim. Only pieces
        taken out by ``[i]`` are followed; any other use of the tuple keeps the input whole."""
        x = node.args[0]
        lay, in_shape = self.layout(x), _shape(x)
        metas = node.meta.get("tensor_meta")
        if (lay is None or in_shape is None or not isinstance(dim, int) or not isinstance(metas, (tuple, list))
                or not all(hasattr(m, "shape") and len(m.shape) == len(in_shape) for m in metas)
                or not all(u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)
                           for u in node.users)):
            self.freeze(lay)
            return None
        axis, dim = self.axis(x), dim % len(in_shape)
        if dim != axis:
            self.pieces[node] = [(lay, axis)] * len(metas)
            return None
        sizes = [int(m.shape[dim]) for m in metas]
        if sum(sizes) != len(lay):
            self.freeze(lay)
            return None
        bounds = np.cumsum([0] + sizes)
        chunks = [lay[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        self.pieces[node] = [(c, axis) for c in chunks]
        self.splits[node.name] = SplitRecord(dim=dim, pieces=chunks)
        self.nonempty.append([c for c in chunks if len(c)])
        return None

    def index(self, node: fx.Node) -> Any:
        """``x[...]`` with slices: a crop of other dims keeps the channels, ``a:b`` on the
        channel dim keeps those atoms (and is resized in a descendant). Integers, steps,
        ``None`` and tensors as indices are not modelled."""
        x = node.args[0]
        lay, in_shape = self.layout(x), _shape(x)
        parsed = parse_index(node.args[1], len(in_shape)) if in_shape is not None else None
        if lay is None or parsed is None:
            return self.opaque(node)
        axis = self.axis(x)
        pos, sl = parsed[axis]
        start, stop, step = sl.indices(len(lay))
        if step != 1 or stop <= start:
            return self.opaque(node)
        if (start, stop) == (0, len(lay)):
            return lay, axis
        self.slices[node.name] = SliceRecord(position=pos, dim=axis, channels=lay, start=start, stop=stop)
        self.nonempty.append([lay[start:stop]])
        return lay[start:stop], axis

    def visit_function(self, node: fx.Node, fn: Any) -> Optional[np.ndarray]:
        if fn is getattr and len(node.args) == 2 and node.args[1] in ("shape", "dtype", "device", "ndim"):
            return None  # reading a tensor's shape leaves its channels alone
        if fn is operator.getitem:
            if node.args[0] in self.pieces:
                return self.pieces[node.args[0]][node.args[1]]
            if _shape(node.args[0]) is None:
                return None  # indexing a python container (e.g. a tuple of sizes)
            return self.index(node)
        if fn in SPLIT_FUNCTIONS:
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            return self.split(node, dim)
        if fn in _PASSTHROUGH_FUNCTIONS or _is_stochastic_depth(fn):
            return self.passthrough(node, spatial=fn in _SPATIAL_FUNCTIONS)
        if fn is torch.permute:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dims")
            return self.permute(node, dims) if isinstance(dims, (list, tuple)) else self.opaque(node)
        if fn is torch.transpose and len(node.args) == 3:
            return self.transpose(node, node.args[1], node.args[2])
        if fn in _BINARY:
            return self.binary(node)
        if fn is torch.cat or fn is torch.concat:
            return self.cat(node)
        if fn is torch.stack:
            return self.stack(node)
        if fn is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            lay = self.layout(node.args[0])
            return self.opaque(node) if lay is None else self.flatten(node, lay, start, end)
        if fn in _REDUCE_FUNCTIONS:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            return self.reduce(node, dims)
        if fn is torch.reshape:
            return self.view(node)
        if fn in (F.softmax, torch.softmax):
            return self.softmax(node, node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
        return self.opaque(node)

    def visit_method(self, node: fx.Node, name: str) -> Optional[np.ndarray]:
        if name in ("size", "dim"):
            return None
        if name in SPLIT_METHODS:
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            return self.split(node, dim)
        if name in _PASSTHROUGH_METHODS:
            return self.passthrough(node)
        if name == "permute":
            dims = node.args[1:]
            if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                dims = dims[0]
            return self.permute(node, dims) if dims else self.opaque(node)
        if name == "transpose" and len(node.args) == 3:
            return self.transpose(node, node.args[1], node.args[2])
        if name in _BINARY_METHODS:
            return self.binary(node)
        if name in ("view", "reshape"):
            return self.view(node)
        if name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            lay = self.layout(node.args[0])
            return self.opaque(node) if lay is None else self.flatten(node, lay, start, end)
        if name in _REDUCE_METHODS:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            return self.reduce(node, dims)
        if name == "softmax":
            return self.softmax(node, node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
        return self.opaque(node)

    # -- result -----------------------------------------------------------------
    def result(self) -> ChannelAnalysis:
        n_atoms = len(self.uf.parent)
        roots = np.array([self.uf.find(a) for a in range(n_atoms)], dtype=np.int64)
        uniq, class_of_atom = np.unique(roots, return_inverse=True)
        n_classes = len(uniq)
        frozen = np.zeros(n_classes, dtype=bool)
        np.logical_or.at(frozen, class_of_atom, np.array(self.frozen, dtype=bool))
        importance = np.zeros(n_classes, dtype=np.float64)
        class_sources: Dict[int, set] = {}
        for s in self.sources.values():
            cls = class_of_atom[s.start : s.start + s.size]
            if s.importance is not None:
                np.add.at(importance, cls, s.importance.astype(np.float64))
            for c in np.unique(cls).tolist():
                class_sources.setdefault(c, set()).add(s.name)
        # pruning groups: classes linked through the layers whose filters they hold
        layer_groups = _UnionFind()
        names = sorted(self.sources)
        layer_groups.add(len(names))
        pos = {n: i for i, n in enumerate(names)}
        for srcs in class_sources.values():
            srcs = sorted(srcs)
            for s in srcs[1:]:
                layer_groups.union(pos[srcs[0]], pos[s])
        by_group: Dict[int, List[int]] = {}
        for c in range(n_classes):
            if frozen[c] or not any(self.sources[s].importance is not None for s in class_sources.get(c, ())):
                continue
            root = layer_groups.find(pos[sorted(class_sources[c])[0]])
            by_group.setdefault(root, []).append(c)
        groups: List[PruneGroup] = []
        for root, classes in sorted(by_group.items()):
            srcs = sorted({s for c in classes for s in class_sources[c] if self.sources[s].importance is not None})
            parts = self._balanced_parts(classes, class_of_atom)
            if parts is None:
                continue
            balanced = len(parts) > 1
            parts = self._nonempty_parts(parts, balanced, class_of_atom)
            if parts is not None:
                groups.append(PruneGroup(parts=parts, sources=srcs, balanced=balanced))
        layouts = {n.name: class_of_atom[lay] for n, lay in self.layouts.items()}
        return ChannelAnalysis(
            layouts=layouts,
            sources=dict(self.sources),
            class_of_atom=class_of_atom,
            class_importance=importance,
            groups=groups,
            flatten_views=self.flatten_views,
            layers=self.layers,
            axes={n.name: a for n, a in self.axes.items()},
            splits={n: r.classes(class_of_atom) for n, r in self.splits.items()},
            slices={n: r.classes(class_of_atom) for n, r in self.slices.items()},
        )

    def _nonempty_parts(self, parts: List[List[int]], balanced: bool,
                        class_of_atom: np.ndarray) -> Optional[List[List[int]]]:
        """Parts in which every split piece and slice keeps a channel (None: unprunable).

        Without a balanced grouping the parts are refined by which pieces each class is
        in, so each piece is a union of parts, each keeping one. A balanced grouping is
        kept as it is when every piece holds a whole part of it (too tangled otherwise).
        """
        members = {c for p in parts for c in p}
        chunk_sets = []
        for chunks in self.nonempty:
            sets = [set(class_of_atom[c].tolist()) & members for c in chunks]
            if any(sets):
                chunk_sets.append([cs for cs in sets if cs])
        if not chunk_sets:
            return parts
        if balanced:
            ok = all(any(set(p) <= cs for p in parts) for sets in chunk_sets for cs in sets)
            return parts if ok else None
        signature: Dict[int, tuple] = {c: () for c in members}
        for k, sets in enumerate(chunk_sets):
            for j, cs in enumerate(sets):
                for c in cs:
                    signature[c] += ((k, j),)
        refined: Dict[tuple, List[int]] = {}
        for c in sorted(members):
            refined.setdefault(signature[c], []).append(c)
        return list(refined.values())

    def _balanced_parts(self, classes: List[int], class_of_atom: np.ndarray) -> Optional[List[List[int]]]:
        """Split a group's classes into the parts a grouped conv or GroupNorm demands (None: unprunable)."""
        members = set(classes)
        constraints = []
        for chunks in self.balanced:
            chunk_classes = [sorted(set(class_of_atom[c].tolist())) for c in chunks]
            if any(c in members for cc in chunk_classes for c in cc):
                constraints.append(chunk_classes)
        # a grouping whose chunks hold the same classes (ResNeSt's radix copies) balances itself
        constraints = [c for c in constraints if any(cc != c[0] for cc in c[1:])]
        if not constraints:
            return [sorted(classes)]
        if len(constraints) > 1 and any(c != constraints[0] for c in constraints[1:]):
            return None  # two different groupings: too tangled, keep whole
        parts = constraints[0]
        flat = [c for p in parts for c in p]
        if len(flat) != len(set(flat)) or set(flat) != members:
            return None
        return parts


def analyze_channels(gm: fx.GraphModule, layers: Optional[LayerRegistry] = None) -> ChannelAnalysis:
    """Channel coupling classes of a block graph whose nodes carry ShapeProp metadata.

    ``layers`` declares custom leaf layers (:data:`~.layers.default_layers` if None); the
    analysis keeps it, so the descendants built from it slice those layers the same way.
    """
    layers = default_layers if layers is None else layers
    analyzer = _Analyzer(gm, layers)
    analyzer.run()
    return analyzer.result()
