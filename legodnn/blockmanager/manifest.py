"""The manifest of a blocks directory: typed, versioned, validated when read.

Every stage hands the next a blocks directory; the manifest says what is in it. It is
read into frozen dataclasses once, checked (file names confined to the store, every
hash present), and written back from them, so no module reads it by string keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import CorruptedStoreError, StoreError
from ..version import __version__
from .specs import BlockSpec, DescendantSpec

__all__ = ["FORMAT", "FORMAT_VERSION", "FileRef", "PartEntry", "BlockEntry", "StoreManifest"]

FORMAT = "legodnn-blocks"
FORMAT_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE = re.compile(r"^[A-Za-z0-9_.@+-]+$")


def _check_file(name: str, where: str) -> str:
    """Weights files are plain names inside the store: no folders, no '..', no absolute paths."""
    if not isinstance(name, str) or not _FILE.match(name) or name.startswith(".") or name in ("..", "."):
        raise CorruptedStoreError(
            f"{where}: file {name!r} is not a plain file name inside the store; the manifest was edited "
            "or corrupted: extract the blocks again")
    return name


def _check_sha(sha: str, where: str) -> str:
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise CorruptedStoreError(
            f"{where}: sha256 {sha!r} is not a SHA-256 hex digest (every file needs one); extract the blocks again")
    return sha


@dataclass(frozen=True)
class FileRef:
    """One weights file of the store and the SHA-256 of its bytes."""

    file: str
    sha256: str


@dataclass(frozen=True)
class PartEntry:
    """A traced part of the model (``""``: the whole model) and its example input shape."""

    path: str
    input_shape: Tuple[int, ...]


@dataclass(frozen=True)
class BlockEntry:
    """A block and its descendants (sparsity 0, the original block, first)."""

    spec: BlockSpec
    descendants: Tuple[DescendantSpec, ...]


@dataclass(frozen=True)
class StoreManifest:
    """What a blocks directory holds; ``trained`` records the retraining that made it."""

    fingerprint: str
    model_class: str
    model_input_size: Tuple[int, ...]
    block_sparsity: Tuple[float, ...]
    compress_layer_max_ratio: float
    max_convs_per_block: Optional[int]
    coverage_conv_params: float
    parts: Tuple[PartEntry, ...]
    frame: FileRef
    blocks: Tuple[BlockEntry, ...]
    trained: Mapping[str, Any] = field(default_factory=dict)
    legodnn_version: str = __version__
    torch_version: str = torch.__version__

    # -- derived --------------------------------------------------------------
    @property
    def block_names(self) -> List[str]:
        return [b.spec.name for b in self.blocks]

    def files(self) -> List[FileRef]:
        """Every weights file: the frame, then each descendant."""
        return [self.frame] + [FileRef(d.file, d.sha256) for b in self.blocks for d in b.descendants]

    @property
    def weights_digest(self) -> str:
        """One hash of every weight in the store: a profile records it to know what it measured."""
        h = hashlib.sha256(self.fingerprint.encode())
        for ref in self.files():
            h.update(f"{ref.file}:{ref.sha256};".encode())
        return h.hexdigest()

    @property
    def architecture_digest(self) -> str:
        """One hash of every descendant's architecture (kept filters), weights aside: what latency depends on."""
        h = hashlib.sha256(self.fingerprint.encode())
        for b in self.blocks:
            for d in b.descendants:
                h.update(json.dumps([d.block, d.sparsity, d.kept], sort_keys=True).encode())
        return h.hexdigest()

    def with_weights(self, shas: Mapping[Tuple[str, float], str], trained: Mapping[str, Any]) -> "StoreManifest":
        """The manifest of the same store with new descendant weights (by key) and ``trained`` merged."""
        blocks = tuple(BlockEntry(b.spec, tuple(
            replace(d, sha256=shas.get((b.spec.name, d.sparsity), d.sha256)) for d in b.descendants))
            for b in self.blocks)
        return replace(self, blocks=blocks, trained={**self.trained, **trained},
                       legodnn_version=__version__, torch_version=torch.__version__)

    # -- JSON -----------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "legodnn_version": self.legodnn_version,
            "torch_version": self.torch_version,
            "fingerprint": self.fingerprint,
            "model_class": self.model_class,
            "model_input_size": list(self.model_input_size),
            "block_sparsity": list(self.block_sparsity),
            "compress_layer_max_ratio": self.compress_layer_max_ratio,
            "max_convs_per_block": self.max_convs_per_block,
            "coverage_conv_params": self.coverage_conv_params,
            "parts": [{"path": p.path, "input_shape": list(p.input_shape)} for p in self.parts],
            "frame": {"file": self.frame.file, "sha256": self.frame.sha256},
            "blocks": [{"spec": b.spec.to_json(), "descendants": [d.to_json() for d in b.descendants]}
                       for b in self.blocks],
            "trained": dict(self.trained),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "manifest") -> "StoreManifest":
        """Parse and check a manifest; any problem is a :class:`StoreError` naming ``where``."""
        version = d.get("format_version") if isinstance(d, Mapping) else None
        if not isinstance(d, Mapping) or d.get("format") != FORMAT or version != FORMAT_VERSION:
            got = (d.get("format"), version) if isinstance(d, Mapping) else (type(d).__name__, None)
            raise StoreError(
                f"{where} has format {got[0]!r} version {got[1]!r}; this legodnn ({__version__}) reads "
                f"{FORMAT} version {FORMAT_VERSION}: extract the blocks again with this version")
        try:
            blocks = []
            for b in d["blocks"]:
                descendants = tuple(DescendantSpec.from_json(x) for x in b["descendants"])
                for x in descendants:
                    _check_file(x.file, where)
                    _check_sha(x.sha256, where)
                blocks.append(BlockEntry(BlockSpec.from_json(b["spec"]), descendants))
            frame = FileRef(_check_file(d["frame"]["file"], where), _check_sha(d["frame"]["sha256"], where))
            return cls(
                fingerprint=str(d["fingerprint"]),
                model_class=str(d.get("model_class", "")),
                model_input_size=tuple(int(x) for x in d["model_input_size"]),
                block_sparsity=tuple(float(x) for x in d["block_sparsity"]),
                compress_layer_max_ratio=float(d["compress_layer_max_ratio"]),
                max_convs_per_block=d.get("max_convs_per_block"),
                coverage_conv_params=float(d.get("coverage_conv_params", 0.0)),
                parts=tuple(PartEntry(str(p["path"]), tuple(int(x) for x in p["input_shape"])) for p in d["parts"]),
                frame=frame,
                blocks=tuple(blocks),
                trained=dict(d.get("trained", {})),
                legodnn_version=str(d.get("legodnn_version", "")),
                torch_version=str(d.get("torch_version", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptedStoreError(f"{where} is incomplete or malformed ({type(exc).__name__}: {exc}); "
                                      "extract the blocks again") from exc
