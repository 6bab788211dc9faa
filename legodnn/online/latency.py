"""LatencyEstimator: time every descendant block on this device and estimate composed models.

Each descendant is timed alone on its real input shape (warm-up, then the median of
``test_sample_num`` runs, CUDA synchronized); the frame is timed alone too, with every
block replaced by its recorded output. All of them are timed interleaved, pass after
pass, so that the machine's slow spells fall on all alike. A composed model is estimated as frame + its blocks, optionally calibrated
(``a * blocks + b``, with ``a`` positive and ``frame + b`` non-negative, so no estimate
can come out negative) on measured compositions, and the estimator reports its own
error on other random compositions it measures.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..blockmanager.auto_block_manager import AutoBlockManager
from ..errors import InvalidArgumentError
from ..validation import (
    check_choice,
    check_device,
    check_input_size,
    check_int,
    warn_if_ignored_manager,
)
from ..version import __version__
from .latency_profile import LATENCY_JSON, BlockLatency, LatencyProfile, device_description

__all__ = ["BlockLatency", "LatencyProfile", "LatencyEstimator", "LATENCY_JSON", "device_description", "time_interleaved",
           "time_median"]

def time_median(fn: Callable[[], Any], runs: int, device: str = "cpu", warmup: Optional[int] = None) -> float:
    """Median wall time of ``fn()`` in seconds, after warm-up, synchronizing CUDA."""
    return time_interleaved([fn], runs, device, rounds=1, warmup=warmup)[0]


def time_interleaved(
    fns: Sequence[Callable[[], Any]],
    runs: int,
    device: str = "cpu",
    rounds: int = 5,
    warmup: Optional[int] = None,
) -> List[float]:
    """Median wall time in seconds of each of ``fns``, its ``runs`` runs spread over ``rounds``
    passes through all of them.

    Timing the candidates in turn, pass after pass (in a new order each pass), spreads a
    slow spell of the machine (another process, a frequency change) over all of them
    instead of inflating whichever one was running; the estimate and the measurement it
    is checked against then see the same machine. Each function is warmed up first; CUDA
    is synchronized around each run.
    """
    runs = check_int("runs", runs, minimum=1)
    rounds = check_int("rounds", rounds, minimum=1)
    warmup = check_int("warmup", warmup, minimum=0, allow_none=True)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    rounds = max(1, min(rounds, runs))
    per_round = [runs // rounds + (r < runs % rounds) for r in range(rounds)]
    for fn in fns:
        for _ in range(warmup if warmup is not None else max(3, runs // 10)):
            fn()
    sync()
    times: List[List[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    shuffle = random.Random(0).shuffle
    for r, n in enumerate(per_round):
        if r:  # a new order each pass: no candidate always runs after the same one
            shuffle(order)
        for i in order:
            fn, out = fns[i], times[i]
            for _ in range(n):
                start = time.perf_counter()
                fn()
                sync()
                out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


#: the smallest calibration scale: a composition does not run its blocks ten times faster
#: than they were timed; a fit that wants less is fitting a loaded machine's noise
MIN_SCALE = 0.1


def _fit(x: np.ndarray, y: np.ndarray, frame: float) -> Tuple[float, float]:
    """Least-squares ``(scale, offset)`` for ``y = scale * x + offset`` subject to
    ``scale >= MIN_SCALE`` and ``offset >= -frame`` (the time outside blocks stays
    non-negative), so that every estimate ``frame + offset + scale * x`` is positive.

    Unconstrained least squares fitted ``scale = -1.2`` on a busy machine, which made
    the fastest configuration take -0.12 s. The constraints are bounds on each
    parameter, so the constrained optimum is the unconstrained one when that is
    feasible, else the best point on one of the two bounding edges (each a 1-D least
    squares, clipped to its bound); all three are tried and the best feasible kept.
    """
    def sse(scale: float, offset: float) -> float:
        return float(np.sum((scale * x + offset - y) ** 2))

    candidates = []
    if len(x) >= 2 and np.ptp(x) > 0:
        a = np.vstack([x, np.ones_like(x)]).T
        (scale, offset), *_ = np.linalg.lstsq(a, y, rcond=None)
        candidates.append((float(scale), float(offset)))
    candidates.append((MIN_SCALE, max(-frame, float(np.mean(y - MIN_SCALE * x)))))  # edge scale = MIN_SCALE
    xx = float(np.dot(x, x))
    if xx > 0:  # edge offset = -frame
        candidates.append((max(MIN_SCALE, float(np.dot(x, y + frame)) / xx), -frame))
    feasible = [(s, o) for s, o in candidates if s >= MIN_SCALE and o >= -frame and math.isfinite(s + o)]
    return min(feasible, key=lambda c: sse(*c))


def _choose_calibration(sums: np.ndarray, measured: np.ndarray, frame: float,
                        min_sum: float = 0.0) -> Tuple[float, float]:
    """(scale, offset) fitted to ``measured - frame = scale * sums + offset`` (constrained,
    see :func:`_fit`), kept only when it beats the plain sum in leave-one-out
    cross-validation (held-out compositions; noise must not be fitted) and keeps the
    estimate of the fastest configuration (``min_sum`` of block time) positive. Else
    ``(1.0, 0.0)``: the plain sum."""
    if len(sums) < 4:
        return 1.0, 0.0
    raw_err, cal_err = [], []
    for i in range(len(sums)):
        keep = np.arange(len(sums)) != i
        scale, offset = _fit(sums[keep], measured[keep] - frame, frame)
        cal_err.append(abs(frame + offset + scale * sums[i] - measured[i]) / measured[i])
        raw_err.append(abs(frame + sums[i] - measured[i]) / measured[i])
    if np.mean(cal_err) >= np.mean(raw_err):
        return 1.0, 0.0
    scale, offset = _fit(sums, measured - frame, frame)
    if not frame + offset + scale * min_sum > 0:
        return 1.0, 0.0
    return scale, offset


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


class _Stopwatch(nn.Module):
    """Wraps a block inside a composed model and logs how long each call takes."""

    def __init__(
        self, block: nn.Module, key: Tuple[str, float], log: List[Tuple[Tuple[str, float], float]],
        sync: Optional[Callable[[], None]],
    ) -> None:
        super().__init__()
        self.block, self.key, self.log, self.sync = block, key, log, sync

    def forward(self, x: torch.Tensor) -> Any:
        if self.sync is not None:
            self.sync()
        start = time.perf_counter()
        out = self.block(x)
        if self.sync is not None:
            self.sync()
        self.log.append((self.key, time.perf_counter() - start))
        return out


class LatencyEstimator:
    """Profile block latencies on this device (``backend`` "torch" or "onnxruntime").

    ``num_threads`` fixes the CPU thread count for the measurement (default: the current
    torch setting); the profile records it, and the optimizer warns when it differs.
    ``rounds``: the passes over all modules that their ``test_sample_num`` runs are
    spread over (1 times each module's runs back to back).

    ``method``: "in_situ" (the torch default) times each descendant inside composed
    models, where it runs after and before other blocks, as it will on the device;
    "isolated" (the only choice for ONNX Runtime) times each descendant alone, run after
    run, where its weights and activations stay in the CPU caches: on a CIFAR ResNet-18
    that underestimates composed models by 8-9% (``bench/bench_online.py``).

    Args:
        block_manager: the block manager of the model whose store is timed.
        model_manager: runs the model (``CommonModelManager()``).
        trained_blocks_dir: the store; ``latency_profile.json`` is written into it.
        test_sample_num: timed runs per descendant (the median counts).
        model_input_size: the input shape with its batch dim, as the device will serve.
        device: the device timed; CUDA runs are synchronized.
        backend: "torch" or "onnxruntime" (the ``onnx`` extra).
        num_threads: CPU threads during the measurement (default: torch's current setting).
        verbose: progress bars.
        rounds: passes the runs are spread over, in shuffled order.
        method: "auto", "in_situ" or "isolated" (above).
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
        rounds: int = 5,
        method: str = "auto",
    ) -> None:
        backend = check_choice("backend", backend, ("torch", "onnxruntime"))
        method = check_choice("method", method, ("auto", "in_situ", "isolated"))
        if method == "auto":
            method = "in_situ" if backend == "torch" else "isolated"
        if method == "in_situ" and backend != "torch":
            raise InvalidArgumentError(
                "in-situ timing needs the torch backend; use method='isolated' with onnxruntime")
        device = check_device("device", device)
        if backend == "onnxruntime" and torch.device(device).type != "cpu":
            raise InvalidArgumentError(f"the onnxruntime backend measures on the CPU, not {device!r}; use device='cpu'")
        test_sample_num = check_int("test_sample_num", test_sample_num, minimum=1,
                                    hint="pass the timed runs per module, e.g. test_sample_num=50")
        model_input_size = check_input_size("model_input_size", model_input_size)
        num_threads = check_int("num_threads", num_threads, minimum=1, allow_none=True,
                                hint="pass the CPU threads to time with, e.g. num_threads=4, or None for torch's setting")
        rounds = check_int("rounds", rounds, minimum=1, hint="pass e.g. rounds=5 (the default)")
        self.block_manager = block_manager
        warn_if_ignored_manager("model_manager", model_manager, block_manager)
        self.model_manager = model_manager
        self.trained_dir = Path(trained_blocks_dir)
        self.store = block_manager.open_store(str(trained_blocks_dir))
        self.runs = int(test_sample_num)
        self.model_input_size = tuple(model_input_size)
        self.device = device
        self.backend = backend
        self.num_threads = num_threads or torch.get_num_threads()
        self.verbose = verbose
        self.rounds = int(rounds)
        self.method = method

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
        """Median latency of one module on input of ``input_shape`` (batch from the model input)."""
        return self.time_modules([(module, input_shape)])[0]

    def time_modules(self, jobs: Sequence[Tuple[nn.Module, Sequence[int]]]) -> List[float]:
        """Median latency of each ``(module, input_shape)``, timed interleaved (see
        :func:`time_interleaved`) with this estimator's thread count."""
        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            runners = [self._runner(module, shape) for module, shape in jobs]
            return time_interleaved(runners, self.runs, self.device, rounds=self.rounds)
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
        ``num_compositions`` random compositions each (0 skips both).

        Args:
            num_compositions: random compositions measured to fit the calibration, and as
                many more to report the estimate's error (``profile.validation``).
            calibrate: fit ``frame + offset + scale x sum(blocks)`` (kept only where it
                beats the plain sum in cross-validation).
            seed: draws the random compositions.

        Returns:
            The latency profile, also written to ``latency_profile.json`` in the store.
        """
        num_compositions = check_int("num_compositions", num_compositions, minimum=0,
                                     hint="pass e.g. num_compositions=20, or 0 to skip calibration and validation")
        seed = check_int("seed", seed)
        bm = self.block_manager
        jobs = [(b, s) for b in bm.blocks for s in bm.block_sparsity]
        bar = tqdm(jobs, desc=f"load blocks ({self.backend})", disable=not self.verbose, leave=False)
        cache: Dict[Tuple[str, float], nn.Module] = {}
        for spec, s in bar:
            cache[(spec.name, s)] = bm.get_block(spec.name) if s == 0 else bm.load_descendant(self.store, spec.name, s)
        rng = random.Random(seed)
        fit = self._random_configs(num_compositions, rng) if calibrate and num_compositions > 0 else []
        test = self._random_configs(num_compositions, rng)
        bar = tqdm(fit + test, desc="compose models", disable=not self.verbose, leave=False)
        composed = [self._composed(cfg, cache) for cfg in bar]
        # the compositions are timed in the same interleaved pass as the blocks, so the
        # validation measures the estimator, not the machine's load between two passes
        if self.method == "in_situ":
            rows, frame, teacher, measured = self._time_in_situ(cache, composed)
        else:
            rows, frame, teacher, measured = self._time_isolated(jobs, cache, composed)
        profile = LatencyProfile(
            device=device_description(self.device),
            backend=self.backend,
            num_threads=self.num_threads,
            torch_version=torch.__version__,
            legodnn_version=__version__,
            fingerprint=bm.fingerprint,
            architecture_digest=self.store.architecture_digest,
            model_input_size=tuple(self.model_input_size),
            teacher_latency_s=teacher,
            frame_latency_s=frame,
            blocks=tuple(rows),
            method=self.method,
        )
        if test:
            profile = self._calibrate_and_validate(profile, fit, test, measured)
        profile.save(self.trained_dir)
        if self.verbose and profile.validation:
            v = profile.validation
            tqdm.write(
                f"latency estimate ({self.backend}, {self.num_threads} thread(s)): "
                f"{100 * v['within_10pct']:.0f}% of {v['n']} random compositions within +-10% "
                f"(uncalibrated {100 * v['within_10pct_raw']:.0f}%), mean abs error {100 * v['mean_abs_rel_error']:.1f}%"
            )
        return profile

    def _time_isolated(
        self, jobs: Sequence[Tuple[Any, float]], cache: Dict[Tuple[str, float], nn.Module],
        composed: Sequence[nn.Module],
    ) -> Tuple[List[BlockLatency], float, float, List[float]]:
        """Each descendant alone on random input of its recorded shape, then the teacher,
        the frame (every block replaced by its recorded output) and the ``composed`` models.

        A block that runs several times in one forward (a detector head's tower, once per
        FPN level) is timed on the input shape of each of its calls, and the times add up.
        """
        bm = self.block_manager
        shapes = bm.block_call_shapes()
        entries = [(spec, s, shape) for spec, s in jobs for shape in shapes[spec.name]]
        modules: List[Tuple[nn.Module, Sequence[int]]] = [(cache[(spec.name, s)], shape) for spec, s, shape in entries]
        modules.append((bm.teacher, self.model_input_size))
        frame_only = self._frame_module()
        if frame_only is not None:
            modules.append((frame_only, self.model_input_size))
        modules.extend((m, self.model_input_size) for m in composed)
        if self.verbose:
            tqdm.write(f"timing {len(modules)} modules, {self.runs} runs each ({self.backend})")
        times = self.time_modules(modules)
        per_block: Dict[Tuple[str, float], float] = {}
        for (spec, s, _), t in zip(entries, times):
            per_block[(spec.name, s)] = per_block.get((spec.name, s), 0.0) + t
        rows = [BlockLatency(spec.name, s, per_block[(spec.name, s)]) for spec, s in jobs]
        teacher = times[len(entries)]
        if frame_only is not None:
            frame = times[len(entries) + 1]
        else:  # ONNX Runtime cannot run the frame without its blocks
            frame = max(0.0, teacher - sum(r.latency_s for r in rows if r.sparsity == 0))
        return rows, frame, teacher, times[len(times) - len(composed):]

    def _time_in_situ(
        self, cache: Dict[Tuple[str, float], nn.Module], others: Sequence[nn.Module]
    ) -> Tuple[List[BlockLatency], float, float, List[float]]:
        """Every descendant timed where it runs: inside composed models.

        With ``K`` sparsities, ``K`` compositions put block ``b`` at sparsity
        ``(b + j) mod K`` in composition ``j``, so each descendant appears once, next to
        neighbours of every size. Each block is wrapped in a stopwatch; the frame's time
        is the whole run minus its blocks. Runs are interleaved with the teacher's and
        those of the ``others`` (models timed whole).
        """
        bm = self.block_manager
        sparsities, names = bm.block_sparsity, bm.block_names
        k = len(sparsities)
        log: List[Tuple[Tuple[str, float], float]] = []
        sync = torch.cuda.synchronize if torch.device(self.device).type == "cuda" else None
        composed = [
            bm.compose({n: _Stopwatch(cache[(n, sparsities[(b + j) % k])], (n, sparsities[(b + j) % k]), log, sync)
                        for b, n in enumerate(names)}).to(self.device).eval()
            for j in range(k)
        ]
        x = torch.rand(self.model_input_size, device=self.device)
        samples: Dict[Tuple[str, float], List[float]] = {key: [] for key in cache}
        frames: List[float] = []

        def run(model: nn.Module, keys: List[Tuple[str, float]]) -> Callable[[], None]:
            def once() -> None:
                log.clear()
                start = time.perf_counter()
                with torch.no_grad():
                    model(x)
                if sync is not None:
                    sync()
                total = time.perf_counter() - start
                # a block may run several times per forward (a detector head's tower runs
                # once per FPN level): its latency is the sum of its calls in the run; or
                # not at all (a keypoint head with no detection): then it costs 0 in the run
                per_run: Dict[Tuple[str, float], float] = {key: 0.0 for key in keys}
                for key, t in log:
                    per_run[key] = per_run.get(key, 0.0) + t
                for key, t in per_run.items():
                    samples[key].append(t)
                frames.append(total - sum(per_run.values()))

            return once

        whole = [self._runner(m, self.model_input_size) for m in [bm.teacher, *others]]
        if self.verbose:
            tqdm.write(f"timing {k} compositions in situ and {len(whole)} models, {self.runs} runs each")
        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        runners = whole + [run(m, [(n, sparsities[(b + j) % k]) for b, n in enumerate(names)])
                           for j, m in enumerate(composed)]
        try:
            for fn in runners:  # warm-up, whose samples are then dropped
                for _ in range(max(3, self.runs // 10)):
                    fn()
            frames.clear()
            for times in samples.values():
                times.clear()
            times = time_interleaved(runners, self.runs, self.device, rounds=self.rounds, warmup=0)
        finally:
            torch.set_num_threads(previous)
        rows = [BlockLatency(spec.name, s, statistics.median(samples[(spec.name, s)]))
                for spec in bm.blocks for s in sparsities]
        return rows, statistics.median(frames), times[0], times[1:len(whole)]

    def _frame_module(self) -> Optional[nn.Module]:
        """The frame alone (torch backend): every block replaced by a module that returns
        the output recorded from the teacher, so timing it times everything but the blocks."""
        if self.backend != "torch":
            return None
        bm = self.block_manager
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
        return bm.compose({n: _Recorded(outs) for n, outs in outputs.items()})

    def measure(self, config: Dict[str, float], cache: Optional[Dict[Tuple[str, float], nn.Module]] = None) -> float:
        """Measured latency of one composed model (seconds)."""
        return self.time_module(self._composed(config, cache if cache is not None else {}), self.model_input_size)

    def _random_configs(self, n: int, rng: random.Random) -> List[Dict[str, float]]:
        bm = self.block_manager
        return [{b: rng.choice(bm.block_sparsity) for b in bm.block_names} for _ in range(n)]

    def _calibrate_and_validate(
        self, profile: LatencyProfile, fit: List[Dict[str, float]], test: List[Dict[str, float]],
        measured: Sequence[float],
    ) -> LatencyProfile:
        """Fit the calibration on ``fit`` (kept only if it helps, see ``_choose_calibration``)
        and report the estimate's error on ``test``; ``measured`` holds both, fit first."""
        table = profile.table()
        total = fit + test
        sums = [sum(table[b][s] for b, s in cfg.items()) for cfg in total]
        scale, offset = 1.0, 0.0
        if fit:
            x = np.array(sums[: len(fit)])
            y = np.array(measured[: len(fit)])
            min_sum = sum(min(t.values()) for t in table.values())
            scale, offset = _choose_calibration(x, y, profile.frame_latency_s, min_sum)
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
