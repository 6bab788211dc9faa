"""Metadata of blocks and descendants: frozen dataclasses that round-trip through JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Tuple

__all__ = ["BlockSpec", "DescendantSpec"]


@dataclass(frozen=True)
class BlockSpec:
    """Where a block sits in the traced graph of its part, and its shapes.

    ``part`` is the traced submodule path ("" for the whole model); ``entry`` and
    ``exit`` are fx node names of the tensor that enters and the tensor that leaves;
    ``nodes`` are the graph nodes the block holds.
    """

    name: str
    part: str
    entry: str
    exit: str
    nodes: Tuple[str, ...]
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    num_convs: int
    conv_params: int

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "BlockSpec":
        return cls(
            name=d["name"],
            part=d["part"],
            entry=d["entry"],
            exit=d["exit"],
            nodes=tuple(d["nodes"]),
            input_shape=tuple(d["input_shape"]),
            output_shape=tuple(d["output_shape"]),
            num_convs=int(d["num_convs"]),
            conv_params=int(d["conv_params"]),
        )


@dataclass(frozen=True)
class DescendantSpec:
    """One descendant of a block: its architecture (kept filters per layer) and its cost.

    ``kept`` maps a layer's qualified name to the indices of the filters it keeps; layers
    that keep everything are absent. ``flops`` are 2 x multiply-adds in one forward of the
    model (over every call of the block: a detector head's tower runs once per pyramid
    level); ``bytes`` is the size of its weights and buffers.
    """

    block: str
    sparsity: float
    kept: Dict[str, List[int]] = field(hash=False)
    params: int
    flops: int
    bytes: int
    file: str = ""
    sha256: str = ""

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "DescendantSpec":
        return cls(
            block=d["block"],
            sparsity=float(d["sparsity"]),
            kept={k: [int(i) for i in v] for k, v in d["kept"].items()},
            params=int(d["params"]),
            flops=int(d["flops"]),
            bytes=int(d["bytes"]),
            file=d.get("file", ""),
            sha256=d.get("sha256", ""),
        )
