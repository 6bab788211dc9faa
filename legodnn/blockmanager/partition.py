"""Cut traced parts into a frame and blocks, and compose them back into a model.

Each block becomes its own ``fx.GraphModule`` (one placeholder, one output); the frame
is a ``GraphModule`` that calls the blocks as submodules named after them. Swapping a
block is then replacing one submodule, and :func:`replace_modules` does it
copy-on-write, so a forward that is already running keeps the configuration it
started with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

from torch import fx, nn

from .regions import Region
from .specs import BlockSpec
from .tracing import TracedPart

__all__ = ["Partition", "extract_block", "build_frame", "replace_modules", "BLOCK_PREFIX"]

BLOCK_PREFIX = "legodnn_"


def _copy_node(graph: fx.Graph, node: fx.Node, env: Dict[fx.Node, fx.Node]) -> fx.Node:
    """Copy ``node`` into ``graph``, copying constant inputs it needs that are not there yet."""

    def lookup(n: fx.Node) -> fx.Node:
        if n not in env:
            env[n] = _copy_node(graph, n, env)
        return env[n]

    return graph.node_copy(node, lookup)


def extract_block(part_gm: fx.GraphModule, spec: BlockSpec) -> fx.GraphModule:
    """The nodes of one block as a ``GraphModule`` sharing the part's layer objects."""
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    inside = set(spec.nodes)
    for node in part_gm.graph.nodes:
        if node.name == spec.entry:
            ph = graph.placeholder("x")
            ph.meta = copy.copy(node.meta)
            env[node] = ph
        elif node.name in inside:
            env[node] = _copy_node(graph, node, env)
    exit_node = next(n for n in part_gm.graph.nodes if n.name == spec.exit)
    graph.output(env[exit_node])
    graph.lint()
    gm = fx.GraphModule(part_gm, graph, class_name="LegoBlock")
    gm.train(part_gm.training)
    return gm


def build_frame(
    part_gm: fx.GraphModule, specs: Sequence[BlockSpec], blocks: Mapping[str, nn.Module]
) -> fx.GraphModule:
    """The part's graph with every block's nodes replaced by one call to the block module."""
    by_exit = {s.exit: s for s in specs}
    inside = {n for s in specs for n in s.nodes}
    nodes = {n.name: n for n in part_gm.graph.nodes}
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    for node in part_gm.graph.nodes:
        if node.name in by_exit:
            spec = by_exit[node.name]
            call = graph.call_module(BLOCK_PREFIX + spec.name, (env[nodes[spec.entry]],))
            call.meta = copy.copy(node.meta)
            env[node] = call
        elif node.name not in inside:
            env[node] = graph.node_copy(node, lambda n: env[n])
    owners = dict(part_gm.named_modules())
    root: Dict[str, object] = {}
    for node in graph.nodes:
        if node.op == "call_module" and not node.target.startswith(BLOCK_PREFIX):
            root[node.target] = owners[node.target]
        elif node.op == "get_attr":
            root[node.target] = _get_attr(part_gm, node.target)
    for spec in specs:
        if BLOCK_PREFIX + spec.name in root:
            raise ValueError(f"the model already has an attribute named {BLOCK_PREFIX + spec.name}")
        root[BLOCK_PREFIX + spec.name] = blocks[spec.name]
    frame = fx.GraphModule(root, graph, class_name="LegoFrame")
    frame.graph.eliminate_dead_code()
    # Constants a block reads (a ``get_attr`` of a weight, as Swin's attention reads its
    # qkv weight) were copied into the frame too and are dead there now: build the frame
    # again from what its graph still uses, so it does not keep the teacher's tensors alive.
    used = {n.target for n in frame.graph.nodes if n.op in ("call_module", "get_attr")}
    frame = fx.GraphModule({k: v for k, v in root.items() if k in used}, frame.graph, class_name="LegoFrame")
    frame.graph.lint()  # the constructor generated the code of this graph: no recompile needed
    frame.train(part_gm.training)
    return frame


def _get_attr(module: nn.Module, target: str) -> object:
    obj: object = module
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def _shallow_copy(module: nn.Module) -> nn.Module:
    new = object.__new__(type(module))
    new.__dict__ = module.__dict__.copy()
    new.__dict__["_modules"] = module._modules.copy()
    return new


def replace_modules(root: nn.Module, changes: Mapping[str, nn.Module]) -> nn.Module:
    """A new root where the modules at the given dotted paths are replaced.

    The old root and everything it holds are untouched; modules off the changed paths are
    shared, so the copy costs a few dict copies, not weights.
    """
    new_root = _shallow_copy(root)
    copies: Dict[str, nn.Module] = {"": new_root}
    for path, module in changes.items():
        parent_path, _, name = path.rpartition(".")
        parent = copies.get(parent_path)
        if parent is None:
            prefix = ""
            parent = new_root
            for atom in parent_path.split("."):
                prefix = f"{prefix}.{atom}" if prefix else atom
                if prefix not in copies:
                    copies[prefix] = _shallow_copy(parent._modules[atom])
                    parent._modules[atom] = copies[prefix]
                parent = copies[prefix]
        parent._modules[name] = module
    return new_root


@dataclass
class Partition:
    """A model cut into frame and blocks: the parts' frames, the original blocks, their specs."""

    parts: List[TracedPart]
    specs: List[BlockSpec]
    blocks: Dict[str, fx.GraphModule]

    @classmethod
    def from_regions(cls, parts: Sequence[TracedPart], chosen: Sequence[Tuple[str, Region]]) -> "Partition":
        specs: List[BlockSpec] = []
        for i, (part_path, region) in enumerate(chosen):
            part = next(p for p in parts if p.path == part_path)
            nodes = {n.name: n for n in part.graph_module.graph.nodes}
            specs.append(
                BlockSpec(
                    name=f"block_{i}",
                    part=part_path,
                    entry=region.entry,
                    exit=region.exit,
                    nodes=tuple(n.name for n in part.graph_module.graph.nodes if n.name in region.nodes),
                    input_shape=tuple(nodes[region.entry].meta["tensor_meta"].shape),
                    output_shape=tuple(nodes[region.exit].meta["tensor_meta"].shape),
                    num_convs=region.num_convs,
                    conv_params=region.conv_params,
                )
            )
        return cls.from_specs(parts, specs)

    @classmethod
    def from_specs(cls, parts: Sequence[TracedPart], specs: Sequence[BlockSpec]) -> "Partition":
        by_path = {p.path: p for p in parts}
        blocks = {s.name: extract_block(by_path[s.part].graph_module, s) for s in specs}
        return cls(list(parts), list(specs), blocks)

    def block_path(self, name: str) -> str:
        """Dotted path of a block's module inside a model made by :meth:`compose`."""
        spec = next(s for s in self.specs if s.name == name)
        return f"{spec.part}.{BLOCK_PREFIX}{name}" if spec.part else BLOCK_PREFIX + name

    def compose(self, model: nn.Module, blocks: Mapping[str, nn.Module]) -> nn.Module:
        """``model`` with each traced part replaced by its frame calling ``blocks``.

        Returns a new root; ``model`` itself is not modified.
        """
        frames: Dict[str, nn.Module] = {}
        for part in self.parts:
            specs = [s for s in self.specs if s.part == part.path]
            frames[part.path] = build_frame(part.graph_module, specs, blocks)
        if "" in frames:
            return frames[""]
        return replace_modules(model, frames)
