"""LatencyEstimator: time every descendant block on this device and estimate composed models.

Each descendant is timed alone on its real input shape (warm-up, then the median of
``test_sample_num`` runs, CUDA synchronized); the frame is timed alone too, with every
block replaced by its recorded output. A composed model is estimated as frame + its blocks, optionally calibrated
(``a * blocks + b``) on measured compositions, and the estimator reports its own error
on other random compositions it measures.
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..blockmanager.auto_block_manager import AutoBlockManager
from ..blockmanager.store import atomic_write_text
from ..errors import StoreError
from ..version import __version__

__all__ = ["BlockLatency", "LatencyProfile", "LatencyEstimator", "LATENCY_JSON", "device_description", "time_median"]

LATENCY_JSON = "latency_profile.json"


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


def time_median(fn: Callable[[], Any], runs: int, device: str = "cpu", warmup: Optional[int] = None) -> float:
    """Median wall time of ``fn()`` in seconds, after warm-up, synchronizing CUDA."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup if warmup is not None else max(3, runs // 10)):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    offset_s: float = 0.0
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
        bad = [b for b in profile.blocks if not np.isfinite(b.latency_s) or b.latency_s < 0]
        if bad or not np.isfinite(profile.frame_latency_s):
            raise StoreError(f"{path} holds invalid latencies (NaN, infinite or negative); profile latency again")
        return profile


