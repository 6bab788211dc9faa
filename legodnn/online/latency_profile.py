"""The latency profile of a store on one device: what the optimizer reads, and its checks.

Apart from :class:`~legodnn.online.latency.LatencyEstimator` (which measures it) so
that the device path imports it without the estimator's dependencies.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from ..blockmanager.store import LATENCY_PROFILE, atomic_write_text
from ..errors import InvalidProfileError, StoreError

__all__ = ["BlockLatency", "LatencyProfile", "LATENCY_JSON", "device_description"]

LATENCY_JSON = LATENCY_PROFILE


def device_description(device: str) -> str:
    """A human-readable name of the device the numbers belong to."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{name}"


@dataclass(frozen=True)
class BlockLatency:
    block: str
    sparsity: float
    latency_s: float


@dataclass(frozen=True)
class LatencyProfile:
    """Per-descendant latencies on one device, backend and thread count."""

    device: str
    backend: str
    num_threads: int
    torch_version: str
    legodnn_version: str
    fingerprint: str
    model_input_size: Tuple[int, ...]
    teacher_latency_s: float
    frame_latency_s: float
    blocks: Tuple[BlockLatency, ...]
    scale: float = 1.0  # calibration: estimate = frame + offset + scale * sum(blocks)
    method: str = "isolated"  # how blocks were timed: "isolated" or "in_situ"
    offset_s: float = 0.0
    # the descendants' architectures it timed (BlockStore.architecture_digest): retraining keeps it valid
    architecture_digest: str = ""
    validation: Dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def table(self) -> Dict[str, Dict[float, float]]:
        out: Dict[str, Dict[float, float]] = {}
        for b in self.blocks:
            out.setdefault(b.block, {})[b.sparsity] = b.latency_s
        return out

    def block_latencies(self, block: str) -> Dict[float, float]:
        """Calibrated per-block latencies (what the optimizer adds up)."""
        return {s: self.scale * t for s, t in self.table()[block].items()}

    @property
    def fixed_latency_s(self) -> float:
        """The calibrated latency outside blocks."""
        return self.frame_latency_s + self.offset_s

    def estimate(self, config: Dict[str, float]) -> float:
        table = self.table()
        return self.fixed_latency_s + self.scale * sum(table[b][s] for b, s in config.items())

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["model_input_size"] = list(self.model_input_size)
        return d

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "LatencyProfile":
        d = dict(d)
        d["blocks"] = tuple(BlockLatency(**b) for b in d["blocks"])
        d["model_input_size"] = tuple(d["model_input_size"])
        return cls(**d)

    def save(self, directory: Path) -> None:
        atomic_write_text(Path(directory) / LATENCY_JSON, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, directory: Path) -> "LatencyProfile":
        path = Path(directory) / LATENCY_JSON
        if not path.is_file():
            raise StoreError(f"{path} is missing: run LatencyEstimator(...).profile_all_blocks() on the device first")
        try:
            profile = cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"cannot read {path}: {exc}; profile latency again") from exc
        problem = _profile_problem(profile)
        if problem:
            raise InvalidProfileError(f"{path} holds invalid latencies: {problem}; profile latency again")
        return profile


def _profile_problem(profile: LatencyProfile) -> str:
    """What is wrong with a loaded latency profile ("" if nothing).

    A NaN or negative latency, or a calibration that makes any estimate negative (a
    non-positive scale, an offset below minus the frame time), would let the optimizer
    call a configuration free, or make every latency budget infeasible; such a file
    was edited by hand or written by a broken version, and is measured again.
    """
    def bad(x: Any) -> bool:
        return isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0

    wrong = [f"{b.block}@{b.sparsity:g}: {b.latency_s!r}" for b in profile.blocks if bad(b.latency_s)]
    if wrong:
        return f"NaN, infinite or negative block latencies ({', '.join(wrong[:5])})"
    for name in ("frame_latency_s", "teacher_latency_s"):
        if bad(getattr(profile, name)):
            return f"{name} is {getattr(profile, name)!r} (NaN, infinite or negative)"
    if not profile.blocks:
        return "no blocks"
    table = profile.table()
    levels = {name: sorted(t) for name, t in table.items()}
    first = next(iter(levels.values()))
    if 0.0 not in first or any(v != first for v in levels.values()):
        return f"blocks timed at different sparsities ({levels})"
    if not (isinstance(profile.scale, (int, float)) and math.isfinite(profile.scale) and profile.scale > 0):
        return f"calibration scale {profile.scale!r} (it must be a positive number)"
    if not (isinstance(profile.offset_s, (int, float)) and math.isfinite(profile.offset_s)
            and profile.frame_latency_s + profile.offset_s >= 0):
        return (f"calibration offset {profile.offset_s!r} s (frame {profile.frame_latency_s!r} s plus offset must be "
                "a non-negative time)")
    if isinstance(profile.num_threads, bool) or not isinstance(profile.num_threads, int) or profile.num_threads < 1:
        return f"num_threads {profile.num_threads!r}"
    return ""
