"""Profile the ONNX Runtime options of a store: latency and bytes of every (block,
sparsity, precision), and the accuracy drop of every int8 descendant.

Latency is measured in the context each session serves in, for both ways of serving
(:mod:`.serving`): **fused** (one session of the whole configuration, what serves once
it is built) and **chain** (one session per segment and block, right after a swap or
with ``fuse=False``). Every session is timed on its bound buffers, all of them and every
measured configuration interleaved one run per pass (a slow spell of a loaded machine
falls on many candidates once, and no session is timed hot from its own previous run).
The chain's options are also timed *in sequence*: whole chains that together hold every
option, each step timed where it runs, and the chain's own cost (the loop, the input and
output copies) measured the same way.

A chained configuration is estimated as the sum of what it runs, each part timed in
sequence: nothing to fit. Inside a fused graph a block's cost cannot be timed, so a fused
configuration is estimated as ``frame + offset + sum(scale[precision] * block alone)``,
fitted on measured random fused configurations the way
:class:`~legodnn.online.LatencyEstimator` calibrates PyTorch's (kept only where it beats
the plain sum in leave-one-out; scales within 0.1-10; the offset may be negative, since
each time alone includes per-session costs one graph does not pay, but no lower than
minus the frame and half the fastest configuration's block time, and the fastest
configuration's estimate stays positive). Both are checked on other random
configurations no fit saw (``validation``).

Bytes are the ONNX initializers (int8 weights one byte each). The int8 accuracy drop is
measured like the float one in :class:`~legodnn.offline.BlockProfiler`: the teacher's
metric minus the metric with that one descendant in place, here on the ONNX Runtime
chain.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..blockmanager.store import BlockStore
from ..errors import InvalidProfileError, StaleProfileError, StoreError
from ..online.latency import time_interleaved
from ..validation import check_int
from ..version import __version__
from .onnx_store import PRECISIONS, OnnxStore
from .serving import OrtBlockSwitcher

__all__ = ["OnnxOption", "OnnxProfile", "profile_onnx"]


@dataclass(frozen=True)
class OnnxOption:
    """One choice for one block under ONNX Runtime and what it costs.

    ``metric_drop`` is measured for int8 options (None where not measured: float options
    take the drop of ``block_profile.json``).
    """

    block: str
    sparsity: float
    precision: str
    latency_s: float  # alone on its bound buffers: its cost inside a fused session
    size_bytes: int
    metric: Optional[float] = None
    metric_drop: Optional[float] = None
    chain_latency_s: Optional[float] = None  # timed in sequence inside chains (None: older profile)


@dataclass(frozen=True)
class OnnxProfile:
    """Every ONNX Runtime option of one store on this machine (``profile_onnxruntime.json``)."""

    fingerprint: str
    weights_digest: str
    num_threads: int
    model_input_size: Tuple[int, ...]
    frame_latency_s: float
    frame_bytes: int
    teacher_latency_s: float
    metric_name: str
    teacher_metric: Optional[float]  # None: profiled without test data
    options: Tuple[OnnxOption, ...]
    legodnn_version: str = __version__
    validation: Dict[str, Any] = field(default_factory=dict, compare=False)
    chain_frame_latency_s: Optional[float] = None  # segments in sequence + the chain's own cost
    #: per serving mode ("fused", "chain"): {"scale": a, "offset_s": b} of frame + b + a * blocks
    calibration: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @property
    def precisions(self) -> Tuple[str, ...]:
        have = {o.precision for o in self.options}
        return tuple(p for p in PRECISIONS if p in have)

    def option(self, block: str, sparsity: float, precision: str) -> OnnxOption:
        for o in self.options:
            if o.block == block and o.precision == precision and abs(o.sparsity - sparsity) < 1e-9:
                return o
        raise StoreError(f"profile_onnxruntime.json has no {precision} option of {block} at sparsity {sparsity:g}; "
                         "run profile_onnx(...) again")

    def mode_costs(self, mode: str = "fused") -> Tuple[float, float, Dict[str, float]]:
        """(frame_s, offset_s, scale per precision) of serving ``mode``: a configuration is
        estimated as ``frame + offset + sum(scale[precision] * block latency of that mode)``."""
        if mode not in ("fused", "chain"):
            raise ValueError(f"mode must be 'fused' or 'chain', got {mode!r}")
        frame = self.frame_latency_s
        if mode == "chain" and self.chain_frame_latency_s is not None:
            frame = self.chain_frame_latency_s
        cal = self.calibration.get(mode, {})
        scales = {p: float(cal.get("scale", {}).get(p, 1.0)) for p in PRECISIONS}
        return frame, float(cal.get("offset_s", 0.0)), scales

    def block_latency(self, option: OnnxOption, mode: str = "fused") -> float:
        """The option's measured time in ``mode``'s context (uncalibrated)."""
        if mode == "chain" and option.chain_latency_s is not None:
            return option.chain_latency_s
        return option.latency_s

    def estimate(self, choice: Dict[str, Tuple[float, str]], mode: str = "fused", calibrated: bool = True) -> float:
        """Estimated latency of a configuration {block: (sparsity, precision)} served ``mode``."""
        frame, offset, scales = self.mode_costs(mode)
        if not calibrated:
            offset, scales = 0.0, {p: 1.0 for p in scales}
        return frame + offset + sum(scales[p] * self.block_latency(self.option(b, s, p), mode)
                                    for b, (s, p) in choice.items())

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["model_input_size"] = list(self.model_input_size)
        return d

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "OnnxProfile":
        d = dict(d)
        d["options"] = tuple(OnnxOption(**o) for o in d["options"])
        d["model_input_size"] = tuple(d["model_input_size"])
        return cls(**d)

    @classmethod
    def load(cls, onnx_store: OnnxStore, store: Optional[BlockStore] = None) -> Optional["OnnxProfile"]:
        """The profile beside the ONNX files (None when not profiled yet), checked."""
        raw = onnx_store.read_profile()
        if raw is None:
            return None
        try:
            profile = cls.from_json(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidProfileError(f"cannot read the ONNX Runtime profile in {onnx_store.root}: {exc}; profile "
                                      "again with profile_onnx(...)") from exc
        bad = [o for o in profile.options if not (math.isfinite(o.latency_s) and o.latency_s >= 0 and o.size_bytes > 0)
               or (o.chain_latency_s is not None and not (math.isfinite(o.chain_latency_s) and o.chain_latency_s >= 0))]
        try:
            cal_ok = all(all(math.isfinite(v) and v > 0 for v in c.get("scale", {}).values())
                         and math.isfinite(c.get("offset_s", 0.0)) for c in profile.calibration.values())
        except (AttributeError, TypeError):
            cal_ok = False
        if bad or not cal_ok or not (math.isfinite(profile.frame_latency_s) and profile.frame_latency_s >= 0):
            raise InvalidProfileError(f"the ONNX Runtime profile in {onnx_store.root} holds invalid latencies or "
                                      "sizes; profile again with profile_onnx(...)")
        if profile.weights_digest != onnx_store.manifest.weights_digest:
            raise StaleProfileError(f"the ONNX Runtime profile in {onnx_store.root} measured other ONNX files; "
                                    "profile again with profile_onnx(...)")
        return profile


def _covering_configs(names: Sequence[str], options: Sequence[Tuple[float, str]]) -> List[Dict[str, Tuple[float, str]]]:
    """``len(options)`` configurations that together hold every option of every block once
    (block ``b`` of configuration ``k`` takes option ``(k + b) mod K``): the chains in which
    each chain option is timed in sequence."""
    k = len(options)
    return [{n: options[(j + b) % k] for b, n in enumerate(names)} for j in range(k)]


def _time_all(sw: OrtBlockSwitcher, keys: Sequence[Tuple[str, float, str]], runs: int, rounds: int,
              configs: Sequence[Dict[str, Tuple[float, str]]], covering: Sequence[Dict[str, Tuple[float, str]]],
              shape: Tuple[int, ...]) -> Dict[str, Any]:
    """Median seconds, all interleaved in one pass: each segment and block session alone;
    each covering chain with every step timed where it runs; each configuration of
    ``configs`` served as a chain and as its fused session (the way ``run`` serves: the
    input copied in, the outputs copied out)."""
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    buffers = sw._allocate(sw._config, x)
    segs = dict(sw._segments)
    blocks = {k: sw._get(*k)[0] for k in keys}

    def bound(e: Any) -> Any:
        b, sess = buffers.binding(e), e.session
        return lambda: sess.run_with_iobinding(b)  # as OrtBlockSwitcher.run calls it

    fns = [bound(e) for e in segs.values()] + [bound(e) for e in blocks.values()]
    # chains in sequence: every step timed where it runs
    in_chain: Dict[Tuple[str, ...], List[float]] = {}
    loop_extra: List[float] = []
    clock = time.perf_counter
    for cfg in covering:
        entries = _config_entries(sw, cfg)
        steps = [(e.key, bound(e)) for e in entries]
        outs = [buffers.arrays[v] for v in sw.plan.outputs]

        def chain(steps=steps, outs=outs) -> None:
            t0 = clock()
            np.copyto(buffers.arrays[0], x)
            total = 0.0
            for key, run in steps:
                t = clock()
                run()
                dt = clock() - t
                total += dt
                in_chain.setdefault(key, []).append(dt)
            [o.copy() for o in outs]
            loop_extra.append(clock() - t0 - total)

        fns.append(chain)
    served = []
    for cfg in configs:
        entries = _config_entries(sw, cfg)
        fused = sw.fused_session(tuple(cfg[n] for n in sw.block_names))
        for seq in (entries, [fused]):
            runs_ = [bound(e) for e in seq]
            outs = [buffers.arrays[v] for v in sw.plan.outputs]

            def serve(runs_=runs_, outs=outs) -> None:
                np.copyto(buffers.arrays[0], x)
                for run in runs_:
                    run()
                [o.copy() for o in outs]

            served.append(serve)
    times = time_interleaved(fns + served, runs, "cpu", rounds=rounds)
    n_seg, n_blk, n_cov = len(segs), len(blocks), len(covering)
    med = statistics.median
    return {
        "segments": dict(zip(segs, times[:n_seg])),
        "blocks": dict(zip(blocks, times[n_seg:n_seg + n_blk])),
        "segments_in_chain": {name: med(in_chain[("segment", name)]) for name in segs},
        "blocks_in_chain": {k: med(in_chain[("block", *k)]) for k in blocks if ("block", *k) in in_chain},
        "chain_own_s": med(loop_extra),
        "chain_s": list(times[n_seg + n_blk + n_cov::2]),
        "fused_s": list(times[n_seg + n_blk + n_cov + 1::2]),
    }


def _config_entries(sw: OrtBlockSwitcher, cfg: Dict[str, Tuple[float, str]]) -> List[Any]:
    blocks = {n: sw._get(n, *cfg[n])[0] for n in sw.block_names}
    return [sw._segments[st.name] if st.kind == "segment" else blocks[st.name] for st in sw.plan.steps]


#: bounds of a fitted scale: blocks in context do not run ten times faster or slower than alone
SCALE_BOUNDS = (0.1, 10.0)


def _box_lstsq(x: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Least squares ``x @ w ~ y`` with ``lo <= w <= hi``: the best feasible of the
    candidates where each parameter is free or at one of its bounds (a convex problem with
    few parameters: its optimum is one of them)."""
    best, best_sse = None, math.inf
    k = x.shape[1]
    for states in itertools.product((0, 1, 2), repeat=k):
        w = np.zeros(k)
        ok = True
        for i, st in enumerate(states):
            if st:
                w[i] = lo[i] if st == 1 else hi[i]
                ok = ok and math.isfinite(w[i])
        if not ok:
            continue
        free = [i for i, st in enumerate(states) if st == 0]
        if free:
            sol, *_ = np.linalg.lstsq(x[:, free], y - x @ w, rcond=None)
            w[free] = sol
        if np.all(w >= lo - 1e-12) and np.all(w <= hi + 1e-12):
            sse = float(np.sum((x @ w - y) ** 2))
            if sse < best_sse:
                best, best_sse = w, sse
    assert best is not None  # all parameters at finite bounds is always feasible
    return best


