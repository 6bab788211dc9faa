"""Accuracy and size profiles of blocks: what the optimizer reads, as JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Tuple, Union

from ..blockmanager.store import atomic_write_text
from ..errors import StoreError

__all__ = ["BlockProfile", "ModelProfile", "PROFILE_JSON", "PROFILE_CSV"]

PROFILE_JSON = "block_profile.json"
PROFILE_CSV = "block_profile.csv"


@dataclass(frozen=True)
class BlockProfile:
    """One descendant in the teacher: the metric drop it causes alone, and its cost."""

    block: str
    sparsity: float
    metric_drop: float  # teacher metric minus the metric with this descendant in place
    metric: float
    size_bytes: int
    flops: int  # 2 x multiply-adds of the block in one forward of the model (all its calls)
    params: int


@dataclass(frozen=True)
class ModelProfile:
    """All block profiles of one trained blocks directory, with the teacher and frame numbers."""

    metric_name: str
    teacher_metric: float
    teacher_size_bytes: int
    teacher_flops: int
    teacher_params: int
    frame_size_bytes: int
    frame_flops: int
    frame_params: int
    fingerprint: str
    num_test_samples: int
    blocks: Tuple[BlockProfile, ...]

    def table(self) -> Dict[str, Dict[float, BlockProfile]]:
        out: Dict[str, Dict[float, BlockProfile]] = {}
        for p in self.blocks:
            out.setdefault(p.block, {})[p.sparsity] = p
        return out

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["blocks"] = [asdict(b) for b in self.blocks]
        return d

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ModelProfile":
        fields = {k: v for k, v in d.items() if k != "blocks"}
        return cls(blocks=tuple(BlockProfile(**b) for b in d["blocks"]), **fields)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        m = self.metric_name
        w.writerow(["block", "sparsity", f"{m}_drop", m, "size_bytes", "flops", "params"])
        for p in self.blocks:
            w.writerow([p.block, p.sparsity, f"{p.metric_drop:.6f}", f"{p.metric:.6f}", p.size_bytes, p.flops, p.params])
        return buf.getvalue()

    def save(self, directory: Union[str, Path]) -> None:
        directory = Path(directory)
        atomic_write_text(directory / PROFILE_CSV, self.to_csv())
        atomic_write_text(directory / PROFILE_JSON, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "ModelProfile":
        path = Path(directory) / PROFILE_JSON
        if not path.is_file():
            raise StoreError(f"{path} is missing: run BlockProfiler(...).profile_all_blocks() first")
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"cannot read {path}: {exc}; profile the blocks again") from exc
