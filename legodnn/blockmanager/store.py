"""The blocks directory: one object owns its layout, its writes and its rules.

A store is a folder holding ``manifest.json`` (:class:`StoreManifest`), safetensors
weights (the frame and every descendant), the profiles measured on it and, for a
trained store, the retraining state under ``training/``. No other module knows a file
name: they ask :class:`BlockStore` for a path or write through it.

Rules every write follows:

- **Atomic.** A new store is written under a temporary sibling name and exchanged with
  the old one in one step: readers and killed writers see the old store or the new one.
  Single files (profiles) go through a temporary file and a rename. Leftovers of
  writers that died are removed the next time the store is opened or written.
- **Never destroy what is not ours.** A path that holds anything but a legodnn store
  (or a folder legodnn marked as its own work folder) is refused: a regular file, a
  link, a folder with other files. A store of the *same* model (same architecture
  fingerprint) is refreshed in place of the old one; replacing a *different* model's
  store needs ``overwrite=True``.
- **Checked reads.** File names are confined to the store, every file's SHA-256 is
  checked when it is read, and safetensors never unpickles code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..errors import CorruptedStoreError, FingerprintMismatchError, NotOursError, StoreError
from .atomic import (
    copy_file_atomic,
    exchange_paths,
    is_temp_name,
    remove_stale_temps,
    temp_path,
    write_tensors_atomic,
    write_text_atomic,
)
from .manifest import FORMAT, FORMAT_VERSION, FileRef, StoreManifest
from .specs import BlockSpec, DescendantSpec

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "BlockStore",
    "StoreWriter",
    "claim_path",
    "claim_file",
    "mark_work_dir",
    "sparsity_tag",
    "atomic_write_text",
    "write_file_atomic",
    "copy_file_atomic",
]

PathLike = Union[str, os.PathLike]

# The layout: every name a store's files go by.
MANIFEST_NAME = "manifest.json"
FRAME_FILE = "frame.safetensors"
WORK_MARKER = ".legodnn"  # in a folder legodnn created before it holds a store (a retrainer's work folder)
TRAINING_DIR = "training"
BLOCK_PROFILE = "block_profile.json"
BLOCK_PROFILE_CSV = "block_profile.csv"
LATENCY_PROFILE = "latency_profile.json"
ACCURACY_ESTIMATE = "accuracy_estimate.json"
ACCURACY_MODEL_CHOICE = "accuracy_model.json"

# kept for callers of the first API
atomic_write_text = write_text_atomic
write_file_atomic = write_tensors_atomic


def sparsity_tag(sparsity: float) -> str:
    """File-name friendly sparsity, e.g. 0.3 -> '0p3'."""
    return f"{sparsity:g}".replace(".", "p")


def descendant_file(block: str, sparsity: float) -> str:
    return f"{block}_s{sparsity_tag(sparsity)}.safetensors"


def _read_manifest(root: Path) -> Optional[Dict[str, Any]]:
    """The raw manifest of a legodnn store at ``root``, or None if ``root`` holds none."""
    path = root / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def read_json_or_none(path: Path) -> Optional[Any]:
    """A profile-like JSON file, or None when it does not exist; unreadable is corrupt."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptedStoreError(f"cannot read {path}: {exc}; profile again") from exc


def claim_path(target: PathLike, fingerprint: Optional[str], overwrite: bool = False, what: str = "blocks_dir") -> Path:
    """Check that legodnn may write a store at ``target``; returns it as an absolute path.

    Allowed: a missing path, an empty folder, a legodnn work folder, a store of the same
    model (``fingerprint``; ``None`` accepts any), or any store with ``overwrite``.
    Everything else raises :class:`NotOursError` and is left untouched.
    """
    target = Path(target).absolute()
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise NotOursError(
            f"{what} {str(target)!r} is a file, not a legodnn blocks directory; legodnn does not overwrite it. "
            "Choose a new path (it is created) or remove the file yourself")
    if not target.exists():
        return target
    # legodnn's own temporary files count as empty: another rank of a torchrun job may be
    # writing the work marker of this very folder at this moment
    entries = sorted(p.name for p in target.iterdir() if not is_temp_name(p.name))
    if not entries or (target / WORK_MARKER).is_file():
        return target
    manifest = _read_manifest(target)
    if manifest is None:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise NotOursError(
            f"{what} {str(target)!r} already holds files legodnn did not write ({shown}); legodnn does not "
            "overwrite them. Choose a new or empty folder")
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint and not overwrite:
        raise NotOursError(
            f"{what} {str(target)!r} holds the blocks of another model (architecture fingerprint "
            f"{str(manifest.get('fingerprint'))[:12]}, this model {fingerprint[:12]}); pass overwrite=True to "
            "replace them, or choose another folder")
    return target


