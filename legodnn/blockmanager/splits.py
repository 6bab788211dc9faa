"""Channel splits and slices: where they cut a block's channels, and their sizes in a descendant.

``torch.split(x, 26, 1)`` (Res2Net), ``x.chunk(2, 1)`` and ``x[:, :c]`` (GhostNet) hold
channel counts as constants. The channel analysis records, for each such node on the
channel dim, the coupling class of every channel going in (:class:`SplitRecord`,
:class:`SliceRecord`); once a plan says which classes stay, :func:`resize_splits` gives
the node the sizes of the kept channels: a split becomes ``torch.split`` with one size
per piece (a chunk may no longer cut evenly), a slice gets the bounds of its kept
channels. Sparsity 0 keeps every node as it was traced.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np
import torch
from torch import fx

__all__ = ["SPLIT_FUNCTIONS", "SPLIT_METHODS", "SplitRecord", "SliceRecord", "parse_index", "resize_splits"]

SPLIT_FUNCTIONS = {torch.split, torch.chunk, torch.tensor_split}
SPLIT_METHODS = {"split", "chunk", "tensor_split"}


@dataclass(frozen=True)
class SplitRecord:
    """A split along the channel dim ``dim``: the channels (atoms or classes) of each piece."""

    dim: int
    pieces: List[np.ndarray]

    def classes(self, class_of_atom: np.ndarray) -> "SplitRecord":
        return SplitRecord(self.dim, [class_of_atom[p] for p in self.pieces])

    def sizes(self, keep_class: np.ndarray) -> List[int]:
        return [int(keep_class[p].sum()) for p in self.pieces]


@dataclass(frozen=True)
class SliceRecord:
    """``x[..., start:stop, ...]`` on the channel dim ``dim``, at ``position`` in the index tuple."""

    position: int
    dim: int
    channels: np.ndarray  # of the sliced tensor, all of them
    start: int
    stop: int

    def classes(self, class_of_atom: np.ndarray) -> "SliceRecord":
        return SliceRecord(self.position, self.dim, class_of_atom[self.channels], self.start, self.stop)

    def bounds(self, keep_class: np.ndarray) -> Tuple[int, int]:
        kept = keep_class[self.channels]
        return int(kept[: self.start].sum()), int(kept[: self.stop].sum())


def parse_index(index: Any, ndim: int) -> Optional[List[Tuple[int, slice]]]:
    """``(position in the index tuple, slice)`` for each of the ``ndim`` dims of ``x[index]``,
    or None when the index holds anything but constant slices and one ``...`` (an integer,
    ``None`` or a tensor changes the dims, which is not modelled)."""
    items = index if isinstance(index, tuple) else (index,)
    if sum(i is Ellipsis for i in items) > 1:
        return None
    for i in items:
        if i is Ellipsis:
            continue
        if not isinstance(i, slice) or not all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step)):
            return None
    if len(items) - (Ellipsis in items) > ndim:
        return None
    out: List[Tuple[int, slice]] = []
    for pos, i in enumerate(items):
        if i is Ellipsis:
            out.extend((pos, slice(None)) for _ in range(ndim - (len(items) - 1)))
        else:
            out.append((pos, i))
    out.extend((len(items) + k, slice(None)) for k in range(ndim - len(out)))
    return out


def resize_splits(gm: fx.GraphModule, splits: dict, slices: dict, keep_class: np.ndarray) -> None:
    """Give the split and slice nodes of a pruned block the sizes of its kept channels."""
    for node in gm.graph.nodes:
        record = splits.get(node.name)
        if record is not None:
            sizes = record.sizes(keep_class)
            if sizes != [len(p) for p in record.pieces]:
                node.op, node.target = "call_function", torch.split
                node.args, node.kwargs = (node.args[0], sizes), {"dim": record.dim}
            continue
        cut = slices.get(node.name)
        if cut is not None and node.op == "call_function" and node.target is operator.getitem:
            start, stop = cut.bounds(keep_class)
            if (start, stop) == (cut.start, cut.stop):
                continue
            items = list(node.args[1]) if isinstance(node.args[1], tuple) else [node.args[1]]
            while len(items) <= cut.position:  # the channel dim had no entry: it was a full slice
                items.append(slice(None))
            items[cut.position] = slice(start, stop)
            node.args = (node.args[0], tuple(items))
