"""Cut the frame at its block calls into segments that ONNX Runtime can run one by one.

Why segments: a composed model exported whole is one ONNX graph, so swapping one block
means exporting and loading the whole model again. Cut at the block boundaries, the
frame becomes a chain of small graphs (segments) between block calls; every descendant
of a block is its own graph with the same input and output shapes. Serving chains one
session per segment and one per live descendant, and a swap replaces one session.

A segment takes every tensor computed earlier that it reads (not only the last block's
output: a residual branch reads a block's *input* after the block) and returns every
tensor it computes that a later step reads. Values are numbered in a plan; a
:class:`FramePlan` lists the steps and which values each reads and writes.
"""

from __future__ import annotations

import inspect
import io
import warnings
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import fx, nn

from ..blockmanager.partition import BLOCK_PREFIX
from ..errors import LegoDNNError

__all__ = ["Step", "FramePlan", "split_frame", "export_module"]


@dataclass(frozen=True)
class Step:
    """One link of the chain: a frame segment (``block`` empty) or a block call.

    ``inputs``/``outputs`` are value ids of the plan, in the order of the ONNX graph's
    inputs and outputs (named ``in_<id>`` and ``out_<id>``).
    """

    kind: str  # "segment" or "block"
    name: str  # "segment_<i>" or the block name
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]

    def input_names(self) -> List[str]:
        return [f"in_{v}" for v in self.inputs]

    def output_names(self) -> List[str]:
        return [f"out_{v}" for v in self.outputs]

    def to_json(self) -> Dict[str, object]:
        return {"kind": self.kind, "name": self.name, "inputs": list(self.inputs), "outputs": list(self.outputs)}

    @classmethod
    def from_json(cls, d: Dict[str, object]) -> "Step":
        return cls(str(d["kind"]), str(d["name"]), tuple(int(v) for v in d["inputs"]),  # type: ignore[union-attr]
                   tuple(int(v) for v in d["outputs"]))  # type: ignore[union-attr]


@dataclass(frozen=True)
class FramePlan:
    """The chain: value 0 is the model input; ``outputs`` are the model's output values
    (one, or several for a model that returns a tuple of tensors)."""

    steps: Tuple[Step, ...]
    outputs: Tuple[int, ...]
    tuple_output: bool  # the model returns a tuple/list rather than one tensor

    @property
    def block_steps(self) -> List[Step]:
        return [s for s in self.steps if s.kind == "block"]

    def to_json(self) -> Dict[str, object]:
        return {"steps": [s.to_json() for s in self.steps], "outputs": list(self.outputs),
                "tuple_output": self.tuple_output}

    @classmethod
    def from_json(cls, d: Dict[str, object]) -> "FramePlan":
        return cls(tuple(Step.from_json(s) for s in d["steps"]),  # type: ignore[union-attr]
                   tuple(int(v) for v in d["outputs"]), bool(d["tuple_output"]))  # type: ignore[union-attr]


def _flat_outputs(arg: object) -> Tuple[List[fx.Node], bool]:
    if isinstance(arg, fx.Node):
        return [arg], False
    if isinstance(arg, (tuple, list)) and arg and all(isinstance(a, fx.Node) for a in arg):
        return list(arg), True
    raise LegoDNNError(
        "ONNX Runtime serving needs a model that returns a tensor or a flat tuple of tensors; this model "
        f"returns {type(arg).__name__} ({arg!r:.80}). Serve it with backend='torch'")


