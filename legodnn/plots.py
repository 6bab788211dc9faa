"""Pictures of a store: the accuracy/size and accuracy/latency front, per-block drops, and how
good the estimates are.

The front is what a user wants to see first: how much accuracy each byte or millisecond
buys, and where the optimizer's choices sit on it. Every function takes typed data (the
profile objects, or the small dataclasses below), writes one PNG (atomically: a reader
never sees half a file) and returns its path. matplotlib is imported inside the
functions, through its object-oriented API (no pyplot, so no global figure state and no
GUI backend): ``import legodnn.plots`` does not need it, and only those who draw do (it
is in the ``demo`` extra).

:func:`pareto_front` is a pure function (lower cost and higher accuracy are better),
usable without matplotlib.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple, Union

from .blockmanager.atomic import write_bytes_atomic
from .errors import InvalidArgumentError

if TYPE_CHECKING:  # the profile types, for annotations only: importing them here would load torch
    from .offline.block_profiler import AccuracyModelReport
    from .offline.profiles import ModelProfile
    from .online.latency_profile import LatencyProfile

__all__ = [
    "Composition",
    "EstimateSeries",
    "pareto_front",
    "measured_compositions",
    "accuracy_series",
    "latency_series",
    "plot_accuracy_front",
    "plot_drop_heatmap",
    "plot_estimated_vs_measured",
]

PathLike = Union[str, Path]

#: what ``plot_accuracy_front`` can put on its x axis: (attribute, axis label, scale to the unit shown)
X_AXES = {
    "size_bytes": ("model size (MB)", 1e-6),
    "params": ("parameters (millions)", 1e-6),
    "latency_s": ("estimated latency (ms)", 1e3),
}


@dataclass(frozen=True)
class Composition:
    """One composed model: a sparsity per block (in block order), its accuracy and its costs.

    ``accuracy`` is measured for the points of the front and estimated for the
    optimizer's picks; ``latency_s`` is the latency profile's estimate (``None`` without
    one: latency is estimated well, and measuring every composition would take long).
    """

    sparsities: Tuple[float, ...]
    accuracy: float
    size_bytes: int
    params: int
    latency_s: Optional[float] = None

    @classmethod
    def of(cls, sparsities: Sequence[float], accuracy: float, profile: "ModelProfile",
           latency: Optional["LatencyProfile"] = None) -> "Composition":
        """The composition with its size and parameters added up from ``profile`` (frame
        plus each chosen descendant) and its latency estimated from ``latency``."""
        table = profile.table()
        names = list(table)
        chosen = [table[n][s] for n, s in zip(names, sparsities)]
        lat = latency.estimate(dict(zip(names, sparsities))) if latency is not None else None
        return cls(tuple(float(s) for s in sparsities), float(accuracy),
                   profile.frame_size_bytes + sum(p.size_bytes for p in chosen),
                   profile.frame_params + sum(p.params for p in chosen), lat)


@dataclass(frozen=True)
class EstimateSeries:
    """Estimated against measured values of the same compositions, under one label
    ("fitted", "additive", "calibrated" ...), in the unit they are drawn in."""

    label: str
    estimated: Tuple[float, ...]
    measured: Tuple[float, ...]


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the (cost, accuracy) points that no other point beats, by increasing cost.

    A point is beaten when another has a cost no higher and an accuracy no lower, and is
    strictly better in one of them; equal points do not beat each other, so all copies
    of a front point are on the front. Points with a NaN or infinite coordinate are left
    out.
    """
    usable = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    order = sorted(usable, key=lambda i: (points[i][0], -points[i][1]))
    front: List[int] = []
    for i in order:
        if not front or points[i][1] > points[front[-1]][1] or tuple(points[i]) == tuple(points[front[-1]]):
            front.append(i)
    return front


def measured_compositions(store_dir: PathLike) -> List[Composition]:
    """Every composition of a profiled store whose accuracy was measured end to end: the
    teacher, each descendant alone in the teacher (``block_profile.json``) and the random
    compositions ``BlockProfiler.validate_accuracy_model`` measured (``accuracy_model.json``,
    when it was measured on the weights the store holds now)."""
    from .blockmanager.store import ACCURACY_MODEL_CHOICE, BlockStore
    from .offline.profiles import ModelProfile
    from .online.latency_profile import LatencyProfile

    store = BlockStore(store_dir)
    profile = ModelProfile.load(store.root)
    latency = LatencyProfile.load(store.root) if store.path("latency_profile.json").is_file() else None
    if latency is not None and latency.architecture_digest != store.architecture_digest:
        latency = None  # timed other architectures: its estimates do not belong to these blocks
    names = list(profile.table())
    points = [Composition.of((0.0,) * len(names), profile.teacher_metric, profile, latency)]
    for p in profile.blocks:
        if p.sparsity > 0:
            config = tuple(p.sparsity if n == p.block else 0.0 for n in names)
            points.append(Composition.of(config, p.metric, profile, latency))
    validated = store.read_json(ACCURACY_MODEL_CHOICE)
    if validated and validated.get("weights_digest") == store.weights_digest:
        for config, metric in zip(validated["compositions"], validated["measured"]):
            points.append(Composition.of(config, metric, profile, latency))
    return points


def accuracy_series(report: "AccuracyModelReport") -> List[EstimateSeries]:
    """The accuracy estimates of a validation report against its measurements: the fitted
    estimate (when the profile has one) and the method's additive one."""
    series = []
    if report.estimated_fitted:
        series.append(EstimateSeries("fitted", tuple(report.estimated_fitted), tuple(report.measured)))
    series.append(EstimateSeries("additive", tuple(report.estimated), tuple(report.measured)))
    return series


