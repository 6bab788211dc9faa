"""An accuracy estimate fitted on measured compositions, that the exact optimizer can still maximize.

The method's estimate, teacher minus the summed drops of the blocks measured one at a
time, misses how errors compound: with every block pruned deeply the model is far
worse than the sum says, exactly where a tight budget sends the optimizer. This
estimate keeps the separable shape and adds what the measurements show::

    estimate(c) = teacher - h(sum_b t[b, c_b])
    h(z) = max_drop * (1 - exp(-(z + curvature * z^2) / max_drop))

``h`` is the summed drop for small ``z`` (so the terms read as drops), grows faster
than the sum as pruning compounds (``curvature >= 0``), and saturates at ``max_drop``
(a model cannot fall below chance; a deeply pruned one ends near it). The per-block
terms ``t`` start from the single-block drops and are fitted, together with
``curvature`` and ``max_drop``, on compositions measured end to end. ``t`` is kept
non-negative and non-decreasing in sparsity (more pruning never costs less), so no
descendant looks free unless the data say so. ``h`` is increasing, so maximizing the
estimate under budgets is minimizing ``sum_b t[b, c_b]``: still a multiple-choice
knapsack with per-block values, solved exactly. Its error is measured by k-fold
cross-validation over the compositions, and reported with every estimate.

The whole levels (every block at the same sparsity) are not estimated but measured:
composition-aware retraining trains each of them at every step, so they end far better
than the mixed compositions a separable fit describes (README's digits demo: every block
at 0.8 measures 91.9%, a fit on all the compositions said 76.2%). The profiler measures
them in its pass anyway; the fit then describes the mixes alone, and ``estimate`` gives a
measured level its measurement. The optimizer stays exact on that piecewise objective
(:mod:`legodnn.online.level_search`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..blockmanager.store import ACCURACY_ESTIMATE, atomic_write_text
from ..errors import InvalidArgumentError, StoreError
from ..validation import check_bool

__all__ = [
    "ACCURACY_ESTIMATE_JSON",
    "FittedAccuracyModel",
    "MeasuredComposition",
    "estimate_or_none",
    "fit_accuracy_model",
    "refit_accuracy_model",
    "sample_compositions",
]

ACCURACY_ESTIMATE_JSON = ACCURACY_ESTIMATE


@dataclass(frozen=True)
class MeasuredComposition:
    """One composition (a sparsity per block, in block order) and its measured metric."""

    sparsities: Tuple[float, ...]
    metric: float


@dataclass(frozen=True)
class FittedAccuracyModel:
    """Teacher metric minus an increasing link of summed per-block terms.

    ``terms[b][k]`` belongs to block ``block_names[b]`` at ``sparsities[k]`` (0 at
    sparsity 0). ``heldout_*`` are the cross-validated errors on measured compositions
    (in metric units; NaN when there were too few compositions to hold any out).
    ``levels`` holds ``(sparsity, metric)`` of the whole levels that were measured and
    are taken as measured (empty: every composition is estimated by the fit).
    """

    metric_name: str
    teacher_metric: float
    block_names: Tuple[str, ...]
    sparsities: Tuple[float, ...]
    terms: Tuple[Tuple[float, ...], ...]
    curvature: float
    max_drop: float
    heldout_mean_abs_error: float
    heldout_max_abs_error: float
    num_compositions: int
    weights_digest: str = ""  # the store's weights it was fitted on (BlockStore.weights_digest)
    # what it was fitted on, kept so that it can be refitted, plotted or audited without
    # measuring again: the compositions (block order) and their measured metric
    measured: Tuple[MeasuredComposition, ...] = ()
    levels: Tuple[Tuple[float, float], ...] = ()

    def level_metric(self, sparsities: Sequence[float]) -> Optional[float]:
        """The measured metric when ``sparsities`` is a whole level that was measured, else ``None``."""
        level = _whole_level(sparsities)
        return None if level is None else dict(self.levels).get(level)

    def link(self, z: float) -> float:
        return _link(z, self.curvature, self.max_drop)

    def term(self, block: str, sparsity: float) -> float:
        return self.terms[self.block_names.index(block)][self.sparsities.index(sparsity)]

    def total(self, sparsities: Sequence[float]) -> float:
        return sum(self.terms[b][self.sparsities.index(s)] for b, s in enumerate(sparsities))

    def estimate(self, sparsities: Sequence[float]) -> float:
        """The estimated metric of the composition (one sparsity per block, in block order):
        a measured whole level's measurement, otherwise the fit."""
        measured = self.level_metric(sparsities)
        return measured if measured is not None else self.teacher_metric - self.link(self.total(sparsities))

    def estimate_from_total(self, total: float) -> float:
        return self.teacher_metric - self.link(total)

    def save(self, directory: Union[str, Path]) -> Path:
        path = Path(directory) / ACCURACY_ESTIMATE_JSON
        data = asdict(self)
        data["measured"] = [{"sparsities": list(m.sparsities), "metric": m.metric} for m in self.measured]
        atomic_write_text(path, json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "FittedAccuracyModel":
        path = Path(directory) / ACCURACY_ESTIMATE_JSON
        if not path.is_file():
            raise StoreError(f"{path} is missing: run BlockProfiler(...).profile_all_blocks() first")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            model = cls(
                metric_name=str(d["metric_name"]),
                teacher_metric=float(d["teacher_metric"]),
                block_names=tuple(d["block_names"]),
                sparsities=tuple(float(s) for s in d["sparsities"]),
                terms=tuple(tuple(float(t) for t in row) for row in d["terms"]),
                curvature=float(d["curvature"]),
                max_drop=float(d["max_drop"]),
                heldout_mean_abs_error=float(d["heldout_mean_abs_error"]),
                heldout_max_abs_error=float(d["heldout_max_abs_error"]),
                num_compositions=int(d["num_compositions"]),
                weights_digest=str(d.get("weights_digest", "")),
                measured=tuple(MeasuredComposition(tuple(float(x) for x in m["sparsities"]), float(m["metric"]))
                               for m in d.get("measured", ())),  # absent in files written before it was kept
                levels=tuple((float(s), float(m)) for s, m in d.get("levels", ())),  # absent in older files
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"cannot read {path}: {exc}; profile the blocks again") from exc
        values = [model.teacher_metric, model.curvature, model.max_drop, *(t for row in model.terms for t in row)]
        if not all(math.isfinite(v) for v in values) or model.curvature < 0 or model.max_drop <= 0 or any(
                t < 0 for row in model.terms for t in row):
            raise StoreError(f"{path} holds non-finite or negative terms; profile the blocks again")
        if len(model.terms) != len(model.block_names) or any(len(r) != len(model.sparsities) for r in model.terms):
            raise StoreError(f"{path} has terms of the wrong shape; profile the blocks again")
        if any(len(m.sparsities) != len(model.block_names) or not math.isfinite(m.metric) for m in model.measured):
            raise StoreError(f"{path} holds a measured composition of the wrong length or a non-finite metric; "
                             "profile the blocks again")
        if any(s not in model.sparsities or s <= 0 or not math.isfinite(m) for s, m in model.levels) or len(
                {s for s, _ in model.levels}) != len(model.levels):
            raise StoreError(f"{path} holds a measured level that is not one of the pruned sparsities "
                             f"{[s for s in model.sparsities if s > 0]}, twice, or with a non-finite metric; "
                             "profile the blocks again")
        return model


def _whole_level(sparsities: Sequence[float]) -> Optional[float]:
    """The sparsity every block is at, when they all are at one above 0; else ``None``."""
    levels = {float(s) for s in sparsities}
    return levels.pop() if len(levels) == 1 and max(levels) > 0 else None


def _link(z: float, curvature: float, max_drop: float) -> float:
    z = max(z, 0.0)
    return max_drop * -math.expm1(-(z + curvature * z * z) / max_drop)


class _Fit(torch.nn.Module):
    """Parameters: per block, non-negative increments between consecutive sparsities;
    the curvature (>= 0) and the largest drop, a fraction of ``span`` in (0, 1)."""

    def __init__(self, init_terms: torch.Tensor, curvature: float, span: float) -> None:
        super().__init__()
        steps = torch.diff(init_terms, dim=1, prepend=torch.zeros_like(init_terms[:, :1]))[:, 1:]
        dtype = init_terms.dtype
        self.span = span
        self.raw_steps = torch.nn.Parameter(_inv_softplus(steps.clamp_min(1e-6)))
        self.raw_curvature = torch.nn.Parameter(_inv_softplus(torch.tensor(max(curvature, 1e-6), dtype=dtype)))
        self.raw_max_drop = torch.nn.Parameter(torch.tensor(3.0, dtype=dtype))  # sigmoid(3) = 0.95 of the span

    def terms(self) -> torch.Tensor:
        steps = torch.nn.functional.softplus(self.raw_steps)
        return torch.cat([torch.zeros_like(steps[:, :1]), steps.cumsum(1)], dim=1)

    def curvature(self) -> torch.Tensor:
        return torch.nn.functional.softplus(self.raw_curvature)

    def max_drop(self) -> torch.Tensor:
        # at least 1% of the span: a vanishing max_drop would make the link 0/0
        return self.span * (0.01 + 0.99 * torch.sigmoid(self.raw_max_drop))

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        z = (onehot * self.terms()).sum((1, 2))
        d = self.max_drop()
        return -d * torch.expm1(-(z + self.curvature() * z * z) / d)


def _inv_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def _onehot(configs: Sequence[Sequence[float]], sparsities: Sequence[float]) -> torch.Tensor:
    index = {s: k for k, s in enumerate(sparsities)}
    out = torch.zeros(len(configs), len(configs[0]) if configs else 0, len(sparsities), dtype=torch.float64)
    for i, cfg in enumerate(configs):
        for b, s in enumerate(cfg):
            out[i, b, index[float(s)]] = 1.0
    return out


def _fit_once(
    teacher: float,
    init: torch.Tensor,
    configs: Sequence[Sequence[float]],
    metrics: Sequence[float],
    sparsities: Sequence[float],
    ridge: float,
    span: float,
    weights: Optional[Sequence[float]] = None,
) -> Tuple[torch.Tensor, float, float]:
    onehot = _onehot(configs, sparsities)
    drop = teacher - torch.tensor(list(metrics), dtype=torch.float64)
    w = torch.ones_like(drop) if weights is None else torch.tensor(list(weights), dtype=torch.float64)
    w = w / w.mean()
    model = _Fit(init.clamp_min(0).cummax(1).values, 0.1, span)
    prior = init.clamp_min(0)
    # a few dozen parameters: L-BFGS converges in tens of iterations on consistent data; the
    # cap keeps noisy data (which never converges to zero error) from costing seconds per fit
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, max_eval=250, tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w * (model(onehot) - drop) ** 2).mean() + ridge * ((model.terms() - prior) ** 2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        terms, curvature, top = model.terms().detach(), float(model.curvature()), float(model.max_drop())
    if not (bool(torch.isfinite(terms).all()) and math.isfinite(curvature) and math.isfinite(top)):
        # the line search left the finite region: the summed single drops, which never fail
        return prior.cummax(1).values, 0.0, span
    return terms, curvature, top


def fit_accuracy_model(
    metric_name: str,
    teacher_metric: float,
    block_names: Sequence[str],
    sparsities: Sequence[float],
    single_drops: Mapping[Tuple[str, float], float],
    compositions: Sequence[MeasuredComposition],
    folds: int = 5,
    ridge: float = 1e-3,
    max_drop: Optional[float] = None,
    single_weight: float = 1.0,
    measured_levels: bool = True,
) -> FittedAccuracyModel:
    """Fit the terms and the curvature on single-block drops and measured compositions.

    ``single_drops[(block, s)]`` is the drop of the teacher with only that block at ``s``
    (what the profiler measures for every descendant); ``compositions`` are whole
    configurations measured on the same data. The error reported is that of ``folds``-fold
    cross-validation over the compositions (each predicted by a fit that never saw it);
    the model returned is fitted on all of them. ``ridge`` pulls each term gently towards
    its single-block drop, which only matters for options no composition used.
    ``max_drop`` bounds the largest drop the link can reach (default: the teacher's
    metric, that is a floor of 0; the fit finds the floor within it). ``single_weight``
    weighs each single-block drop against one composition in the squared error.
    ``measured_levels`` (default) takes the whole levels among ``compositions`` as
    measured: they leave the fit (and its cross-validation), which then describes the
    mixed compositions, and ``estimate`` returns their measurement; ``False`` fits every
    composition, levels included, as before.
    """
    span = float(max_drop) if max_drop is not None else max(float(teacher_metric), 1e-6)
    if not (math.isfinite(span) and span > 0):
        raise InvalidArgumentError(f"max_drop must be a positive number, got {max_drop!r}")
    if not (isinstance(single_weight, (int, float)) and math.isfinite(single_weight) and single_weight > 0):
        raise InvalidArgumentError(f"single_weight must be a positive number, got {single_weight!r}")
    names, levels = list(block_names), [float(s) for s in sparsities]
    init = torch.zeros(len(names), len(levels), dtype=torch.float64)
    for b, name in enumerate(names):
        for k, s in enumerate(levels):
            if s > 0:
                init[b, k] = float(single_drops[(name, s)])
    singles: List[Tuple[Tuple[float, ...], float]] = []
    for b, name in enumerate(names):
        for s in levels:
            if s > 0:
                cfg = tuple(s if i == b else 0.0 for i in range(len(names)))
                singles.append((cfg, teacher_metric - float(single_drops[(name, s)])))
    check_bool("measured_levels", measured_levels, "pass measured_levels=False to fit the whole levels too")
    every = [(tuple(float(s) for s in c.sparsities), float(c.metric)) for c in compositions]
    for cfg, _ in every:
        if len(cfg) != len(names) or any(s not in levels for s in cfg):
            raise InvalidArgumentError(f"composition {cfg} does not give one of {levels} for each of {len(names)} blocks")
    whole = {_whole_level(cfg): m for cfg, m in every if measured_levels and _whole_level(cfg) is not None}
    comps = [(cfg, m) for cfg, m in every if _whole_level(cfg) not in whole]

    def fit(points: Sequence[Tuple[Tuple[float, ...], float]]) -> Tuple[torch.Tensor, float, float]:
        data = singles + list(points)
        weights = [float(single_weight)] * len(singles) + [1.0] * len(points)
        return _fit_once(teacher_metric, init, [c for c, _ in data], [m for _, m in data], levels, ridge, span,
                         weights)

    errors: List[float] = []
    k = min(folds, len(comps))
    if k >= 2:
        for f in range(k):
            held = comps[f::k]
            kept = [c for i, c in enumerate(comps) if i % k != f]
            terms, curvature, top = fit(kept)
            for cfg, measured in held:
                z = float(sum(terms[b, levels.index(s)] for b, s in enumerate(cfg)))
                errors.append(teacher_metric - _link(z, curvature, top) - measured)
    terms, curvature, top = fit(comps)
    nan = float("nan")
    return FittedAccuracyModel(
        metric_name=metric_name,
        teacher_metric=float(teacher_metric),
        block_names=tuple(names),
        sparsities=tuple(levels),
        terms=tuple(tuple(float(t) for t in row) for row in terms),
        curvature=float(curvature),
        max_drop=float(top),
        heldout_mean_abs_error=sum(abs(e) for e in errors) / len(errors) if errors else nan,
        heldout_max_abs_error=max(abs(e) for e in errors) if errors else nan,
        num_compositions=len(every),
        measured=tuple(MeasuredComposition(c, m) for c, m in every),
        levels=tuple(sorted(whole.items())),
    )


def refit_accuracy_model(directory: Union[str, Path], **options: Any) -> FittedAccuracyModel:
    """Fit the estimate of a profiled store again from what it measured, without measuring.

    The single-block drops come from ``block_profile.json`` and the compositions from
    the ``measured`` list ``accuracy_estimate.json`` keeps; ``options`` go to
    :func:`fit_accuracy_model` (``measured_levels``, ``ridge``, ...). For a store profiled
    by an earlier version (its whole levels then were fitted, not taken as measured) or
    to try other fit options. Writes ``accuracy_estimate.json`` and returns the fit.
    """
    from .profiles import ModelProfile

    old = FittedAccuracyModel.load(directory)
    if not old.measured:
        raise StoreError(f"{Path(directory) / ACCURACY_ESTIMATE_JSON} keeps no measured compositions (written "
                         "before they were kept): profile the blocks again")
    profile = ModelProfile.load(directory)
    table = profile.table()
    singles = {(b, s): table[b][s].metric_drop for b in old.block_names for s in old.sparsities if s > 0}
    fitted = fit_accuracy_model(old.metric_name, old.teacher_metric, old.block_names, old.sparsities, singles,
                                list(old.measured), **options)
    fitted = replace(fitted, weights_digest=old.weights_digest)
    fitted.save(directory)
    return fitted


def sample_compositions(block_names: Sequence[str], sparsities: Sequence[float], n: int,
                        seed: int = 0) -> List[Tuple[float, ...]]:
    """``n`` distinct compositions to fit on: every whole level first, then random ones.

    The whole levels are where compounding is strongest; random ones (each block uniform
    over the sparsities) cover the mixed configurations a budget picks.
    """
    import random

    rng = random.Random(seed)
    levels = [float(s) for s in sparsities if s > 0]
    out: List[Tuple[float, ...]] = [(s,) * len(block_names) for s in levels][:n]
    tries = 0
    while len(out) < n and tries < 100 * max(1, n):
        tries += 1
        cfg = tuple(rng.choice([float(s) for s in sparsities]) for _ in block_names)
        if sum(s > 0 for s in cfg) >= 2 and cfg not in out:
            out.append(cfg)
    return out


def estimate_or_none(directory: Union[str, Path]) -> Optional[FittedAccuracyModel]:
    """The fitted model of a trained blocks directory, or ``None`` when it has none."""
    path = Path(directory) / ACCURACY_ESTIMATE_JSON
    return FittedAccuracyModel.load(directory) if path.is_file() else None