def split_frame(frame: fx.GraphModule, example: torch.Tensor) -> Tuple[FramePlan, Dict[str, fx.GraphModule]]:
    """The chain of ``frame`` (a composed model whose blocks are ``legodnn_<name>`` calls)
    and a ``GraphModule`` per non-empty segment.

    ``example`` (one model input) is run once to learn which values are tensors: only
    tensors may cross a boundary. A segment with nothing to compute (two blocks in a row)
    gets no step.
    """
    if not isinstance(frame, fx.GraphModule):
        raise LegoDNNError(
            "ONNX Runtime serving needs a model that torch.fx traces whole (its frame is one graph); this "
            f"model's blocks sit in traced parts inside {type(frame).__name__}. Serve it with backend='torch'")
    graph = frame.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise LegoDNNError(f"ONNX Runtime serving needs a model with one input tensor, this one takes "
                           f"{len(placeholders)}; serve it with backend='torch'")
    values: Dict[fx.Node, object] = {}

    class _Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            out = super().run_node(n)
            values[n] = out
            return out

    with torch.no_grad():
        _Record(frame).run(example)
    output_node = next(n for n in graph.nodes if n.op == "output")
    final, tuple_output = _flat_outputs(output_node.args[0])

    # group the compute nodes: a segment runs until the next block call
    groups: List[Tuple[str, List[fx.Node]]] = []
    current: List[fx.Node] = []
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "call_module" and str(node.target).startswith(BLOCK_PREFIX):
            groups.append(("segment", current))
            groups.append(("block", [node]))
            current = []
        else:
            current.append(node)
    groups.append(("segment", current))

    ids: Dict[fx.Node, int] = {placeholders[0]: 0}
    producer: Dict[fx.Node, int] = {placeholders[0]: -1}
    for g, (_, nodes) in enumerate(groups):
        for n in nodes:
            producer[n] = g
    users_after: Dict[fx.Node, List[int]] = {n: [] for n in producer}
    for g, (_, nodes) in enumerate(groups):
        for n in nodes:
            for a in n.all_input_nodes:
                if producer[a] != g:
                    users_after[a].append(g)
    for n in final:
        users_after[n].append(len(groups))

    def value_id(n: fx.Node) -> int:
        if not isinstance(values.get(n), torch.Tensor):
            raise LegoDNNError(
                f"the frame passes {n.name} ({type(values.get(n)).__name__}) across a block boundary; only "
                "tensors can flow between ONNX Runtime sessions. Serve this model with backend='torch'")
        if n not in ids:
            ids[n] = len(ids)
        return ids[n]

    value_id(placeholders[0])
    steps: List[Step] = []
    modules: Dict[str, fx.GraphModule] = {}
    for g, (kind, nodes) in enumerate(groups):
        inside = set(nodes)
        reads = []
        for n in nodes:
            for a in n.all_input_nodes:
                if a not in inside and a not in reads:
                    reads.append(a)
        writes = [n for n in nodes if users_after[n]]
        if kind == "block":
            node = nodes[0]
            steps.append(Step("block", str(node.target)[len(BLOCK_PREFIX):], (value_id(reads[0]),),
                              (value_id(node),)))
            continue
        if not writes:
            continue  # nothing computed here is read later (an empty segment)
        name = f"segment_{len(modules)}"
        in_ids = tuple(value_id(a) for a in reads)
        out_ids = tuple(value_id(n) for n in writes)
        modules[name] = _segment_module(frame, nodes, reads, writes)
        steps.append(Step("segment", name, in_ids, out_ids))
    plan = FramePlan(tuple(steps), tuple(value_id(n) for n in final), tuple_output)
    return plan, modules


def _segment_module(frame: fx.GraphModule, nodes: Sequence[fx.Node], reads: Sequence[fx.Node],
                    writes: Sequence[fx.Node]) -> fx.GraphModule:
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    for i, a in enumerate(reads):
        env[a] = graph.placeholder(f"v{i}")
    for n in nodes:
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(tuple(env[n] for n in writes))
    graph.lint()
    gm = fx.GraphModule(frame, graph, class_name="LegoSegment")
    gm.eval()
    return gm


def export_module(module: nn.Module, inputs: Sequence[torch.Tensor], input_names: Sequence[str],
                  output_names: Sequence[str], opset_version: int = 17) -> bytes:
    """``module`` as ONNX bytes, batch dimension dynamic on every input and output.

    The TorchScript exporter (no onnxscript needed): in eval mode it folds BatchNorm into
    the convolutions, the same graph ORT would otherwise build at load time.
    """
    was_training = module.training
    module.eval()
    kwargs = dict(
        opset_version=opset_version,
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_axes={n: {0: "batch"} for n in [*input_names, *output_names]},
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(inputs), buf, **kwargs)
    except Exception as exc:
        raise LegoDNNError(f"ONNX export of {type(module).__name__} failed ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); serve this model with "
                           "backend='torch'") from exc
    finally:
        module.train(was_training)
    return buf.getvalue()
