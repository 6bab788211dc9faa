"""Profile the ONNX Runtime options of a store: latency and bytes of every (block,
sparsity, precision), and the accuracy drop of every int8 descendant.

Latency is measured the way the chain serves: each session runs on its pre-allocated,
bound buffers (the I/O binding of :mod:`.serving`), all sessions interleaved pass after
pass so that a loaded machine's slow spells fall on all alike; a configuration is
estimated as the frame's segments plus its blocks, and the estimate is checked against
measured chains of random (sparsity, precision) configurations; the chain's own overhead
(a constant: every configuration runs the same sessions) is measured on the teacher's
chain and counted with the frame. Bytes are the ONNX
initializers (int8 weights one byte each). The int8 accuracy drop is measured like the
float one in :class:`~legodnn.offline.BlockProfiler`: the teacher's metric minus the
metric with that one descendant in place, here on the ONNX Runtime chain.
"""

from __future__ import annotations

import math
import random
import statistics
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
    latency_s: float
    size_bytes: int
    metric: Optional[float] = None
    metric_drop: Optional[float] = None


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

    def estimate(self, choice: Dict[str, Tuple[float, str]]) -> float:
        """Estimated latency of a configuration {block: (sparsity, precision)}: segments + blocks."""
        return self.frame_latency_s + sum(self.option(b, s, p).latency_s for b, (s, p) in choice.items())

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
        bad = [o for o in profile.options if not (math.isfinite(o.latency_s) and o.latency_s >= 0 and o.size_bytes > 0)]
        if bad or not (math.isfinite(profile.frame_latency_s) and profile.frame_latency_s >= 0):
            raise InvalidProfileError(f"the ONNX Runtime profile in {onnx_store.root} holds invalid latencies or "
                                      "sizes; profile again with profile_onnx(...)")
        if profile.weights_digest != onnx_store.manifest.weights_digest:
            raise StaleProfileError(f"the ONNX Runtime profile in {onnx_store.root} measured other ONNX files; "
                                    "profile again with profile_onnx(...)")
        return profile


def _time_sessions(sw: OrtBlockSwitcher, keys: Sequence[Tuple[str, float, str]], runs: int, rounds: int,
                   configs: Sequence[Dict[str, Tuple[float, str]]], shape: Tuple[int, ...]
                   ) -> Tuple[Dict[str, float], Dict[Tuple[str, float, str], float], List[float]]:
    """Median seconds of each segment, each block session and each whole configuration."""
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    buffers = sw._allocate(sw._config, x)
    np.copyto(buffers.arrays[0], x)
    segs = dict(sw._segments)
    blocks = {k: sw._get(*k)[0] for k in keys}
    runners = [(lambda e=e: e.session.run_with_iobinding(buffers.binding(e))) for e in segs.values()]
    runners += [(lambda e=e: e.session.run_with_iobinding(buffers.binding(e))) for e in blocks.values()]
    chains = []
    for cfg in configs:
        sw.switch({b: s for b, (s, _) in cfg.items()}, {b: p for b, (_, p) in cfg.items()})
        config = sw._config
        chains.append(lambda config=config: [e.session.run_with_iobinding(buffers.binding(e))
                                             for e in config.sessions])
    times = time_interleaved(runners + chains, runs, "cpu", rounds=rounds)
    seg_t = dict(zip(segs, times[: len(segs)]))
    block_t = dict(zip(blocks, times[len(segs): len(segs) + len(blocks)]))
    return seg_t, block_t, list(times[len(segs) + len(blocks):])


def profile_onnx(
    blocks_dir: Union[str, BlockStore],
    test_loader: Any = None,
    *,
    model_manager: Any = None,
    onnx_dir: Optional[Union[str, Path]] = None,
    runs: int = 20,
    rounds: int = 5,
    num_threads: int = 1,
    num_compositions: int = 10,
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
        runs, rounds: timed runs per session, spread over ``rounds`` interleaved passes.
        num_compositions: random (sparsity, precision) configurations whose measured chain
            checks the estimate (``validation`` of the result).
        measure_float_accuracy: also measure the float descendants' drops on the chain
            (for the int8 vs float comparison; the optimizer uses ``block_profile.json``).
    """
    runs = check_int("runs", runs, minimum=1, hint="pass the timed runs per session, e.g. runs=20")
    rounds = check_int("rounds", rounds, minimum=1, hint="pass e.g. rounds=5")
    num_compositions = check_int("num_compositions", num_compositions, minimum=0, hint="pass e.g. 10, or 0")
    store = blocks_dir if isinstance(blocks_dir, BlockStore) else BlockStore(blocks_dir)
    onnx_store = OnnxStore.for_store(store, onnx_dir)
    if onnx_store is None:
        raise StoreError(f"{str(store.root)!r} has no ONNX folder: run export_onnx_store(blocks_dir, model) first")
    sw = OrtBlockSwitcher(onnx_store, store.block_sparsity, num_threads, cache_bytes=2**40)
    names, levels, precisions = sw.block_names, sw.block_sparsity, sw.precisions
    keys = [(n, s, p) for n in names for p in precisions for s in levels]
    rng = random.Random(seed)
    configs = [{n: (rng.choice(levels), rng.choice(precisions)) for n in names} for _ in range(num_compositions)]
    teacher_cfg = {n: (0.0, "float") for n in names}
    shape = tuple(store.manifest.model_input_size)
    seg_t, block_t, chain_t = _time_sessions(sw, keys, runs, rounds, [teacher_cfg, *configs], shape)

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
                                  None if m is None else teacher_metric - m))
    frame_bytes = sum(manifest.find(name).bytes for name in seg_t)
    # every configuration runs the same number of sessions, so what chaining costs beyond
    # the sessions' own times (the Python loop, the output copy) is one constant: measured
    # on the teacher's chain, it is counted with the frame
    teacher_sum = sum(seg_t.values()) + sum(block_t[(n, 0.0, "float")] for n in names)
    overhead = max(0.0, chain_t[0] - teacher_sum)
    profile = OnnxProfile(store.fingerprint, manifest.weights_digest, int(num_threads), shape,
                          float(sum(seg_t.values()) + overhead), int(frame_bytes), float(chain_t[0]), metric_name,
                          teacher_metric, tuple(options))
    if configs:
        est = [profile.estimate(c) for c in configs]
        rel = [(e - m) / m for e, m in zip(est, chain_t[1:])]
        profile = OnnxProfile(**{**asdict(profile), "options": profile.options,
                                 "model_input_size": profile.model_input_size,
                                 "validation": {
                                     "n": len(configs), "chain_overhead_s": overhead,
                                     "configurations": [[list(c[n]) for n in names] for c in configs],
                                     "measured_s": chain_t[1:], "estimated_s": est,
                                     "within_10pct": float(np.mean([abs(r) <= 0.10 for r in rel])),
                                     "mean_abs_rel_error": float(np.mean(np.abs(rel))),
                                     "median_rel_error": float(statistics.median(rel))}})
    onnx_store.write_profile(profile.to_json())
    return profile
