"""Accuracy and size profiles of blocks: what the optimizer reads, as JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Tuple, Union

from ..blockmanager.store import BLOCK_PROFILE, BLOCK_PROFILE_CSV, atomic_write_text
from ..errors import InvalidProfileError, StoreError

__all__ = ["BlockProfile", "ModelProfile", "PROFILE_JSON", "PROFILE_CSV"]

PROFILE_JSON = BLOCK_PROFILE
PROFILE_CSV = BLOCK_PROFILE_CSV


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
    weights_digest: str = ""  # the store's weights this profile measured (BlockStore.weights_digest)

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
            profile = cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"cannot read {path}: {exc}; profile the blocks again") from exc
        problem = _profile_problem(profile)
        if problem:
            raise InvalidProfileError(f"{path} holds invalid numbers: {problem}; profile the blocks again")
        return profile


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def _profile_problem(profile: ModelProfile) -> str:
    """What is wrong with a loaded profile ("" if nothing).

    The optimizer trusts these numbers: a NaN drop counts as free (``max(0.0, nan)`` is
    0.0), so the block would be pruned "at no cost"; a negative size makes a tiny
    memory budget feasible. Such a file was edited by hand or written by a broken
    version. A negative drop is kept: a descendant may score above the teacher on a
    finite test set, and the optimizer treats that as no drop. Each drop must still be
    the teacher's metric minus the descendant's, as the profiler writes it.
    """
    if not _is_number(profile.teacher_metric):
        return f"teacher_metric is {profile.teacher_metric!r}"
    for name in ("teacher_size_bytes", "frame_size_bytes", "teacher_flops", "teacher_params", "num_test_samples"):
        value = getattr(profile, name)
        if not _is_number(value) or value < 0:
            return f"{name} is {value!r} (it must be a non-negative number)"
    if not profile.blocks:
        return "no blocks"
    for p in profile.blocks:
        where = f"{p.block} at sparsity {p.sparsity!r}"
        if not _is_number(p.sparsity) or not 0 <= p.sparsity < 1:
            return f"{where}: the sparsity is not in [0, 1)"
        if not (_is_number(p.metric_drop) and _is_number(p.metric)):
            return f"{where}: metric {p.metric!r}, drop {p.metric_drop!r} (NaN or infinite)"
        tolerance = 1e-6 * max(1.0, abs(profile.teacher_metric))
        if abs(profile.teacher_metric - p.metric - p.metric_drop) > tolerance:
            return (f"{where}: drop {p.metric_drop!r} is not the teacher's {profile.teacher_metric!r} minus the "
                    f"descendant's {p.metric!r}")
        for name in ("size_bytes", "flops", "params"):
            value = getattr(p, name)
            if not _is_number(value) or value < 0:
                return f"{where}: {name} is {value!r} (it must be a non-negative number)"
    levels = {name: sorted(t) for name, t in profile.table().items()}
    first = next(iter(levels.values()))
    if 0.0 not in first or any(v != first for v in levels.values()):
        return f"the blocks were profiled at different sparsities, or without sparsity 0 ({levels})"
    if len(profile.blocks) != sum(len(v) for v in levels.values()):
        return "a (block, sparsity) appears twice"
    return ""
