"""The blocks directory: a JSON manifest plus safetensors weights, written atomically.

The whole directory is written under a temporary name beside the target and renamed
into place at the end, so a reader sees either the previous store or the complete new
one. The manifest records a SHA-256 of every weights file; loading checks it, and
safetensors never unpickles code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from ..errors import CorruptedStoreError, FingerprintMismatchError, StoreError
from ..version import __version__
from .specs import BlockSpec, DescendantSpec

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "StoreWriter",
    "BlockStore",
    "atomic_write_text",
    "copy_file_atomic",
    "remove_manifest",
    "sparsity_tag",
    "write_file_atomic",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]


def sparsity_tag(sparsity: float) -> str:
    """File-name friendly sparsity, e.g. 0.3 -> '0p3'."""
    return f"{sparsity:g}".replace(".", "p")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write a text file via a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _to_cpu(tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory (tied weights)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


class StoreWriter:
    """Writes a new store into a temporary sibling directory; :meth:`commit` moves it in place."""

    def __init__(self, blocks_dir: PathLike) -> None:
        self.target = Path(blocks_dir).absolute()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.target.parent / f".{self.target.name}.writing-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()

    def write_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> str:
        """Save one safetensors file; returns its SHA-256."""
        return write_file_atomic(self.tmp / name, tensors)

    def commit(self, manifest: Dict[str, Any]) -> None:
        atomic_write_text(self.tmp / MANIFEST_NAME, json.dumps(manifest, indent=1))
        old: Optional[Path] = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_file_atomic(path: PathLike, tensors: Mapping[str, torch.Tensor]) -> str:
    """Save a safetensors file via a temporary name and a rename; returns its SHA-256."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        save_file(_to_cpu(tensors), str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return _sha256(path)


def copy_file_atomic(src: PathLike, dst: PathLike) -> None:
    dst = Path(dst)
    tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_manifest(blocks_dir: PathLike, manifest: Dict[str, Any]) -> None:
    """Write the manifest last: its presence is what marks a store complete."""
    atomic_write_text(Path(blocks_dir) / MANIFEST_NAME, json.dumps(manifest, indent=1))


def remove_manifest(blocks_dir: PathLike) -> None:
    """Mark a store incomplete before rewriting its files in place."""
    path = Path(blocks_dir) / MANIFEST_NAME
    if path.exists():
        path.unlink()


class BlockStore:
    """A blocks directory opened for reading; validates the manifest up front."""

    def __init__(self, blocks_dir: PathLike) -> None:
        self.root = Path(blocks_dir)
        manifest_path = self.root / MANIFEST_NAME
        if not self.root.is_dir():
            raise StoreError(
                f"blocks directory {str(self.root)!r} does not exist: run "
                "AutoBlockManager.extract_all_blocks(...) to create it"
            )
        if not manifest_path.is_file():
            raise StoreError(
                f"{str(self.root)!r} has no {MANIFEST_NAME}: it is not a legodnn blocks directory, "
                "or writing it was interrupted; extract the blocks again"
            )
        try:
            self.manifest: Dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CorruptedStoreError(f"cannot read {manifest_path}: {exc}; extract the blocks again") from exc
        version = self.manifest.get("format_version")
        if self.manifest.get("format") != "legodnn-blocks" or version != FORMAT_VERSION:
            raise StoreError(
                f"{manifest_path} has format {self.manifest.get('format')!r} version {version!r}; "
                f"this legodnn ({__version__}) reads legodnn-blocks version {FORMAT_VERSION}"
            )
        self.blocks: List[BlockSpec] = [BlockSpec.from_json(b["spec"]) for b in self.manifest["blocks"]]
        self.descendants: Dict[str, Dict[float, DescendantSpec]] = {
            b["spec"]["name"]: {float(d["sparsity"]): DescendantSpec.from_json(d) for d in b["descendants"]}
            for b in self.manifest["blocks"]
        }

    @property
    def block_sparsity(self) -> List[float]:
        return [float(s) for s in self.manifest["block_sparsity"]]

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def check_fingerprint(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"blocks directory {str(self.root)!r} was written for a different model architecture "
                f"(fingerprint {self.fingerprint[:12]}, this model {fingerprint[:12]}); pass the model "
                "the blocks were extracted from, or extract blocks for this model"
            )

    def load_tensors(self, name: str, sha256: str) -> Dict[str, torch.Tensor]:
        """Load one weights file after checking it exists and matches its recorded hash."""
        path = self.root / name
        if not path.is_file():
            raise CorruptedStoreError(f"weights file {path} is missing; extract the blocks again")
        if sha256 and _sha256(path) != sha256:
            raise CorruptedStoreError(
                f"weights file {path} does not match the hash in its manifest (corrupted or "
                "overwritten); extract the blocks again"
            )
        try:
            return load_file(str(path))
        except Exception as exc:
            raise CorruptedStoreError(f"cannot read weights file {path}: {exc}") from exc

    def descendant(self, block: str, sparsity: float) -> DescendantSpec:
        table = self.descendants.get(block)
        if table is None:
            raise StoreError(f"blocks directory has no block named {block!r}")
        for s, spec in table.items():
            if abs(s - sparsity) < 1e-9:
                return spec
        raise StoreError(
            f"block {block!r} has no descendant at sparsity {sparsity}; available: {sorted(table)}"
        )