def _fit(x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    a = np.vstack([x, np.ones_like(x)]).T
    (scale, offset), *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(scale), float(offset)


def _choose_calibration(sums: np.ndarray, measured: np.ndarray, frame: float) -> Tuple[float, float]:
    """(scale, offset) fitted to ``measured - frame = scale * sums + offset``, kept only when
    it beats the plain sum in leave-one-out cross-validation (noise must not be fitted)."""
    if len(sums) < 4:
        return 1.0, 0.0
    raw_err, cal_err = [], []
    for i in range(len(sums)):
        keep = np.arange(len(sums)) != i
        scale, offset = _fit(sums[keep], measured[keep] - frame)
        cal_err.append(abs(frame + offset + scale * sums[i] - measured[i]) / measured[i])
        raw_err.append(abs(frame + sums[i] - measured[i]) / measured[i])
    if np.mean(cal_err) >= np.mean(raw_err):
        return 1.0, 0.0
    return _fit(sums, measured - frame)


class _Recorded(nn.Module):
    """Stands in for a block: returns the outputs recorded from the teacher, in call order."""

    def __init__(self, outputs: List[torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return out


class LatencyEstimator:
    """Profile block latencies on this device (``backend`` "torch" or "onnxruntime").

    ``num_threads`` fixes the CPU thread count for the measurement (default: the current
    torch setting); the profile records it, and the optimizer warns when it differs.
    """

    def __init__(
        self,
        block_manager: AutoBlockManager,
        model_manager: Any,
        trained_blocks_dir: str,
        test_sample_num: int,
        model_input_size: Sequence[int],
        device: str = "cpu",
        backend: str = "torch",
        num_threads: Optional[int] = None,
        verbose: bool = True,
    ) -> None:
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
        if backend == "onnxruntime" and torch.device(device).type != "cpu":
            raise ValueError("the onnxruntime backend measures on the CPU; use device='cpu'")
        if test_sample_num < 1:
            raise ValueError(f"test_sample_num must be at least 1, got {test_sample_num}")
        self.block_manager = block_manager
        self.model_manager = model_manager
        self.trained_dir = Path(trained_blocks_dir)
        self.store = block_manager.open_store(str(trained_blocks_dir))
        self.runs = int(test_sample_num)
        self.model_input_size = tuple(model_input_size)
        self.device = device
        self.backend = backend
        self.num_threads = num_threads or torch.get_num_threads()
        self.verbose = verbose

    # -- timing one module --------------------------------------------------------
    def _runner(self, module: nn.Module, input_shape: Sequence[int]) -> Callable[[], Any]:
        module = module.to(self.device).eval()
        shape = (self.model_input_size[0],) + tuple(input_shape[1:])
        if self.backend == "onnxruntime":
            from .onnx_export import OnnxRunner, export_onnx

            runner = OnnxRunner(export_onnx(module, shape), num_threads=self.num_threads)
            x_np = np.random.rand(*shape).astype(np.float32)
            return lambda: runner.run_numpy(x_np)
        x = torch.rand(shape, device=self.device)

        def run() -> Any:
            with torch.no_grad():
                return module(x)

        return run

    def time_module(self, module: nn.Module, input_shape: Sequence[int]) -> float:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            return time_median(self._runner(module, input_shape), self.runs, self.device)
        finally:
            torch.set_num_threads(previous)

    def _composed(self, config: Dict[str, float], cache: Dict[Tuple[str, float], nn.Module]) -> nn.Module:
        bm = self.block_manager
        blocks = {}
        for name, s in config.items():
            if s > 0:
                if (name, s) not in cache:
                    cache[(name, s)] = bm.load_descendant(self.store, name, s)
                blocks[name] = cache[(name, s)]
        return bm.compose(blocks)

    # -- profile ----------------------------------------------------------------------
    def profile_all_blocks(
        self, num_compositions: int = 20, calibrate: bool = True, seed: int = 0
    ) -> LatencyProfile:
        """Time every descendant and the teacher, then calibrate and validate on
        ``num_compositions`` random compositions each (0 skips both)."""
        bm = self.block_manager
        model_input = (1,) + self.model_input_size[1:]
        jobs = [(b, s) for b in bm.blocks for s in bm.block_sparsity]
        bar = tqdm(jobs, desc=f"block latency ({self.backend})", disable=not self.verbose, leave=False)
        cache: Dict[Tuple[str, float], nn.Module] = {}
        rows = []
        for spec, s in bar:
            module = bm.get_block(spec.name) if s == 0 else bm.load_descendant(self.store, spec.name, s)
            if s > 0:
                cache[(spec.name, s)] = module
            rows.append(BlockLatency(spec.name, s, self.time_module(module, spec.input_shape)))
        teacher = self.time_module(bm.teacher, self.model_input_size)
        frame = self._frame_latency(teacher, rows)
        profile = LatencyProfile(
            device=device_description(self.device),
            backend=self.backend,
            num_threads=self.num_threads,
            torch_version=torch.__version__,
            legodnn_version=__version__,
            fingerprint=bm.fingerprint,
            model_input_size=tuple(self.model_input_size),
            teacher_latency_s=teacher,
            frame_latency_s=frame,
            blocks=tuple(rows),
        )
        if num_compositions > 0:
            profile = self._calibrate_and_validate(profile, num_compositions, calibrate, seed, cache)
        profile.save(self.trained_dir)
        if self.verbose and profile.validation:
            v = profile.validation
            tqdm.write(
                f"latency estimate ({self.backend}, {self.num_threads} thread(s)): "
                f"{100 * v['within_10pct']:.0f}% of {v['n']} random compositions within +-10% "
                f"(uncalibrated {100 * v['within_10pct_raw']:.0f}%), mean abs error {100 * v['mean_abs_rel_error']:.1f}%"
            )
        return profile

    def _frame_latency(self, teacher: float, rows: Sequence[BlockLatency]) -> float:
        """Time the frame alone, every block replaced by a module that returns its recorded
        output; where that is not possible (ONNX Runtime), the teacher minus its blocks."""
        bm = self.block_manager
        if self.backend == "torch":
            outputs: Dict[str, List[torch.Tensor]] = {n: [] for n in bm.block_names}
            hooks = [
                bm.get_block(n).register_forward_hook(lambda m, a, out, n=n: outputs[n].append(out))
                for n in bm.block_names
            ]
            try:
                with torch.no_grad():
                    bm.teacher.eval()(torch.rand(self.model_input_size, device=self.device))
            finally:
                for h in hooks:
                    h.remove()
            frame_only = bm.compose({n: _Recorded(outs) for n, outs in outputs.items()})
            return self.time_module(frame_only, self.model_input_size)
        return max(0.0, teacher - sum(r.latency_s for r in rows if r.sparsity == 0))

    def measure(self, config: Dict[str, float], cache: Optional[Dict[Tuple[str, float], nn.Module]] = None) -> float:
        """Measured latency of one composed model (seconds)."""
        return self.time_module(self._composed(config, cache if cache is not None else {}), self.model_input_size)

    def _random_configs(self, n: int, rng: random.Random) -> List[Dict[str, float]]:
        bm = self.block_manager
        return [{b: rng.choice(bm.block_sparsity) for b in bm.block_names} for _ in range(n)]

    def _calibrate_and_validate(
        self, profile: LatencyProfile, n: int, calibrate: bool, seed: int, cache: Dict[Tuple[str, float], nn.Module]
    ) -> LatencyProfile:
        rng = random.Random(seed)
        table = profile.table()
        fit = self._random_configs(n, rng) if calibrate else []
        test = self._random_configs(n, rng)
        total = fit + test
        bar = tqdm(total, desc="composed-model latency", disable=not self.verbose, leave=False)
        measured = [self.measure(cfg, cache) for cfg in bar]
        sums = [sum(table[b][s] for b, s in cfg.items()) for cfg in total]
        scale, offset = 1.0, 0.0
        if calibrate:
            x = np.array(sums[: len(fit)])
            y = np.array(measured[: len(fit)])
            scale, offset = _choose_calibration(x, y, profile.frame_latency_s)
        test_sums, test_measured = sums[len(fit):], measured[len(fit):]
        raw = [profile.frame_latency_s + s for s in test_sums]
        cal = [profile.frame_latency_s + offset + scale * s for s in test_sums]
        rel_raw = [(e - m) / m for e, m in zip(raw, test_measured)]
        rel_cal = [(e - m) / m for e, m in zip(cal, test_measured)]
        validation = {
            "n": len(test),
            "compositions": [[cfg[b] for b in self.block_manager.block_names] for cfg in test],
            "measured_s": test_measured,
            "estimated_s": cal,
            "estimated_raw_s": raw,
            "within_10pct": float(np.mean([abs(r) <= 0.10 for r in rel_cal])),
            "within_10pct_raw": float(np.mean([abs(r) <= 0.10 for r in rel_raw])),
            "mean_abs_rel_error": float(np.mean(np.abs(rel_cal))),
            "mean_abs_rel_error_raw": float(np.mean(np.abs(rel_raw))),
        }
        return LatencyProfile(**{**asdict(profile), "blocks": profile.blocks, "model_input_size": profile.model_input_size,
                                 "scale": float(scale), "offset_s": float(offset), "validation": validation})
