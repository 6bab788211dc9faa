"""Descendant blocks: plan which filters a sparsity removes, and build the pruned block.

:func:`plan_pruning` turns a sparsity into the kept filter indices of each layer (the
whole architecture of a descendant, small enough for a JSON manifest);
:func:`build_descendant` is the one function that makes a descendant from the original
block and that plan. Weights are sliced copies, so a descendant never aliases the
teacher, and sparsity 0 reproduces the original block bit for bit.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from .channels import ChannelAnalysis, analyze_channels
from .layers import slice_channels
from .splits import resize_splits

__all__ = ["plan_pruning", "build_descendant", "kept_channels"]


def plan_pruning(analysis: ChannelAnalysis, sparsity: float) -> Dict[str, List[int]]:
    """Kept filter indices per layer when ``sparsity`` of each prunable group is removed.

    Filters are ranked by L1 norm (summed over filters that must go together); each
    balanced part of a group loses ``floor(sparsity * size)`` of them and keeps at least
    one. Layers that lose nothing are left out of the plan.
    """
    removed = np.zeros(len(analysis.class_importance), dtype=bool)
    for group in analysis.groups:
        for part in group.parts:
            n_remove = min(math.floor(sparsity * len(part) + 1e-9), len(part) - 1)
            if n_remove <= 0:
                continue
            order = sorted(part, key=lambda c: (analysis.class_importance[c], c))
            removed[order[:n_remove]] = True
    plan: Dict[str, List[int]] = {}
    for group in analysis.groups:
        for src in group.sources:
            classes = analysis.atoms_of(src)
            keep = np.nonzero(~removed[classes])[0]
            if len(keep) < len(classes):
                plan[src] = keep.tolist()
    return plan


def kept_channels(analysis: ChannelAnalysis, plan: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Per coupling class, whether it is kept; checks that the plan is consistent."""
    n_classes = len(analysis.class_importance)
    removed = np.zeros(n_classes, dtype=bool)
    prunable = np.zeros(n_classes, dtype=bool)
    for group in analysis.groups:
        for part in group.parts:
            prunable[part] = True
    for src, keep in plan.items():
        if src not in analysis.sources:
            raise ValueError(f"the pruning plan names layer {src!r}, which the block does not have")
        classes = analysis.atoms_of(src)
        keep_arr = np.asarray(keep, dtype=np.int64)
        if keep_arr.size == 0 or keep_arr.min() < 0 or keep_arr.max() >= len(classes):
            raise ValueError(f"kept indices of layer {src!r} are out of range")
        mask = np.ones(len(classes), dtype=bool)
        mask[keep_arr] = False
        removed[classes[mask]] = True
    if (removed & ~prunable).any():
        raise ValueError("the pruning plan removes channels that must be kept")
    for group in analysis.groups:  # a grouped conv or GroupNorm keeps its groups, a split its pieces
        lost = {int(removed[part].sum()) for part in group.parts}
        if (group.balanced and len(lost) > 1) or any(removed[part].all() for part in group.parts):
            raise ValueError(f"the pruning plan empties or unbalances the groups of {group.sources}")
    for src in plan:
        classes = analysis.atoms_of(src)
        expected = np.nonzero(~removed[classes])[0]
        if not np.array_equal(expected, np.asarray(sorted(plan[src]))):
            raise ValueError(f"the pruning plan is inconsistent for coupled layer {src!r}")
    return ~removed


