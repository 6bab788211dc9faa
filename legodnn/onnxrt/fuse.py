"""Fuse a chain of ONNX graphs (segments and descendants) into one graph.

Why: every session boundary of the chain costs more than the call itself. Measured on the
CIFAR ResNet-18 bench store (one thread, batch 1): an empty session call with I/O binding
takes 6 us, but each session of the chain runs 15-75 us slower in sequence than when
called again and again, and ONNX Runtime's CPU provider reorders every session's input
to its blocked NCHWc layout and its output back (inside one graph the layout stays
blocked from end to end). One graph of the whole configuration, built from the very
ONNX files the chain runs (no PyTorch, no re-export), runs as fast as a whole-model
export. :class:`~.serving.OrtBlockSwitcher` serves the chain right after a swap (a swap
stays one assignment) and replaces it by the fused session of that configuration as
soon as it is built, in the background.

Names are made unique per step (``s<i>_...``); the values of the plan keep one name,
``v<id>``, so that a step's output is the next step's input inside the graph.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from ..errors import LegoDNNError
from ._ort import require_onnx
from .segments import FramePlan, Step

__all__ = ["fuse_steps", "value_name"]


def value_name(v: int) -> str:
    return f"v{v}"


def _rename_graph(graph, prefix: str, mapping: Dict[str, str]) -> None:
    """Rename in place every tensor and node name of ``graph``: ``mapping`` first, else ``prefix``."""

    def new(name: str) -> str:
        if not name:
            return name  # an omitted optional input
        return mapping.get(name, prefix + name)

    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node or attr.graphs:
                raise LegoDNNError(f"cannot fuse a graph with control flow ({node.op_type}); serve the chain "
                                   "(fuse=False)")
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
        node.name = prefix + node.name
    for init in graph.initializer:
        init.name = new(init.name)
    for init in graph.sparse_initializer:
        init.values.name = new(init.values.name)
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        vi.name = new(vi.name)


def fuse_steps(plan: FramePlan, steps: Sequence[Tuple[Step, bytes]], outputs: Sequence[int] = ()) -> bytes:
    """One ONNX model computing ``steps`` (in order) of ``plan``.

    Its inputs are the values the steps read and no earlier step computes, named
    ``v<id>``; its outputs are ``outputs`` (default: the plan's model outputs).
    """
    onnx = require_onnx()
    from onnx import helper

    outputs = tuple(outputs) or plan.outputs
    nodes: List = []
    inits: List = []
    sparse: List = []
    value_info: List = []
    produced: Dict[int, object] = {}
    graph_inputs: List = []
    opsets: Dict[str, int] = {}
    ir_version = 0
    for i, (step, data) in enumerate(steps):
        model = onnx.load_from_string(data)
        ir_version = max(ir_version, model.ir_version)
        for op in model.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        g = model.graph
        mapping = {n: value_name(v) for n, v in zip(step.input_names(), step.inputs)}
        mapping.update({n: value_name(v) for n, v in zip(step.output_names(), step.outputs)})
        inputs = {vi.name: vi for vi in g.input}
        outs = {vi.name: vi for vi in g.output}
        _rename_graph(g, f"s{i}_", mapping)
        for name, v in zip(step.input_names(), step.inputs):
            if v not in produced and all(value_name(v) != vi.name for vi in graph_inputs):
                graph_inputs.append(inputs[name])
        for name, v in zip(step.output_names(), step.outputs):
            produced[v] = outs[name]
        nodes.extend(g.node)
        inits.extend(g.initializer)
        sparse.extend(g.sparse_initializer)
        value_info.extend(g.value_info)
    missing = [v for v in outputs if v not in produced]
    if missing:
        raise LegoDNNError(f"the fused steps do not compute the values {missing}")
    graph = helper.make_graph(nodes, "legodnn_fused", graph_inputs, [produced[v] for v in outputs], inits,
                              value_info=value_info, sparse_initializer=sparse)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              producer_name="legodnn")
    model.ir_version = ir_version
    return model.SerializeToString()
