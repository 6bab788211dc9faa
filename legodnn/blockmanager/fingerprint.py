"""A fingerprint of a model's architecture, to tell whether a store belongs to it.

It covers the traced graphs (ops, targets, wiring) and every parameter and buffer name,
shape and dtype, but not the weight values: a device may build the model with random
weights and take them from the store.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from torch import fx, nn

from .tracing import TracedPart

__all__ = ["architecture_fingerprint"]


def _target_name(node: fx.Node) -> str:
    if node.op in ("call_function",):
        return fx.node._get_qualified_name(node.target)
    return str(node.target)


def architecture_fingerprint(model: nn.Module, parts: Sequence[TracedPart]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(f"part:{part.path}\n".encode())
        for node in part.graph_module.graph.nodes:
            inputs = ",".join(n.name for n in node.all_input_nodes)
            h.update(f"{node.op}|{node.name}|{_target_name(node)}|{inputs}\n".encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
    return h.hexdigest()