def _slice_conv(m: nn.modules.conv._ConvNd, keep_in: np.ndarray, keep_out: np.ndarray) -> None:
    w = m.weight.detach()
    g = m.groups
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    t_in = torch.as_tensor(keep_in, dtype=torch.long, device=w.device)
    t_out = torch.as_tensor(keep_out, dtype=torch.long, device=w.device)
    if g == 1:
        new_w = w[:, t_out][t_in] if transposed else w[t_out][:, t_in]
    elif m.in_channels == m.out_channels == g:  # depthwise: the kept channels are the kept groups
        new_w = w[t_in] if transposed else w[t_out]
        g = len(keep_out)
    else:  # balanced grouped conv: every group keeps the same number of channels
        per_in, per_out = m.in_channels // g, m.out_channels // g
        new_g_in = len(keep_in) // g
        rows = []
        for o in keep_out.tolist():
            grp = o // per_out
            local = [i - grp * per_in for i in keep_in.tolist() if i // per_in == grp]
            rows.append(w[o, local])
        new_w = torch.stack(rows)
        assert new_w.shape[1] == new_g_in
    m.weight = nn.Parameter(new_w.clone(), requires_grad=m.weight.requires_grad)
    _slice_per_output(m, m.out_channels, keep_out)
    m.in_channels, m.out_channels, m.groups = len(keep_in), len(keep_out), g


def _slice_linear(m: nn.Linear, keep_in: np.ndarray, keep_out: np.ndarray) -> None:
    w = m.weight.detach()
    t_in = torch.as_tensor(keep_in, dtype=torch.long, device=w.device)
    t_out = torch.as_tensor(keep_out, dtype=torch.long, device=w.device)
    m.weight = nn.Parameter(w[t_out][:, t_in].clone(), requires_grad=m.weight.requires_grad)
    _slice_per_output(m, m.out_features, keep_out)
    m.in_features, m.out_features = len(keep_in), len(keep_out)


def _slice_per_output(m: nn.Module, out_size: int, keep_out: np.ndarray) -> None:
    """Slice every tensor of ``m`` but its weight that has one entry per output channel.

    The bias is one, and so are the extras of layer subclasses: the per-filter ``gain`` of
    timm's ``ScaledStdConv2d`` (weight-standardised convs of NF-ResNets), a per-filter
    scale or mask buffer. The rule is generic, since we cannot know every subclass: any
    parameter or buffer of the layer itself (not of its children) whose leading dim
    equals the output size is sliced along it. A tensor of another leading size is left
    as it is. (With in == out channels a per-*input* tensor would be sliced too; no
    layer we know has one, and a custom layer that has one should be registered with its
    own slicer, see :mod:`legodnn.blockmanager.layers`.)
    """
    keep = torch.as_tensor(keep_out, dtype=torch.long)
    for table in ("_parameters", "_buffers"):
        entries = getattr(m, table)
        for name, t in list(entries.items()):
            if name != "weight" and t is not None and t.dim() > 0 and t.shape[0] == out_size:
                entries[name] = slice_channels(t, keep)


def _slice_channelwise(m: nn.Module, keep: np.ndarray) -> None:
    """BatchNorm, InstanceNorm, GroupNorm and PReLU: every per-channel tensor keeps the kept channels.

    A GroupNorm keeps its ``num_groups``: the plan took the same number from each group.
    """
    idx = torch.as_tensor(keep, dtype=torch.long)
    for name, p in list(m.named_parameters(recurse=False)):
        setattr(m, name, nn.Parameter(p.detach()[idx.to(p.device)].clone(), requires_grad=p.requires_grad))
    for name, b in list(m.named_buffers(recurse=False)):
        if b is not None and b.dim() == 1 and b.numel() > 1:
            m.register_buffer(name, b[idx.to(b.device)].clone())
    if hasattr(m, "num_features"):
        m.num_features = len(keep)
    if isinstance(m, nn.GroupNorm):
        m.num_channels = len(keep)
    if isinstance(m, nn.PReLU):
        m.num_parameters = len(keep)


def build_descendant(
    block: fx.GraphModule,
    plan: Mapping[str, Sequence[int]],
    analysis: ChannelAnalysis | None = None,
    inplace: bool = False,
) -> fx.GraphModule:
    """The one builder of descendant blocks: the original block with ``plan`` applied.

    ``block`` must carry ShapeProp metadata (blocks made by the block manager do). With an
    empty plan the result is an exact copy of the original block. ``inplace`` prunes
    ``block`` itself (for a throw-away copy, e.g. one on the meta device).
    """
    if analysis is None:
        analysis = analyze_channels(block)
    keep_class = kept_channels(analysis, plan)
    new = block if inplace else copy.deepcopy(block)
    if not plan:
        return new
    modules = dict(new.named_modules())
    done = set()
    for node in new.graph.nodes:
        if node.op != "call_module" or node.target in done:
            continue
        m = modules[node.target]
        out_lay = analysis.layouts.get(node.name)
        in_node = node.args[0] if node.args else None
        in_lay = analysis.layouts.get(in_node.name) if isinstance(in_node, fx.Node) else None
        if out_lay is None or in_lay is None:
            continue
        keep_in = np.nonzero(keep_class[in_lay])[0]
        keep_out = np.nonzero(keep_class[out_lay])[0]
        if len(keep_in) == len(in_lay) and len(keep_out) == len(out_lay):
            continue
        done.add(node.target)
        in_axis, out_axis = analysis.axis_of(in_node.name), analysis.axis_of(node.name)
        last = len(getattr(node.meta.get("tensor_meta"), "shape", ())) - 1  # the node's last dim
        entry = analysis.layers.lookup(m)
        if entry is not None:  # a registered custom layer: its own slicer
            if entry.channel_rule != "opaque":
                entry.slice(m, keep_in, keep_out, len(in_lay))
        elif isinstance(m, nn.Linear):  # reads the last dim; channels elsewhere are not its inputs
            if in_axis != last:
                keep_in = np.arange(m.in_features)
            _slice_linear(m, keep_in, keep_out)
        elif isinstance(m, nn.LayerNorm):  # sliced only when it normalises exactly our channels
            if out_axis == last and tuple(m.normalized_shape) == (len(out_lay),):
                _slice_channelwise(m, keep_out)
                m.normalized_shape = (len(keep_out),)
        elif in_axis != 1 or out_axis != 1:
            continue  # the analysis froze it: nothing to cut
        elif isinstance(m, nn.modules.conv._ConvNd):
            _slice_conv(m, keep_in, keep_out)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.PReLU)):
            _slice_channelwise(m, keep_out)
    for node in new.graph.nodes:
        if node.name in analysis.flatten_views:  # fixed sizes in a view would break: flatten
            node.op, node.target = "call_function", torch.flatten
            node.args, node.kwargs = (node.args[0], 1), {}
    resize_splits(new, analysis.splits, analysis.slices, keep_class)
    new.recompile()
    return new