def _fit_modes(sums: np.ndarray, y: np.ndarray, frame: float, min_sum: float) -> Tuple[np.ndarray, float]:
    """Scales per precision (columns of ``sums``) and an offset for ``y - frame``; the
    offset is bounded below by minus the frame and half the fastest configuration's block
    time (in a fused graph the per-session costs that timing alone includes disappear, so
    it may be negative, but never so much that an estimate nears zero)."""
    used = [j for j in range(sums.shape[1]) if np.any(sums[:, j] > 0)]
    x = np.c_[sums[:, used], np.ones(len(y))]
    lo = np.array([SCALE_BOUNDS[0]] * len(used) + [-(frame + 0.5 * min_sum)])
    hi = np.array([SCALE_BOUNDS[1]] * len(used) + [math.inf])
    w = _box_lstsq(x, y - frame, lo, hi)
    scales = np.ones(sums.shape[1])
    scales[used] = w[:-1]
    return scales, float(w[-1])


def _calibrate(sums: np.ndarray, measured: Sequence[float], frame: float, n_fit: int, min_sum: float,
               precisions: Sequence[str], fit: bool = True) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Fit the calibration on the first ``n_fit`` configurations (kept only when it beats the
    plain sum in leave-one-out over them, and keeps the fastest configuration's estimate
    positive), and report the error on the others, which the fit never saw. ``fit=False``
    reports the plain sum on the same held-out configurations."""
    meas = np.asarray(measured, dtype=float)
    scales, offset = np.ones(sums.shape[1]), 0.0
    if fit and n_fit >= 4:
        fx, fy = sums[:n_fit], meas[:n_fit]
        loo_cal, loo_raw = [], []
        for i in range(n_fit):
            keep = np.arange(n_fit) != i
            sc, off = _fit_modes(fx[keep], fy[keep], frame, min_sum)
            loo_cal.append(abs(frame + off + fx[i] @ sc - fy[i]) / fy[i])
            loo_raw.append(abs(frame + fx[i].sum() - fy[i]) / fy[i])
        if np.mean(loo_cal) < np.mean(loo_raw):
            sc, off = _fit_modes(fx, fy, frame, min_sum)
            if frame + off + min(sc) * min_sum > 0:
                scales, offset = sc, off
    est = frame + offset + sums @ scales
    raw = frame + sums.sum(axis=1)
    test_m, cal, rawt = meas[n_fit:], est[n_fit:], raw[n_fit:]
    rel, rel_raw = (cal - test_m) / test_m, (rawt - test_m) / test_m
    calibration = {"scale": {p: float(v) for p, v in zip(precisions, scales)}, "offset_s": float(offset)}
    report: Dict[str, Any] = {"n_fit": n_fit, "n": len(test_m), "measured_s": test_m.tolist(),
                              "estimated_s": cal.tolist(), "estimated_raw_s": rawt.tolist(), **calibration}
    if len(rel):
        report.update({"within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
                       "within_10pct_raw": float(np.mean(np.abs(rel_raw) <= 0.10)),
                       "mean_abs_rel_error": float(np.mean(np.abs(rel))),
                       "mean_abs_rel_error_raw": float(np.mean(np.abs(rel_raw))),
                       "median_rel_error": float(np.median(rel)),
                       "max_abs_rel_error": float(np.max(np.abs(rel)))})
    return calibration, report


def profile_onnx(
    blocks_dir: Union[str, BlockStore],
    test_loader: Any = None,
    *,
    model_manager: Any = None,
    onnx_dir: Optional[Union[str, Path]] = None,
    runs: int = 20,
    rounds: Optional[int] = None,
    num_threads: int = 1,
    num_compositions: int = 20,
    num_fit: Optional[int] = None,
    measure_float_accuracy: bool = False,
    seed: int = 0,
) -> OnnxProfile:
    """Measure every ONNX Runtime option of a store and write ``profile_onnxruntime.json``.

    Args:
        blocks_dir: a store with an ONNX folder (:func:`~.export.export_onnx_store`).
        test_loader: held-out data for the int8 accuracy drops (the same loader as the
            float profile's, so the drops compare); None skips accuracy (and int8 options
            cannot then be chosen).
        model_manager: its ``get_model_acc`` scores the chain (default ``CommonModelManager``).
        runs, rounds: timed runs per session and configuration, spread over ``rounds``
            interleaved passes (default ``runs``: one run of each per pass, so that a slow
            spell of a loaded machine falls on many candidates once rather than on one
            candidate's burst, and no session is timed hot from its own previous run).
        num_compositions: random (sparsity, precision) configurations measured served
            (chain and fused): the first ``num_fit`` (default half) fit the calibration,
            the others check it (``validation``, per serving mode).
        measure_float_accuracy: also measure the float descendants' drops on the chain
            (for the int8 vs float comparison; the optimizer uses ``block_profile.json``).
    """
    runs = check_int("runs", runs, minimum=1, hint="pass the timed runs per session, e.g. runs=20")
    rounds = check_int("rounds", rounds, minimum=1, allow_none=True, hint="pass e.g. rounds=5, or None")
    rounds = runs if rounds is None else rounds
    num_compositions = check_int("num_compositions", num_compositions, minimum=0, hint="pass e.g. 20, or 0")
    num_fit = check_int("num_fit", num_fit, minimum=0, allow_none=True, hint="pass e.g. 10")
    n_fit = num_compositions // 2 if num_fit is None else min(num_fit, num_compositions)
    store = blocks_dir if isinstance(blocks_dir, BlockStore) else BlockStore(blocks_dir)
    onnx_store = OnnxStore.for_store(store, onnx_dir)
    if onnx_store is None:
        raise StoreError(f"{str(store.root)!r} has no ONNX folder: run export_onnx_store(blocks_dir, model) first")
    sw = OrtBlockSwitcher(onnx_store, store.block_sparsity, num_threads, cache_bytes=2**40, fuse=False)
    names, levels, precisions = sw.block_names, sw.block_sparsity, sw.precisions
    keys = [(n, s, p) for n in names for p in precisions for s in levels]
    rng = random.Random(seed)
    configs = [{n: (rng.choice(levels), rng.choice(precisions)) for n in names} for _ in range(num_compositions)]
    teacher_cfg = {n: (0.0, "float") for n in names}
    shape = tuple(store.manifest.model_input_size)
    covering = _covering_configs(names, [(s, p) for p in precisions for s in levels])
    t = _time_all(sw, keys, runs, rounds, [teacher_cfg, *configs], covering, shape)
    seg_t, block_t = t["segments"], t["blocks"]

    metric_name, teacher_metric = "", None
    metrics: Dict[Tuple[str, float, str], float] = {}
    if test_loader is not None:
        if model_manager is None:
            from ..model_manager import CommonModelManager

            model_manager = CommonModelManager()
        metric_name = str(getattr(model_manager, "metric_name", "accuracy"))
        sw.switch([0.0] * len(names), "float")
        teacher_metric = float(model_manager.get_model_acc(sw.model, test_loader, "cpu"))
        for n, s, p in keys:
            if (p == "int8" or measure_float_accuracy) and not (p == "float" and s == 0.0):
                sw.switch([0.0] * len(names), "float")
                sw.switch({n: s}, {n: p})
                metrics[(n, s, p)] = float(model_manager.get_model_acc(sw.model, test_loader, "cpu"))
            elif p == "float" and s == 0.0:
                metrics[(n, s, p)] = teacher_metric
        sw.switch([0.0] * len(names), "float")
    manifest = onnx_store.manifest
    options = []
    for n, s, p in keys:
        m = metrics.get((n, s, p))
        options.append(OnnxOption(n, s, p, block_t[(n, s, p)], manifest.find(n, s, p).bytes, m,
                                  None if m is None else teacher_metric - m, t["blocks_in_chain"][(n, s, p)]))
    frame_bytes = sum(manifest.find(name).bytes for name in seg_t)
    fused_frame = float(sum(seg_t.values()))
    chain_frame = float(sum(t["segments_in_chain"].values()) + t["chain_own_s"])
    base = OnnxProfile(store.fingerprint, manifest.weights_digest, int(num_threads), shape, fused_frame,
                       int(frame_bytes), float(t["fused_s"][0]), metric_name, teacher_metric, tuple(options),
                       chain_frame_latency_s=chain_frame)
    # fused: a block's cost inside one graph cannot be timed, so frame + offset + scale * blocks
    # is fitted on the teacher and the first n_fit random configurations; chain: every part is
    # timed where it runs (steps in sequence, the chain's own cost), so nothing is fitted
    # (a fit there only fits noise: held out, it did worse than the plain sum). Both are
    # checked on the other configurations, which no fit saw.
    calibration: Dict[str, Dict[str, float]] = {}
    validation: Dict[str, Any] = {"configurations": [[list(c[n]) for n in names] for c in configs[n_fit:]],
                                  "fit_configurations": [[list(c[n]) for n in names] for c in configs[:n_fit]]}
    for mode, measured, frame in (("fused", t["fused_s"], fused_frame), ("chain", t["chain_s"], chain_frame)):
        sums = np.array([[sum(base.block_latency(base.option(b, s, p), mode) for b, (s, p) in c.items() if p == q)
                          for q in precisions] for c in [teacher_cfg, *configs]])
        min_sum = sum(min(base.block_latency(o, mode) for o in options if o.block == n) for n in names)
        calibration[mode], validation[mode] = _calibrate(sums, measured, frame, 1 + n_fit, min_sum, precisions,
                                                         fit=mode == "fused")
        validation[mode]["teacher_measured_s"] = measured[0]
    validation.update({k: validation["fused"][k] for k in validation["fused"]
                       if k in ("n", "n_fit", "within_10pct", "within_10pct_raw", "mean_abs_rel_error",
                                "median_rel_error", "measured_s", "estimated_s")})
    validation["chain_own_s"] = t["chain_own_s"]
    profile = OnnxProfile(**{**asdict(base), "options": base.options, "model_input_size": base.model_input_size,
                             "calibration": calibration, "validation": validation})
    onnx_store.write_profile(profile.to_json())
    return profile
