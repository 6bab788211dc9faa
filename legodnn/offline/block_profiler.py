"""BlockProfiler: the metric drop, size and FLOPs of every descendant block.

One pass over the test set: per batch, the teacher runs once with every frame value
recorded; each candidate (block, sparsity) then runs only from its block onward
(:mod:`replay`). The original paid a full test pass per candidate.

Under ``torchrun`` (:mod:`~legodnn.offline.distributed`) each rank scores its shard of
the test set and the metric accumulators are combined, so the profile is the one a
single process measures; rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from ..blockmanager.auto_block_manager import AutoBlockManager
from ..blockmanager.measure import count_bytes
from ..blockmanager.partition import BLOCK_PREFIX
from ..blockmanager.store import ACCURACY_MODEL_CHOICE, atomic_write_text
from ..errors import LegoDNNError
from ..validation import (
    check_device,
    check_first_batch,
    check_input_size,
    check_int,
    warn_if_ignored_teacher,
)
from .accuracy_fit import (
    ACCURACY_ESTIMATE_JSON,
    MeasuredComposition,
    estimate_or_none,
    fit_accuracy_model,
    sample_compositions,
)
from .distributed import batch_len, combine_accumulators, current_ranks, shard_loader
from .precision import resolve_precision, synchronize
from .profiles import BlockProfile, ModelProfile
from .replay import RecordingRun, ReplayFrom

__all__ = ["BlockProfiler", "AccuracyModelReport"]

logger = logging.getLogger(__name__)

Key = Tuple[str, float]


@dataclass(frozen=True)
class AccuracyModelReport:
    """Estimated against measured metric of random compositions.

    ``estimated`` is the additive model of the method (teacher minus summed drops);
    ``estimated_multiplicative`` keeps the fraction of the metric each block retains,
    ``teacher * prod(1 - drop / teacher)``; ``estimated_fitted`` is the estimate fitted
    on measured compositions by :meth:`BlockProfiler.profile_all_blocks` (empty when the
    profile has none). ``best`` names the one with the smallest mean absolute error.
    """

    compositions: Tuple[Tuple[float, ...], ...]
    estimated: Tuple[float, ...]
    measured: Tuple[float, ...]
    estimated_multiplicative: Tuple[float, ...] = ()
    estimated_fitted: Tuple[float, ...] = ()

    @staticmethod
    def _mae(estimates: Sequence[float], measured: Sequence[float]) -> float:
        pairs = list(zip(estimates, measured))
        return sum(abs(e - m) for e, m in pairs) / len(pairs) if pairs else float("inf")

    @property
    def mean_abs_error_multiplicative(self) -> float:
        return self._mae(self.estimated_multiplicative, self.measured)

    @property
    def mean_abs_error_fitted(self) -> float:
        return self._mae(self.estimated_fitted, self.measured)

    @property
    def max_abs_error_fitted(self) -> float:
        pairs = list(zip(self.estimated_fitted, self.measured))
        return max(abs(e - m) for e, m in pairs) if pairs else float("inf")

    @property
    def best(self) -> str:
        errors = {"fitted": self.mean_abs_error_fitted, "additive": self.mean_abs_error,
                  "multiplicative": self.mean_abs_error_multiplicative}
        return min(errors, key=lambda k: errors[k])

    @property
    def errors(self) -> List[float]:
        return [e - m for e, m in zip(self.estimated, self.measured)]

    @property
    def mean_abs_error(self) -> float:
        return sum(abs(e) for e in self.errors) / len(self.errors)

    @property
    def max_abs_error(self) -> float:
        return max(abs(e) for e in self.errors)


class BlockProfiler:
    """Profile every descendant in ``trained_blocks_dir`` on ``test_loader``.

    Writes ``block_profile.json`` and ``block_profile.csv`` into ``trained_blocks_dir``.

    With a ``torch.distributed`` process group of several ranks (``torchrun``) the test
    set is sharded, without repeating samples, unless ``data_parallel=False``; every
    rank returns the same profile and rank 0 writes it. A model manager without
    ``metric_accumulator()`` is scored by whole passes over the full test set, the
    candidates shared out among the ranks.

    ``amp`` (``None``: fp32, the default; ``"bf16"``; ``"fp16"``, CUDA only) runs the
    forwards under autocast and ``channels_last=True`` holds the models and the images in
    NHWC layout while profiling (:mod:`~legodnn.offline.precision`); the metrics are
    computed from fp32 outputs. With both off the profile is the same, bit for bit.

    Args:
        teacher_model: the trained model the blocks were extracted from.
        block_manager: the block manager of that model.
        model_manager: scores a model on the test set (``CommonModelManager()``: top-1
            accuracy), and measures size and FLOPs.
        trained_blocks_dir: the retrained store to profile; the profiles are written into it.
        test_loader: the held-out data the metric is measured on.
        model_input_size: the input shape with its batch dim, for FLOPs.
        device: where the models run.
        verbose: progress bars.
        data_parallel: shard the test set over the ranks of a process group.
        amp: ``None``, ``"bf16"`` or ``"fp16"``: autocast for the forwards.
        channels_last: NHWC layout for the models and images.
    """

    def __init__(
        self,
        teacher_model: nn.Module,
        block_manager: AutoBlockManager,
        model_manager: Any,
        trained_blocks_dir: str,
        test_loader: Iterable[Any],
        model_input_size: Sequence[int],
        device: str = "cpu",
        verbose: bool = True,
        *,
        data_parallel: bool = True,
        amp: Optional[str] = None,
        channels_last: bool = False,
    ) -> None:
        model_input_size = check_input_size("model_input_size", model_input_size)
        device = check_device("device", device)
        self.precision = resolve_precision(amp, channels_last, device)
        warn_if_ignored_teacher("teacher_model", teacher_model, block_manager)
        self.block_manager = block_manager
        self.model_manager = model_manager
        self.trained_dir = Path(trained_blocks_dir)
        self.store = block_manager.open_store(str(trained_blocks_dir))
        self.ranks = current_ranks(data_parallel, device)
        self.full_test_loader = test_loader
        self.test_loader = shard_loader(test_loader, self.ranks, train=False,
                                        pin_memory=torch.device(device).type == "cuda")
        self.model_input_size = tuple(model_input_size)
        self.device = device
        self.verbose = verbose and self.ranks.is_main
        self.metric_name = getattr(model_manager, "metric_name", "accuracy")

    def _check_data(self) -> None:
        """The first test batch fits the model (see :func:`~legodnn.validation.check_first_batch`):
        NaN images or labels out of range would otherwise be profiled into a silent 0.0."""
        bm = self.block_manager
        check_first_batch("test_loader", self.test_loader, self.model_manager, bm.teacher, bm.model_input_size,
                          self.device)

    def _descendants(self) -> Dict[Key, nn.Module]:
        bm = self.block_manager
        return {
            (b, s): bm.load_descendant(self.store, b, s).eval()
            for b in bm.block_names
            for s in bm.block_sparsity
            if s > 0
        }

    def _accumulator(self) -> Optional[Any]:
        try:
            return self.model_manager.metric_accumulator()
        except (NotImplementedError, AttributeError):
            return None

    def _score(self, configs: Dict[Any, Dict[str, nn.Module]], replay: bool) -> Tuple[float, Dict[Any, float], int]:
        """Teacher metric and the metric of each configuration ({block: module} replacements)."""
        bm, mm = self.block_manager, self.model_manager
        if self._accumulator() is None:  # no per-batch metric: full passes, as the original did
            logger.warning("%s has no metric_accumulator(): profiling with one full test pass per candidate",
                           type(mm).__name__)
            return self._score_by_passes(configs)
        frame = bm.teacher
        can_replay = replay and isinstance(frame, fx.GraphModule)
        teacher_acc = mm.metric_accumulator()
        accs = {k: mm.metric_accumulator() for k in configs}
        if can_replay:  # single replacements replay from their block; whole compositions run in full
            recording = RecordingRun(frame)
            calls = {n.target[len(BLOCK_PREFIX):]: n for n in frame.graph.nodes
                     if n.op == "call_module" and n.target.startswith(BLOCK_PREFIX)}
            runners = {k: ReplayFrom(recording, calls[next(iter(c))], next(iter(c.values())))
                       if len(c) == 1 else bm.compose(c) for k, c in configs.items()}
        else:
            runners = {k: bm.compose(c) for k, c in configs.items()}
            recording = frame
        # wrappers are made in training mode, and a manager's forward puts a model back in the mode it had,
        # recursively: the shared frame would be left in training mode (its BatchNorm then updates elsewhere)
        recording.eval()
        for runner in runners.values():
            runner.eval()
        samples = 0
        bar = tqdm(self.test_loader, desc="profiling blocks", disable=not self.verbose, leave=False)
        precision = self.precision

        def forward(model: Any, batch: Any) -> Any:
            with precision.autocast():
                return precision.fp32(mm.forward_to_gen_mid_data(model, precision.batch(batch), self.device))

        with torch.no_grad(), precision.layout(self._modules(configs)):
            for batch in bar:
                teacher_acc.update(forward(recording, batch), batch)
                for k, runner in runners.items():
                    accs[k].update(forward(runner, batch), batch)
                samples += batch_len(batch)
        samples = int(self.ranks.sum_floats([samples], "counting the test samples")[0])
        if samples == 0:
            raise LegoDNNError("test_loader yielded no batches; profiling needs test data")
        combined = combine_accumulators(self.ranks, {"teacher": teacher_acc, **{("config", k): a for k, a in accs.items()}},
                                        mm.metric_accumulator)
        return combined["teacher"].compute(), {k: combined[("config", k)].compute() for k in accs}, samples

    def _modules(self, configs: Dict[Any, Dict[str, nn.Module]]) -> List[nn.Module]:
        """Every module the candidates run: the teacher (frame and blocks) and the replacements."""
        return [self.block_manager.teacher] + [m for c in configs.values() for m in c.values()]

    def _score_by_passes(self, configs: Dict[Any, Dict[str, nn.Module]]) -> Tuple[float, Dict[Any, float], int]:
        """Teacher and candidates scored by ``get_model_acc`` over the whole test set; with
        several ranks each scores every ``world_size``-th of them and all gather the results."""
        bm, mm = self.block_manager, self.model_manager
        jobs: List[Tuple[Any, Optional[Dict[str, nn.Module]]]] = [("teacher", None)]
        jobs += [(("config", k), c) for k, c in configs.items()]
        with self.precision.layout(self._modules(configs)), self.precision.autocast():
            mine = {key: mm.get_model_acc(bm.teacher if c is None else bm.compose(c), self.full_test_loader,
                                          self.device)
                    for key, c in jobs[self.ranks.rank::self.ranks.world_size]}
        scores = {k: v for part in self.ranks.all_gather(mine, "gathering the scores") for k, v in part.items()}
        return scores["teacher"], {k: scores[("config", k)] for k in configs}, -1

    def profile_all_blocks(self, num_compositions: int = 24, seed: int = 0) -> ModelProfile:
        """Measure every (block, sparsity) and write the profile files.

        In the same pass over the test set, ``num_compositions`` whole compositions (every
        level, then random ones) are measured end to end and the accuracy estimate the
        optimizer maximizes is fitted on them (:mod:`accuracy_fit`), written as
        ``accuracy_estimate.json`` with its cross-validated error. ``num_compositions=0``
        skips them; the optimizer then falls back to summed single-block drops.

        Args:
            num_compositions: whole compositions measured to fit the accuracy estimate.
            seed: draws the random compositions.

        Returns:
            The profile (teacher metric, size, FLOPs; per descendant its metric drop,
            bytes, FLOPs and parameters), also written as ``block_profile.json`` and
            ``block_profile.csv``.
        """
        check_int("num_compositions", num_compositions, minimum=0,
                  hint="pass e.g. num_compositions=24, or 0 to skip the fitted estimate")
        check_int("seed", seed)
        self._check_data()
        start = time.perf_counter()
        bm, mm = self.block_manager, self.model_manager
        descendants = self._descendants()
        configs: Dict[Any, Dict[str, nn.Module]] = {k: {k[0]: m} for k, m in descendants.items()}
        compositions = sample_compositions(bm.block_names, bm.block_sparsity, num_compositions, seed)
        for cfg in compositions:
            configs[("composition", cfg)] = {n: descendants[(n, s)] for n, s in zip(bm.block_names, cfg) if s > 0}
        teacher_metric, metrics, samples = self._score(configs, replay=True)
        teacher = bm.model
        flops, params = mm.get_model_flops_and_param(teacher, self.model_input_size)
        size = count_bytes(teacher)
        rows: List[BlockProfile] = []
        block_bytes = block_flops = block_params = 0
        for name in bm.block_names:
            for s in bm.block_sparsity:
                d = self.store.descendant(name, s)
                metric = teacher_metric if s == 0 else metrics[(name, s)]
                rows.append(BlockProfile(name, s, teacher_metric - metric, metric, d.bytes, d.flops, d.params))
                if s == 0:
                    block_bytes, block_flops, block_params = block_bytes + d.bytes, block_flops + d.flops, block_params + d.params
        profile = ModelProfile(
            metric_name=self.metric_name,
            teacher_metric=teacher_metric,
            teacher_size_bytes=size,
            teacher_flops=int(flops),
            teacher_params=int(params),
            frame_size_bytes=size - block_bytes,
            frame_flops=int(flops) - block_flops,
            frame_params=int(params) - block_params,
            fingerprint=bm.fingerprint,
            num_test_samples=samples,
            blocks=tuple(rows),
            weights_digest=self.store.weights_digest,
        )
        if self.ranks.is_main:
            self._write_profile(profile, teacher_metric, metrics, compositions)
        self.ranks.barrier("waiting for rank 0 to write the profile")
        if self.verbose:
            synchronize(self.device)  # queued GPU work counts in the time
            tqdm.write(f"profiled {len(descendants)} descendants in {time.perf_counter() - start:.1f} s; "
                       f"teacher {self.metric_name} {teacher_metric:.4f}")
        return profile

    def _write_profile(self, profile: ModelProfile, teacher_metric: float, metrics: Dict[Any, float],
                       compositions: Sequence[Tuple[float, ...]]) -> None:
        """The profile files and the accuracy estimate fitted on the measured compositions."""
        bm = self.block_manager
        profile.save(self.trained_dir)
        estimate_path = self.trained_dir / ACCURACY_ESTIMATE_JSON
        if compositions:
            fitted = fit_accuracy_model(
                self.metric_name, teacher_metric, bm.block_names, bm.block_sparsity,
                {k: teacher_metric - v for k, v in metrics.items() if k[0] != "composition"},
                [MeasuredComposition(cfg, metrics[("composition", cfg)]) for cfg in compositions],
            )
            dataclasses.replace(fitted, weights_digest=self.store.weights_digest).save(self.trained_dir)
        elif estimate_path.exists():
            estimate_path.unlink()  # an estimate fitted on other weights must not outlive them

    def validate_accuracy_model(self, num_compositions: int = 10, seed: int = 0) -> AccuracyModelReport:
        """Compare the accuracy estimates with the measured metric of new random compositions.

        Needs :meth:`profile_all_blocks` first; writes ``accuracy_model.json``.
        """
        check_int("num_compositions", num_compositions, minimum=1, hint="pass e.g. num_compositions=10")
        check_int("seed", seed)
        self._check_data()
        profile = ModelProfile.load(self.trained_dir)
        table = profile.table()
        bm = self.block_manager
        rng = random.Random(seed)
        configs = [tuple(rng.choice(bm.block_sparsity) for _ in bm.block_names) for _ in range(num_compositions)]
        modules = {}
        for cfg in configs:
            for name, s in zip(bm.block_names, cfg):
                if s > 0 and (name, s) not in modules:
                    modules[(name, s)] = bm.load_descendant(self.store, name, s).eval()
        replacements = {i: {n: modules[(n, s)] for n, s in zip(bm.block_names, cfg) if s > 0}
                        for i, cfg in enumerate(configs)}
        _, measured, _ = self._score(replacements, replay=False)
        teacher = profile.teacher_metric
        drops = [[table[n][s].metric_drop for n, s in zip(bm.block_names, cfg)] for cfg in configs]
        estimated = [teacher - sum(d) for d in drops]
        multiplicative = [teacher * math.prod(max(0.0, 1 - x / teacher) for x in d) if teacher > 0 else teacher - sum(d)
                          for d in drops]
        fitted = estimate_or_none(self.trained_dir)
        report = AccuracyModelReport(tuple(configs), tuple(estimated), tuple(measured[i] for i in range(len(configs))),
                                     tuple(multiplicative),
                                     tuple(fitted.estimate(cfg) for cfg in configs) if fitted else ())
        if self.ranks.is_main:
            self._write_report(profile, report, fitted is not None)
        self.ranks.barrier("waiting for rank 0 to write the accuracy-model report")
        return report

    def _write_report(self, profile: ModelProfile, report: AccuracyModelReport, fitted: bool) -> None:
        """``accuracy_model.json``: the estimates against the measured compositions."""
        atomic_write_text(
            self.store.path(ACCURACY_MODEL_CHOICE),
            json.dumps({"metric_name": profile.metric_name, "weights_digest": self.store.weights_digest, "compositions": [list(c) for c in report.compositions],
                        "estimated": list(report.estimated), "measured": list(report.measured),
                        "estimated_multiplicative": list(report.estimated_multiplicative),
                        "mean_abs_error": report.mean_abs_error, "max_abs_error": report.max_abs_error,
                        "mean_abs_error_multiplicative": report.mean_abs_error_multiplicative,
                        "estimated_fitted": list(report.estimated_fitted),
                        "mean_abs_error_fitted": report.mean_abs_error_fitted if fitted else None,
                        "max_abs_error_fitted": report.max_abs_error_fitted if fitted else None,
                        "best": report.best}, indent=1),
        )