def claim_file(target: PathLike, overwrite: bool = False, what: str = "out") -> Path:
    """Check that legodnn may write the single file ``target`` (a JSON of picks, an ONNX model).

    legodnn cannot tell its own earlier output from a user's file of the same name, so an
    existing file is replaced only with ``overwrite``; a folder or a link never is.
    """
    target = Path(target)
    if target.is_symlink() or target.is_dir():
        raise NotOursError(f"{what} {str(target)!r} is a folder or a link; give the path of a file to write")
    if target.exists() and not overwrite:
        raise NotOursError(f"{what} {str(target)!r} already exists; legodnn does not replace it unless asked "
                           "(--overwrite, or overwrite=True), or choose another path")
    return target


def mark_work_dir(folder: PathLike) -> Path:
    """Create ``folder`` (after :func:`claim_path`) and mark it as legodnn's, so a later run may write it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / WORK_MARKER
    if not marker.exists():
        write_text_atomic(marker, json.dumps({"format": "legodnn-work", "note": "created by legodnn"}))
    return folder


def _clean(root: Path) -> None:
    """Remove what dead writers left inside and beside ``root`` (ignored on a read-only disk)."""
    try:
        remove_stale_temps(root.parent, root.name)
        remove_stale_temps(root)
    except OSError:
        pass


class StoreWriter:
    """Writes a new store under a temporary sibling folder; :meth:`commit` puts it in place.

    The target is claimed first (:func:`claim_path`): nothing is written unless legodnn
    may replace what is there. ``keep`` names entries of the previous folder carried
    into the new store (the retraining state).
    """

    def __init__(self, blocks_dir: PathLike, fingerprint: Optional[str] = None, overwrite: bool = False,
                 keep: Tuple[str, ...] = ()) -> None:
        self.target = claim_path(blocks_dir, fingerprint, overwrite)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        _clean(self.target)
        self.keep = keep
        self.tmp = temp_path(self.target, "writing")
        self.tmp.mkdir()

    def write_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> str:
        """Save one safetensors file into the new store; returns its SHA-256."""
        return write_tensors_atomic(self.tmp / name, tensors)

    def copy_from(self, store: "BlockStore", ref: FileRef) -> None:
        """Carry a file of another store over unchanged (a hard link when the disk allows)."""
        src, dst = store.root / ref.file, self.tmp / ref.file
        try:
            os.link(src, dst)
        except OSError:
            copy_file_atomic(src, dst)

    def commit(self, manifest: Union[StoreManifest, Dict[str, Any]]) -> "BlockStore":
        """Write the manifest and exchange the new folder with the target in one step."""
        data = manifest.to_json() if isinstance(manifest, StoreManifest) else manifest
        write_text_atomic(self.tmp / MANIFEST_NAME, json.dumps(data, indent=1))
        claim_path(self.target, data.get("fingerprint"), overwrite=True)  # nothing foreign appeared meanwhile
        old = exchange_paths(self.tmp, self.target)
        if old is not None:
            for name in self.keep:
                if (old / name).exists() and not (self.target / name).exists():
                    os.replace(old / name, self.target / name)
            shutil.rmtree(old, ignore_errors=True)
        return BlockStore(self.target)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()


class BlockStore:
    """A blocks directory opened for reading; the manifest is parsed and checked up front."""

    def __init__(self, blocks_dir: PathLike) -> None:
        self.root = Path(blocks_dir)
        _clean(self.root)  # first: a store a dead writer left renamed aside is put back
        if not self.root.is_dir():
            raise StoreError(
                f"blocks directory {str(self.root)!r} does not exist: run "
                "AutoBlockManager.extract_all_blocks(...) to create it")
        manifest_path = self.root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise StoreError(
                f"{str(self.root)!r} has no {MANIFEST_NAME}: it is not a legodnn blocks directory, "
                "or writing it was interrupted (a retraining that has not finished); extract or retrain again")
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CorruptedStoreError(f"cannot read {manifest_path}: {exc}; extract the blocks again") from exc
        self.manifest: StoreManifest = StoreManifest.from_json(raw, str(manifest_path))
        self.blocks: List[BlockSpec] = [b.spec for b in self.manifest.blocks]
        self.descendants: Dict[str, Dict[float, DescendantSpec]] = {
            b.spec.name: {d.sparsity: d for d in b.descendants} for b in self.manifest.blocks}
        self._verified: Dict[str, Tuple[int, int]] = {}

    # -- what it holds ----------------------------------------------------------
    @property
    def block_names(self) -> List[str]:
        return self.manifest.block_names

    @property
    def block_sparsity(self) -> List[float]:
        return list(self.manifest.block_sparsity)

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def weights_digest(self) -> str:
        return self.manifest.weights_digest

    @property
    def architecture_digest(self) -> str:
        return self.manifest.architecture_digest

    def path(self, name: str) -> Path:
        """Where a named file of the layout lives (``BLOCK_PROFILE``, ``LATENCY_PROFILE``...)."""
        return self.root / name

    def check_fingerprint(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"blocks directory {str(self.root)!r} was written for a different model architecture "
                f"(fingerprint {self.fingerprint[:12]}, this model {fingerprint[:12]}); pass the model "
                "the blocks were extracted from, or extract blocks for this model")

    def descendant(self, block: str, sparsity: float) -> DescendantSpec:
        table = self.descendants.get(block)
        if table is None:
            raise StoreError(f"blocks directory {str(self.root)!r} has no block named {block!r}; "
                             f"its blocks are {self.block_names}")
        for s, spec in table.items():
            if abs(s - sparsity) < 1e-9:
                return spec
        raise StoreError(f"block {block!r} has no descendant at sparsity {sparsity}; available: {sorted(table)}")

    # -- reading weights --------------------------------------------------------
    def load_tensors(self, name: Union[str, FileRef], sha256: str = "") -> Dict[str, torch.Tensor]:
        """One weights file, its SHA-256 checked.

        The first read of a file reads its bytes once, hashes them and deserializes the
        same bytes. A file this object already verified (same size and modification
        time) is memory-mapped by safetensors without hashing again: a switch that reads
        a block from disk costs about what reading it alone costs.
        """
        from safetensors.torch import load, load_file

        ref = name if isinstance(name, FileRef) else FileRef(name, sha256)
        path = self.root / ref.file
        try:
            stat = path.stat()
            seen = (stat.st_size, stat.st_mtime_ns)
            if self._verified.get(ref.file) == seen:
                return load_file(str(path))
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptedStoreError(f"weights file {path} is missing; extract the blocks again") from None
        except OSError as exc:
            raise CorruptedStoreError(f"cannot read weights file {path}: {exc}") from exc
        except Exception as exc:  # safetensors' own errors: a damaged file
            raise CorruptedStoreError(f"cannot read weights file {path}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise CorruptedStoreError(
                f"weights file {path} does not match the hash in its manifest (corrupted or "
                "overwritten); extract the blocks again")
        try:
            tensors = load(data)
        except Exception as exc:
            raise CorruptedStoreError(f"cannot read weights file {path}: {exc}") from exc
        self._verified[ref.file] = seen
        return tensors

    def frame_tensors(self) -> Dict[str, torch.Tensor]:
        return self.load_tensors(self.manifest.frame)

    def descendant_tensors(self, block: str, sparsity: float) -> Dict[str, torch.Tensor]:
        desc = self.descendant(block, sparsity)
        return self.load_tensors(FileRef(desc.file, desc.sha256))

    # -- profiles ---------------------------------------------------------------
    def read_json(self, name: str) -> Optional[Any]:
        """A JSON file of the layout, or None when the store has none."""
        return read_json_or_none(self.root / name)

    def write_json(self, name: str, data: Any) -> Path:
        """Write (atomically) a JSON file of the layout into the store."""
        path = self.root / name
        write_text_atomic(path, json.dumps(data, indent=1))
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.root / name
        write_text_atomic(path, text)
        return path

    # -- writing a store from this one -----------------------------------------
    def write_copy(
        self,
        target: PathLike,
        weights: Mapping[Tuple[str, float], Mapping[str, torch.Tensor]],
        trained: Mapping[str, Any],
        keep: Tuple[str, ...] = (TRAINING_DIR,),
    ) -> "BlockStore":
        """A new store at ``target``: this one's files with the descendants in ``weights`` replaced.

        Unchanged files are hard-linked (or copied); ``trained`` is merged into the
        manifest's record; profiles are not carried over (they measured other weights).
        The whole store appears at once (:class:`StoreWriter`).
        """
        if Path(target).absolute() == self.root.absolute():
            raise StoreError(f"cannot write store {str(self.root)!r} onto itself; choose another target")
        writer = StoreWriter(target, self.fingerprint, keep=keep)
        with writer:
            writer.copy_from(self, self.manifest.frame)
            shas: Dict[Tuple[str, float], str] = {}
            for block in self.manifest.blocks:
                for desc in block.descendants:
                    key = (block.spec.name, desc.sparsity)
                    if key in weights:
                        shas[key] = writer.write_tensors(desc.file, weights[key])
                    else:
                        writer.copy_from(self, FileRef(desc.file, desc.sha256))
            return writer.commit(self.manifest.with_weights(shas, trained))
