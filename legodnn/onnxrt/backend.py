"""Put a :class:`~legodnn.online.ScalingOptimizer` on ONNX Runtime: its switcher and its costs.

``OnDeviceRuntime(..., backend="onnxruntime")`` calls :func:`attach_onnxruntime`. The
optimizer then serves through an :class:`~.serving.OrtBlockSwitcher` and chooses among
(sparsity, precision) options costed by ONNX Runtime's own profile
(``profile_onnxruntime.json``): latencies timed in ONNX Runtime and ONNX bytes, since a
PyTorch latency says little about an ONNX Runtime session and nothing about int8.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from ..errors import StoreError
from ..validation import check_precisions
from .onnx_store import OnnxStore
from .profile import OnnxProfile
from .serving import OrtBlockSwitcher

__all__ = ["OnnxCosts", "attach_onnxruntime", "check_precisions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnnxCosts:
    """The options the optimizer chooses among under ONNX Runtime, from an :class:`OnnxProfile`."""

    profile: OnnxProfile
    precisions: Tuple[str, ...]
    block_sparsity: Tuple[float, ...]
    mode: str = "fused"  # how the switcher serves: "fused" (one session once built) or "chain"

    @property
    def frame_latency_s(self) -> float:
        """The frame plus the calibration's offset. Fused, it can be below zero: the per-session
        costs that every option's time alone includes vanish in one graph (``profile.py``);
        the fit keeps every configuration's total positive."""
        frame, offset, _ = self.profile.mode_costs(self.mode)
        return frame + offset

    @property
    def frame_bytes(self) -> int:
        return self.profile.frame_bytes

    def options(self, block: str) -> List[Tuple[float, str, float, int, float]]:
        """(sparsity, precision, latency_s, size_bytes, measured drop) of each option, float first."""
        _, _, scales = self.profile.mode_costs(self.mode)
        out = []
        for p in self.precisions:
            for s in self.block_sparsity:
                o = self.profile.option(block, s, p)
                out.append((s, p, scales[p] * self.profile.block_latency(o, self.mode), o.size_bytes, o.metric_drop))
        return out


def attach_onnxruntime(optimizer: Any, precisions: Sequence[str] = ("float",), *, onnx_dir: Optional[str] = None,
                       num_threads: int = 1, cache_bytes: int = 256 * 2**20, fuse: bool = True) -> OrtBlockSwitcher:
    """Make ``optimizer`` serve with ONNX Runtime and choose among ``precisions``.

    ``fuse``: serve each configuration by its fused session once built (see
    :class:`~.serving.OrtBlockSwitcher`); latencies are then estimated for fused serving,
    else for the chain.

    The store's ONNX folder is used when it has one; otherwise float sessions are
    exported in memory from the optimizer's PyTorch model (its trace is reused) and,
    without an ONNX Runtime profile, the PyTorch latencies stand in (with a warning).
    int8 needs the folder, calibrated, and its profile with accuracy.
    """
    precisions = check_precisions(precisions)
    store = optimizer.store
    onnx_store = OnnxStore.for_store(store, onnx_dir)
    profile = OnnxProfile.load(onnx_store, store) if onnx_store is not None else None
    if "int8" in precisions:
        fix = ("run export_onnx_store(blocks_dir, model, calibration=loader) and then "
               "profile_onnx(blocks_dir, test_loader)")
        if onnx_store is None or "int8" not in onnx_store.manifest.precisions:
            raise StoreError(f"{str(store.root)!r} has no int8 descendants; {fix}")
        if profile is None or "int8" not in profile.precisions:
            raise StoreError(f"the int8 descendants of {str(store.root)!r} are not profiled; {fix}")
        missing = [o for o in profile.options if o.precision == "int8" and o.metric_drop is None]
        if missing:
            raise StoreError(f"the int8 descendants of {str(store.root)!r} were profiled without test data (no "
                             "accuracy drop); run profile_onnx(blocks_dir, test_loader) again")
    if onnx_store is not None:
        switcher = OrtBlockSwitcher(onnx_store, store.block_sparsity, num_threads, cache_bytes, fuse)
    else:
        from .export import TorchOnnxSource

        switcher = OrtBlockSwitcher(TorchOnnxSource(optimizer.switcher), store.block_sparsity, num_threads,
                                    cache_bytes, fuse)
    if profile is None and getattr(optimizer, "latency", None) is None:
        raise StoreError(f"{str(store.root)!r} has neither an ONNX Runtime profile nor latency_profile.json: run "
                         "export_onnx_store(...) and profile_onnx(...) (or LatencyEstimator) first")
    if profile is None:
        warnings.warn(
            f"{str(store.root)!r} has no ONNX Runtime profile: choosing with PyTorch latencies and sizes; run "
            "export_onnx_store(...) and profile_onnx(...) for ONNX Runtime's own", stacklevel=3)
        optimizer.use_backend(switcher, None)
    else:
        optimizer.use_backend(switcher, OnnxCosts(profile, precisions, tuple(store.block_sparsity),
                                                  "fused" if fuse else "chain"))
    return switcher
