"""ScalingOptimizer: the best block choice under latency and memory budgets, hot-swapped live.

It reads the offline profile (metric drops, sizes) and the device's latency profile,
solves the two-constraint multiple-choice knapsack exactly (:mod:`solver`), and installs
the choice through a :class:`BlockSwitcher`, replacing only the blocks that change.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..blockmanager.store import ACCURACY_MODEL_CHOICE, BLOCK_PROFILE, LATENCY_PROFILE, BlockStore
from ..blockmanager.switcher import BlockSwitcher
from ..errors import InvalidArgumentError, LegoDNNError, StaleProfileError, StoreError
from ..offline.accuracy_fit import ACCURACY_ESTIMATE_JSON, FittedAccuracyModel, estimate_or_none
from ..offline.profiles import ModelProfile
from ..validation import check_float, warn_if_ignored_manager
from .latency_profile import LatencyProfile, device_description
from .level_search import configuration_metric, solve_with_levels
from .solver import ScalingProblem, Solution, cheapest, solve

__all__ = ["ScalingOptimizer", "OptimizationResult", "InfeasibleBudgetError"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizationResult:
    """What one :meth:`ScalingOptimizer.update_model` chose and what installing it cost."""

    sparsities: Tuple[float, ...]
    feasible: bool
    binding: Tuple[str, ...]  # for an infeasible budget: "latency", "memory" or "latency+memory"
    metric_name: str
    estimated_metric: float  # by the accuracy model in use (the fitted one when the profile has it)
    estimated_latency_s: float
    model_bytes: int
    blocks_swapped: Tuple[str, ...]
    bytes_loaded: int
    swap_seconds: float
    solve_seconds: float
    accuracy_model: str = "additive"  # "fitted", "additive" or "multiplicative"
    # the fitted estimate's cross-validated error on measured compositions (metric units); NaN if unknown
    estimate_mean_abs_error: float = float("nan")
    estimate_max_abs_error: float = float("nan")
    # the precision of each block ("float" or "int8"), in block order, beside ``sparsities``
    precisions: Tuple[str, ...] = ()


class InfeasibleBudgetError(LegoDNNError):
    """No configuration meets the budgets; ``closest`` is the configuration nearest to them."""

    def __init__(self, message: str, closest: OptimizationResult) -> None:
        super().__init__(message)
        self.closest = closest


class ScalingOptimizer:
    """Pick and install the most accurate configuration that fits the budgets.

    ``trained_blocks_dir`` must hold ``block_profile.json`` (from :class:`BlockProfiler`,
    measured on the weights the store holds now) and ``latency_profile.json`` (from
    :class:`LatencyEstimator` on this device). The live model is ``optimizer.model``.

    On the device, :meth:`from_store` builds it from the store and the model code alone
    (one trace, no block manager); the positional form below is the original API.

    Args:
        trained_blocks_dir: the retrained, profiled store.
        model_input_size: the input shape with its batch dim (checked against the profiles).
        block_manager: the block manager of the model.
        model_manager: must be the block manager's own (another one is ignored, with a warning).
        device: where the live model runs.
        switcher: a block switcher to install configurations with (default: one built
            from the block manager).
        cache_bytes: the switcher's cache of built descendants, in bytes.
        accuracy_model: the estimate maximized: "fitted" (``accuracy_estimate.json``),
            "additive" (teacher minus summed drops), "multiplicative", or "auto" (the
            fitted one when the profile has it, else the closer of the other two).
    """

    def __init__(
        self,
        trained_blocks_dir: str,
        model_input_size: Sequence[int],
        block_manager: Any,
        model_manager: Any = None,
        device: str = "cpu",
        switcher: Optional[BlockSwitcher] = None,
        cache_bytes: int = 256 * 2**20,
        accuracy_model: str = "auto",
    ) -> None:
        warn_if_ignored_manager("model_manager", model_manager, block_manager)
        store = block_manager.open_store(str(trained_blocks_dir))
        self.block_manager = block_manager
        self._setup(store, tuple(model_input_size), device, switcher, cache_bytes, accuracy_model)

    @classmethod
    def from_store(
        cls,
        blocks_dir: str,
        model: torch.nn.Module,
        device: str = "cpu",
        *,
        model_manager: Any = None,
        cache_bytes: int = 256 * 2**20,
        accuracy_model: str = "auto",
        copy_model: bool = False,
        require_latency: bool = True,
    ) -> "ScalingOptimizer":
        """The optimizer for a trained store on the device.

        ``require_latency=False`` accepts a store without ``latency_profile.json``: the
        optimizer then chooses only once another backend gives it costs (``use_backend``;
        ``OnDeviceRuntime(backend="onnxruntime")`` with ``profile_onnx``'s profile).

        ``model`` is the model code (random weights are fine: every weight comes from the
        store), traced once by the switcher. It becomes the live model's frame, its weights
        replaced by the store's; ``copy_model=True`` works on a copy instead (slower start).
        """
        switcher = BlockSwitcher(blocks_dir, model, device, cache_bytes, model_manager, copy_model=copy_model)
        self = cls.__new__(cls)
        self.block_manager = None
        self._setup(switcher.store, tuple(switcher.store.manifest.model_input_size), device, switcher, cache_bytes,
                    accuracy_model, require_latency)
        return self

    def _setup(self, store: BlockStore, model_input_size: Tuple[int, ...], device: str,
               switcher: Optional[BlockSwitcher], cache_bytes: int, accuracy_model: str,
               require_latency: bool = True) -> None:
        self.store = store
        self.trained_dir = store.root
        self.block_names = store.block_names
        self.block_sparsity = store.block_sparsity
        self.device = device
        self.profile = ModelProfile.load(self.trained_dir)
        # without latency_profile.json the optimizer waits for another backend's costs
        # (OnDeviceRuntime(backend="onnxruntime") with profile_onnx's profile, use_backend)
        self.latency: Optional[LatencyProfile] = (LatencyProfile.load(self.trained_dir)
                                                  if require_latency or store.path(LATENCY_PROFILE).is_file()
                                                  else None)
        self._check_profiles(model_input_size)
        self.fitted: Optional[FittedAccuracyModel] = None
        self.accuracy_model = self._accuracy_model(accuracy_model)
        self.costs: Any = None  # another backend's options (use_backend); None: float descendants in PyTorch
        self.options: List[List[Tuple[float, str]]] = []  # per block, the (sparsity, precision) of each option
        self.problem: Optional[ScalingProblem] = self._problem() if self.latency is not None else None
        self._switcher = switcher
        self._cache_bytes = cache_bytes

    def _check_profiles(self, model_input_size: Tuple[int, ...]) -> None:
        store = self.store
        fingerprints = [(BLOCK_PROFILE, self.profile.fingerprint)]
        if self.latency is not None:
            fingerprints.append((LATENCY_PROFILE, self.latency.fingerprint))
        for what, fp in fingerprints:
            if fp != store.fingerprint:
                raise StoreError(
                    f"{self.trained_dir / what} was made for another model (fingerprint {fp[:12]}, "
                    f"this model {store.fingerprint[:12]}); profile this model's blocks again"
                )
        if self.profile.weights_digest != store.weights_digest:
            raise StaleProfileError(
                f"{store.path(BLOCK_PROFILE)} measured other weights than {str(store.root)!r} holds now (the "
                "blocks were retrained or replaced after profiling, or the profile predates weight hashes); "
                "run BlockProfiler(...).profile_all_blocks() on this store again")
        lat = self.latency.table() if self.latency is not None else None
        if self.latency is not None and self.latency.architecture_digest != store.architecture_digest:
            raise StaleProfileError(
                f"{store.path(LATENCY_PROFILE)} timed other descendant architectures than {str(store.root)!r} holds "
                "(or predates architecture hashes); run LatencyEstimator(...).profile_all_blocks() on this store again")
        table = self.profile.table()
        for name in self.block_names:
            if name not in table or (lat is not None and name not in lat):
                raise StoreError(f"the profiles in {self.trained_dir} have no entry for {name}; profile again")
            if sorted(table[name]) != self.block_sparsity or (lat is not None and sorted(lat[name]) != self.block_sparsity):
                raise StoreError(
                    f"the profiles in {self.trained_dir} cover sparsities {sorted(table[name])} / "
                    f"{sorted(lat[name]) if lat is not None else '-'} for {name}, the store {self.block_sparsity}; "
                    "profile again"
                )
        if self.latency is None:
            return
        if tuple(self.latency.model_input_size) != model_input_size:
            raise StoreError(
                f"latency_profile.json was measured for input {self.latency.model_input_size}, "
                f"not {model_input_size}; profile latency for this input size"
            )
        here = device_description(self.device)
        if self.latency.device != here:
            warnings.warn(
                f"latency_profile.json was measured on {self.latency.device!r}, this is {here!r}: "
                "latency estimates may not hold here; run LatencyEstimator on this device",
                stacklevel=3,
            )
        if torch.device(self.device).type == "cpu" and self.latency.num_threads != torch.get_num_threads():
            warnings.warn(
                f"latency_profile.json was measured with {self.latency.num_threads} thread(s), torch now uses "
                f"{torch.get_num_threads()}: call torch.set_num_threads({self.latency.num_threads}) or profile again",
                stacklevel=3,
            )

    def _accuracy_model(self, choice: str) -> str:
        """"fitted" (fitted on measured compositions by the profiler, ``accuracy_estimate.json``),
        "additive" (teacher minus summed drops, the method's model) or "multiplicative"
        (teacher times the product of retained fractions). "auto" takes the fitted one
        when the profile has it, else the one ``BlockProfiler.validate_accuracy_model``
        found closer to measurements."""
        if choice not in ("auto", "fitted", "additive", "multiplicative"):
            raise InvalidArgumentError(
                f"accuracy_model must be 'auto', 'fitted', 'additive' or 'multiplicative', got {choice!r}")
        if choice in ("auto", "fitted"):
            self.fitted = estimate_or_none(self.trained_dir)
            if self.fitted is not None:
                if (list(self.fitted.block_names) != self.block_names
                        or list(self.fitted.sparsities) != self.block_sparsity):
                    raise StoreError(
                        f"{self.trained_dir / ACCURACY_ESTIMATE_JSON} covers blocks {list(self.fitted.block_names)} at "
                        f"{list(self.fitted.sparsities)}, the store {self.block_names} at {self.block_sparsity}; "
                        "profile again")
                if self.fitted.weights_digest != self.store.weights_digest:
                    raise StaleProfileError(
                        f"{self.trained_dir / ACCURACY_ESTIMATE_JSON} was fitted on other weights than the store "
                        "holds now; run BlockProfiler(...).profile_all_blocks(num_compositions=N) again")
                return "fitted"
            if choice == "fitted":
                raise StoreError(
                    f"{self.trained_dir / ACCURACY_ESTIMATE_JSON} is missing: run "
                    "BlockProfiler(...).profile_all_blocks(num_compositions=N) with N > 0")
        if choice != "auto":
            return choice
        path = self.store.path(ACCURACY_MODEL_CHOICE)
        if path.is_file() and self.profile.teacher_metric > 0:
            try:
                choice = json.loads(path.read_text())
                if choice.get("weights_digest") != self.store.weights_digest:
                    logger.warning("%s compared estimates on other weights; using the additive accuracy model", path)
                    return "additive"
                return "multiplicative" if choice["best"] == "multiplicative" else "additive"
            except (ValueError, KeyError, AttributeError):
                logger.warning("cannot read %s; using the additive accuracy model", path)
        return "additive"

    def _drop(self, drop: float, sparsity: float, block: str = "") -> float:
        """The objective term of one block: the drop (or its log-retained form).

        For the fitted model it is the fitted term (non-negative by construction, fitted
        on whole compositions, so nothing is clipped). For the others, a negative measured
        drop (a descendant scoring above the teacher on a finite test set) is noise, not a
        reason to prune: it counts as 0. A tie-break of 1e-9 per unit of sparsity makes
        equal estimates prefer the less pruned block.
        """
        tie = 1e-9 * sparsity * max(abs(self.profile.teacher_metric), 1e-3)
        if self.fitted is not None:
            return self.fitted.term(block, sparsity) + tie
        drop = max(0.0, drop) + tie
        if self.accuracy_model == "additive":
            return drop
        teacher = self.profile.teacher_metric
        return -teacher * math.log(max(1e-12, 1.0 - drop / teacher))

    def _estimate(self, total: float) -> float:
        teacher = self.profile.teacher_metric
        if self.fitted is not None:
            return self.fitted.estimate_from_total(total)
        if self.accuracy_model == "additive":
            return teacher - total
        return teacher * math.exp(-total / teacher)

    def _problem(self) -> ScalingProblem:
        """The knapsack: one option per (sparsity, precision) a block offers.

        Float options in PyTorch cost what ``latency_profile.json`` and ``block_profile.json``
        say. With another backend's ``costs`` (:meth:`use_backend`) every option takes that
        backend's latency and bytes; an int8 option's objective is its float descendant's
        term plus the extra drop int8 measured beyond the float drop (never below the float
        term: quantization noise on a finite test set is not a gain), so the fitted and the
        additive accuracy models both extend to the larger choice set and the problem stays
        a separable multiple-choice knapsack, solved exactly by the same solver.
        """
        table = self.profile.table()
        drops, lats, mems, options = [], [], [], []
        if self.costs is None and self.latency is None:
            raise StoreError(f"{self.store.path(LATENCY_PROFILE)} is missing: run LatencyEstimator(...)"
                             ".profile_all_blocks() on the device, or serve with backend='onnxruntime' after "
                             "profile_onnx(...)")
        for name in self.block_names:
            if self.costs is None:
                lat = self.latency.block_latencies(name)
                rows = [(s, "float", lat[s], table[name][s].size_bytes, float("nan")) for s in self.block_sparsity]
            else:
                rows = self.costs.options(name)
            row_drops = []
            for s, precision, _, _, measured in rows:
                float_drop = table[name][s].metric_drop
                term = self._drop(float_drop, s, name)
                if precision != "float":
                    term += max(0.0, measured - float_drop)
                row_drops.append(term)
            drops.append(row_drops)
            lats.append([r[2] for r in rows])
            mems.append([r[3] for r in rows])
            options.append([(r[0], r[1]) for r in rows])
        self.options = options
        frame_latency = self.latency.fixed_latency_s if self.costs is None else self.costs.frame_latency_s
        frame_memory = self.profile.frame_size_bytes if self.costs is None else self.costs.frame_bytes
        return ScalingProblem.from_arrays(drops, lats, mems, frame_latency=frame_latency, frame_memory=frame_memory)

    def use_backend(self, switcher: Any, costs: Any = None) -> None:
        """Serve through ``switcher`` (ONNX Runtime's, :mod:`legodnn.onnxrt`) and choose among
        ``costs``' options: ``costs.options(block)`` lists ``(sparsity, precision, latency_s,
        size_bytes, measured_drop)`` and ``costs.frame_latency_s``/``frame_bytes`` the rest.
        ``costs=None`` keeps the float options and the PyTorch profiles."""
        self._switcher = switcher
        self.costs = costs
        self.problem = self._problem()

    @property
    def switcher(self) -> BlockSwitcher:
        if self._switcher is None:
            self._switcher = BlockSwitcher.from_block_manager(self.store, self.block_manager, self.device,
                                                               self._cache_bytes)
        return self._switcher

    @property
    def model(self) -> torch.nn.Module:
        """The live model (hot-swapped by :meth:`update_model`)."""
        return self.switcher.model

    def choose(self, max_latency: Optional[float], max_memory: Optional[float]) -> Solution:
        """Solve only (no swap): seconds and bytes; ``None`` (or infinity) leaves a budget open."""
        max_latency = check_float("max_latency", max_latency, minimum=0.0, min_inclusive=False, finite=False,
                                  allow_none=True, hint="pass a positive number of seconds, or None for no limit")
        max_memory = check_float("max_memory", max_memory, minimum=0.0, min_inclusive=False, finite=False,
                                 allow_none=True, hint="pass a positive number of bytes, or None for no limit")
        if self.problem is None:
            self.problem = self._problem()  # raises: no latency profile and no other backend's costs
        levels = self._levels()
        if levels:
            return solve_with_levels(self.problem, max_latency, max_memory, self._option_levels(), levels,
                                     self._estimate)[0]
        return solve(self.problem, max_latency, max_memory)

    def _levels(self) -> Dict[float, float]:
        """The whole levels the profiler measured and the fitted estimate takes as measured."""
        return dict(self.fitted.levels) if self.fitted is not None else {}

    def _option_levels(self) -> List[List[float]]:
        return [[s for s, _ in row] for row in self.options]

    def _metric(self, solution: Solution) -> float:
        """The estimated metric of a solution's configuration (a measured level: its measurement)."""
        levels = self._levels()
        if levels and self.problem is not None:
            return configuration_metric(self.problem, solution, self._option_levels(), levels, self._estimate)
        return self._estimate(solution.total_drop)

    def update_model(
        self, max_latency: Optional[float] = None, max_memory: Optional[float] = None, *, fallback: bool = False
    ) -> OptimizationResult:
        """Choose the best configuration for the budgets (seconds, bytes) and install it.

        An infeasible budget raises :class:`InfeasibleBudgetError` saying which budget
        binds and what the closest configuration costs; with ``fallback=True`` that closest
        configuration is installed instead and returned with ``feasible=False``.

        Args:
            max_latency: the latency budget in seconds (``None``: no limit), compared with
                the latency profile's estimate.
            max_memory: the memory budget in bytes (``None``: no limit): parameters plus
                buffers of the composed model.
            fallback: install the closest configuration instead of raising when no
                configuration fits.

        Returns:
            The configuration installed (sparsities, estimated metric, latency and bytes),
            the blocks swapped, the bytes loaded, and the swap and solve times.

        Raises:
            InfeasibleBudgetError: no configuration fits and ``fallback`` is false.
        """
        solution = self.choose(max_latency, max_memory)
        picks = [self.options[b][k] for b, k in enumerate(solution.choice)]
        sparsities = [s for s, _ in picks]
        precisions = tuple(p for _, p in picks)
        if not solution.feasible and not fallback:
            closest = self._result(solution, sparsities, None, precisions)
            raise InfeasibleBudgetError(self._explain(solution, max_latency, max_memory), closest)
        if self.costs is None:
            switch = self.switcher.switch(sparsities)
        else:
            switch = self.switcher.switch(sparsities, list(precisions))
        result = self._result(solution, sparsities, switch, precisions)
        logger.debug(
            "budget %s s / %s B -> %s (est. %s %.4f, %.2f ms, %.2f MB), swapped %d blocks in %.2f ms",
            max_latency, max_memory, result.sparsities, result.metric_name, result.estimated_metric,
            1e3 * result.estimated_latency_s, result.model_bytes / 1e6, len(result.blocks_swapped),
            1e3 * result.swap_seconds,
        )
        return result

    def _result(self, solution: Solution, sparsities: Sequence[float], switch: Any,
                precisions: Tuple[str, ...] = ()) -> OptimizationResult:
        return OptimizationResult(
            sparsities=tuple(sparsities),
            feasible=solution.feasible,
            binding=solution.binding,
            metric_name=self.profile.metric_name,
            estimated_metric=self._metric(solution),
            estimated_latency_s=solution.latency,
            model_bytes=int(round(solution.memory)),
            blocks_swapped=switch.changed if switch else (),
            bytes_loaded=switch.bytes_loaded if switch else 0,
            swap_seconds=switch.seconds if switch else 0.0,
            solve_seconds=solution.solve_seconds,
            accuracy_model=self.accuracy_model,
            estimate_mean_abs_error=self.fitted.heldout_mean_abs_error if self.fitted else float("nan"),
            estimate_max_abs_error=self.fitted.heldout_max_abs_error if self.fitted else float("nan"),
            precisions=precisions or ("float",) * len(sparsities),
        )

    def _explain(self, solution: Solution, max_latency: Optional[float], max_memory: Optional[float]) -> str:
        fastest = cheapest(self.problem, "latency")
        smallest = cheapest(self.problem, "memory")
        parts = []
        if "latency" in solution.binding:
            parts.append(f"the fastest configuration takes {1e3 * fastest.latency:.3f} ms > max_latency "
                         f"{1e3 * max_latency:.3f} ms")
        if "memory" in solution.binding:
            parts.append(f"the smallest configuration needs {smallest.memory / 1e6:.3f} MB > max_memory "
                         f"{max_memory / 1e6:.3f} MB")
        if "latency+memory" in solution.binding:
            parts.append("each budget alone can be met, but no configuration meets both")
        return (
            "infeasible budget: " + "; ".join(parts) + f". Closest configuration: {1e3 * solution.latency:.3f} ms, "
            f"{solution.memory / 1e6:.3f} MB; pass fallback=True to install it"
        )