def latency_series(profile: "LatencyProfile") -> List[EstimateSeries]:
    """The latency estimates (ms) of the random compositions the estimator measured to
    validate itself, calibrated and raw; empty when it measured none."""
    v = profile.validation or {}
    if not v.get("measured_s"):
        return []
    ms = lambda values: tuple(1e3 * t for t in values)  # noqa: E731
    return [EstimateSeries("calibrated", ms(v["estimated_s"]), ms(v["measured_s"])),
            EstimateSeries("uncalibrated", ms(v["estimated_raw_s"]), ms(v["measured_s"]))]


def _figure(width: float = 6.4, height: float = 4.8) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_bytes_atomic(path, buf.getvalue())
    return path


def plot_accuracy_front(
    compositions: Sequence[Composition],
    path: PathLike,
    x: str = "size_bytes",
    picks: Sequence[Composition] = (),
    metric_name: str = "accuracy",
    title: Optional[str] = None,
) -> Path:
    """Accuracy against ``x`` ("size_bytes", "params" or "latency_s") of the measured
    ``compositions``, their Pareto front drawn as a staircase, and the optimizer's
    ``picks`` marked; writes a PNG at ``path`` and returns it."""
    if x not in X_AXES:
        raise InvalidArgumentError(f"x must be one of {sorted(X_AXES)}, got {x!r}")
    label, scale = X_AXES[x]
    usable = [c for c in compositions if getattr(c, x) is not None]
    if not usable:
        raise InvalidArgumentError(f"no composition has a value for {x!r} (latency needs a latency profile)")
    points = [(scale * getattr(c, x), c.accuracy) for c in usable]
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=14, color="0.6",
               label=f"measured compositions ({len(points)})")
    front = [points[i] for i in pareto_front(points)]
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:blue", lw=1.5)
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=22, color="tab:blue", label="Pareto front", zorder=3)
    teacher = [p for p, c in zip(points, usable) if not any(c.sparsities)]
    if teacher:
        ax.scatter([teacher[0][0]], [teacher[0][1]], marker="D", s=40, color="black", label="teacher", zorder=3)
    shown = [c for c in picks if getattr(c, x) is not None]
    if shown:
        ax.scatter([scale * getattr(c, x) for c in shown], [c.accuracy for c in shown], marker="*", s=160,
                   color="tab:red", edgecolor="black", lw=0.5, label="optimizer picks (estimated)", zorder=4)
    ax.ticklabel_format(axis="y", useOffset=False)  # accuracies as they are, not as offsets from one
    ax.set_xlabel(label)
    ax.set_ylabel(metric_name)
    ax.set_title(title or f"{metric_name} against {label.split(' (')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_drop_heatmap(profile: "ModelProfile", path: PathLike, title: Optional[str] = None) -> Path:
    """The metric drop each descendant causes alone in the teacher: blocks (rows) by
    sparsities (columns), the numbers written in the cells; a PNG at ``path``."""
    table = profile.table()
    blocks = list(table)
    sparsities = sorted({s for row in table.values() for s in row})
    drops = [[table[b][s].metric_drop for s in sparsities] for b in blocks]
    fig = _figure(max(4.0, 1.1 * len(sparsities) + 2.5), max(3.0, 0.35 * len(blocks) + 1.5))
    ax = fig.add_subplot()
    low = min(0.0, min(min(r) for r in drops))
    top = max(max(r) for r in drops)
    # no drop at all still reads as "no drop" (white), not as the middle of a +-0.1 scale
    image = ax.imshow(drops, cmap="Reds", aspect="auto", vmin=low, vmax=top if top > low else low + 0.01)
    ax.set_xticks(range(len(sparsities)), [f"{s:g}" for s in sparsities])
    ax.set_yticks(range(len(blocks)), blocks)
    ax.set_xlabel("sparsity (fraction of filters removed)")
    ax.set_ylabel("block")
    if len(blocks) * len(sparsities) <= 200:  # numbers stay readable
        for i, row in enumerate(drops):
            for j, d in enumerate(row):
                ax.text(j, i, f"{d:.3f}", ha="center", va="center", fontsize="x-small",
                        color="white" if top > 0 and d > 0.6 * top else "black")
    fig.colorbar(image, ax=ax, label=f"{profile.metric_name} drop")
    ax.set_title(title or f"{profile.metric_name} drop of each descendant alone (teacher {profile.teacher_metric:.4f})")
    return _save(fig, path)


def plot_estimated_vs_measured(series: Sequence[EstimateSeries], path: PathLike, quantity: str = "accuracy",
                               title: Optional[str] = None) -> Path:
    """Estimated against measured values, one colour per series, with the line y = x (a
    perfect estimate); a PNG at ``path``. ``quantity`` labels the axes ("accuracy",
    "latency (ms)")."""
    values = [v for s in series for v in (*s.estimated, *s.measured) if math.isfinite(v)]
    if not values:
        raise InvalidArgumentError("nothing to plot: every series is empty")
    low, high = min(values), max(values)
    pad = 0.05 * (high - low or abs(high) or 1.0)
    fig = _figure(5.2, 5.0)
    ax = fig.add_subplot()
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.4", ls="--", lw=1, label="y = x")
    for s in series:
        errors = [abs(e - m) for e, m in zip(s.estimated, s.measured)]
        mae = sum(errors) / len(errors) if errors else float("nan")
        ax.scatter(s.measured, s.estimated, s=18, label=f"{s.label} (mean abs error {mae:.3g})")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"measured {quantity}")
    ax.set_ylabel(f"estimated {quantity}")
    ax.set_title(title or f"estimated against measured {quantity.split(' (')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)
