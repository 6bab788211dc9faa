"""The ONNX folder of a block store: segments and descendants as ``.onnx`` files, one manifest.

Layout (default: ``<blocks_dir>/onnx/``, beside the safetensors store it was exported from)::

    manifest.json                    OnnxManifest: plan, files, hashes, the store's digests
    segment_<i>.onnx                 the frame between block calls (float)
    <block>_s<sparsity>_float.onnx   every descendant, float32
    <block>_s<sparsity>_int8.onnx    its int8 version (QDQ), when calibrated
    profile_onnxruntime.json         OnnxProfile: latencies, bytes, int8 accuracy drops

ONNX files are protobuf (no pickles, no code). The manifest records the block store's
fingerprint and weights digest, so a folder exported from other weights is refused as
stale instead of served. A store without this folder still loads and serves in PyTorch
(and ONNX Runtime exports float sessions in memory). The folder is written under a
temporary name and exchanged in one step (:func:`~legodnn.blockmanager.atomic.exchange_paths`);
a path that holds anything but an ONNX folder legodnn wrote is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..blockmanager.atomic import (
    exchange_paths,
    remove_stale_temps,
    temp_path,
    write_bytes_atomic,
    write_text_atomic,
)
from ..blockmanager.store import BlockStore, read_json_or_none, sparsity_tag
from ..errors import CorruptedStoreError, NotOursError, StaleProfileError, StoreError
from ..validation import PRECISIONS as VALID_PRECISIONS
from ..version import __version__
from .segments import FramePlan

__all__ = ["ONNX_DIR", "PRECISIONS", "OnnxFile", "OnnxManifest", "OnnxStore", "OnnxStoreWriter", "onnx_file_name"]

ONNX_DIR = "onnx"
FORMAT = "legodnn-onnx"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROFILE = "profile_onnxruntime.json"
PRECISIONS = VALID_PRECISIONS  # one definition, in validation
_FILE = re.compile(r"^[A-Za-z0-9_.+-]+\.onnx$")


def onnx_file_name(block: str, sparsity: float, precision: str) -> str:
    return f"{block}_s{sparsity_tag(sparsity)}_{precision}.onnx"


@dataclass(frozen=True)
class OnnxFile:
    """One ONNX model of the folder: what it is, its file, hash and weight bytes.

    ``bytes`` counts the initializers (weights, scales, zero points) as stored: int8
    weights one byte each. It is what the model costs in memory once loaded, the unit of
    the memory budget.
    """

    name: str  # a segment's name, or the block name
    sparsity: float  # -1 for a segment
    precision: str
    file: str
    sha256: str
    bytes: int

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "sparsity": self.sparsity, "precision": self.precision, "file": self.file,
                "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "OnnxFile":
        f = cls(str(d["name"]), float(d["sparsity"]), str(d["precision"]), str(d["file"]), str(d["sha256"]),
                int(d["bytes"]))
        if not _FILE.match(f.file) or f.file.startswith("."):
            raise CorruptedStoreError(f"ONNX manifest names file {f.file!r}, not a plain .onnx name; export again")
        if f.precision not in PRECISIONS:
            raise CorruptedStoreError(f"ONNX manifest has precision {f.precision!r}; export again")
        return f


@dataclass(frozen=True)
class OnnxManifest:
    """What an ONNX folder holds and which block store it was made from."""

    fingerprint: str
    weights_digest: str
    model_input_size: Tuple[int, ...]
    opset: int
    plan: FramePlan
    files: Tuple[OnnxFile, ...]
    calibration: Mapping[str, Any] = field(default_factory=dict)  # how the int8 versions were calibrated
    legodnn_version: str = __version__

    @property
    def precisions(self) -> Tuple[str, ...]:
        have = {f.precision for f in self.files if f.sparsity >= 0}
        return tuple(p for p in PRECISIONS if p in have)

    def find(self, name: str, sparsity: float = -1.0, precision: str = "float") -> Optional[OnnxFile]:
        for f in self.files:
            if f.name == name and f.precision == precision and abs(f.sparsity - sparsity) < 1e-9:
                return f
        return None

    def to_json(self) -> Dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "legodnn_version": self.legodnn_version,
                "fingerprint": self.fingerprint, "weights_digest": self.weights_digest,
                "model_input_size": list(self.model_input_size), "opset": self.opset, "plan": self.plan.to_json(),
                "files": [f.to_json() for f in self.files], "calibration": dict(self.calibration)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "OnnxManifest":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT or d.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{where} is not a {FORMAT} version {FORMAT_VERSION} manifest; export the ONNX "
                             "files again with export_onnx_store(...)")
        try:
            return cls(str(d["fingerprint"]), str(d["weights_digest"]), tuple(int(x) for x in d["model_input_size"]),
                       int(d["opset"]), FramePlan.from_json(d["plan"]),
                       tuple(OnnxFile.from_json(f) for f in d["files"]), dict(d.get("calibration", {})),
                       str(d.get("legodnn_version", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptedStoreError(f"{where} is malformed ({type(exc).__name__}: {exc}); export again") from exc


def _read_manifest(folder: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def default_onnx_dir(store: BlockStore) -> Path:
    return store.root / ONNX_DIR


def claim_onnx_dir(target: Path) -> Path:
    """Check legodnn may write an ONNX folder at ``target``: missing, empty, or one it wrote.

    The parent must exist (legodnn creates one folder, not a tree); a folder with other
    files, a file or a link is refused, never replaced.
    """
    target = Path(target).absolute()
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise NotOursError(f"onnx_dir {str(target)!r} is a file or a link; legodnn does not replace it. Choose "
                           "a new folder path")
    if target.is_dir() and any(target.iterdir()) and _read_manifest(target) is None:
        raise NotOursError(f"onnx_dir {str(target)!r} holds files legodnn did not write; choose a new or empty "
                           "folder")
    if not target.parent.is_dir():
        raise StoreError(f"the folder above onnx_dir {str(target)!r} does not exist; create it first")
    return target


class OnnxStoreWriter:
    """Writes a new ONNX folder under a temporary sibling name; :meth:`commit` puts it in place."""

    def __init__(self, target: Path) -> None:
        self.target = claim_onnx_dir(target)
        try:
            remove_stale_temps(self.target.parent, self.target.name)
        except OSError:
            pass
        self.tmp = temp_path(self.target, "writing")
        self.tmp.mkdir()

    def write(self, file: str, data: bytes) -> str:
        """Write one file into the new folder; returns its SHA-256."""
        write_bytes_atomic(self.tmp / file, data)
        return hashlib.sha256(data).hexdigest()

    def commit(self, manifest: OnnxManifest) -> "OnnxStore":
        write_text_atomic(self.tmp / MANIFEST, json.dumps(manifest.to_json(), indent=1))
        claim_onnx_dir(self.target)  # nothing foreign appeared meanwhile
        old = exchange_paths(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return OnnxStore(self.target)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class OnnxStore:
    """An ONNX folder opened for reading; every file's SHA-256 is checked when it is read."""

    def __init__(self, folder: Union[str, Path]) -> None:
        self.root = Path(folder)
        raw = _read_manifest(self.root)
        if raw is None:
            raise StoreError(f"{str(self.root)!r} holds no ONNX export (no {MANIFEST} of format {FORMAT}); run "
                             "legodnn.onnxrt.export_onnx_store(blocks_dir, model) first")
        self.manifest = OnnxManifest.from_json(raw, str(self.root / MANIFEST))

    @classmethod
    def for_store(cls, store: BlockStore, folder: Optional[Union[str, Path]] = None) -> Optional["OnnxStore"]:
        """The ONNX folder of ``store`` (default ``<store>/onnx``), None when there is none;
        one exported from other weights is refused (:class:`StaleProfileError`)."""
        path = Path(folder) if folder is not None else default_onnx_dir(store)
        if folder is None and not (path / MANIFEST).is_file():
            return None
        onnx_store = cls(path)
        onnx_store.check_matches(store)
        return onnx_store

    def check_matches(self, store: BlockStore) -> None:
        m = self.manifest
        if m.fingerprint != store.fingerprint or m.weights_digest != store.weights_digest:
            raise StaleProfileError(
                f"the ONNX files in {str(self.root)!r} were exported from other weights than {str(store.root)!r} "
                "holds now (retrained or re-extracted since); run export_onnx_store(...) again")

    def read(self, ref: OnnxFile) -> bytes:
        path = self.root / ref.file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CorruptedStoreError(f"cannot read {path}: {exc}; export the ONNX files again") from exc
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise CorruptedStoreError(f"{path} does not match the hash in its manifest; export the ONNX files again")
        return data

    def descendants(self, precision: str) -> List[OnnxFile]:
        return [f for f in self.manifest.files if f.sparsity >= 0 and f.precision == precision]

    # -- the profile beside the files ---------------------------------------------------
    def read_profile(self) -> Optional[Dict[str, Any]]:
        return read_json_or_none(self.root / PROFILE)

    def write_profile(self, data: Mapping[str, Any]) -> Path:
        if _read_manifest(self.root) is None:  # still ours
            raise NotOursError(f"{str(self.root)!r} is no longer an ONNX folder legodnn wrote; export again")
        path = self.root / PROFILE
        write_text_atomic(path, json.dumps(dict(data), indent=1))
        return path
