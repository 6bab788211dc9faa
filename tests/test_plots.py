"""legodnn.plots: the Pareto-front helper on hand-made points, and every plot writes a PNG.

The profiles are made by hand (no model, no store), so this runs in a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from legodnn.offline.block_profiler import AccuracyModelReport
from legodnn.offline.profiles import BlockProfile, ModelProfile
from legodnn.online.latency_profile import BlockLatency, LatencyProfile
from legodnn.plots import (
    Composition,
    EstimateSeries,
    accuracy_series,
    latency_series,
    pareto_front,
    plot_accuracy_front,
    plot_drop_heatmap,
    plot_estimated_vs_measured,
)

pytest.importorskip("matplotlib")

SPARSITIES = (0.0, 0.3, 0.6)
BLOCKS = ("block_0", "block_1", "block_2")


def profile() -> ModelProfile:
    """Three blocks at three sparsities; drops grow with sparsity and block index."""
    rows = []
    for b, name in enumerate(BLOCKS):
        for s in SPARSITIES:
            drop = s * (b + 1) / 10
            rows.append(BlockProfile(name, s, drop, 0.9 - drop, int(1000 * (1 - s) * (b + 1)), 10_000, 250 * (b + 1)))
    return ModelProfile("accuracy", 0.9, 8000, 100_000, 2000, 2000, 40_000, 500, "f" * 64, 100, tuple(rows))


def latency() -> LatencyProfile:
    blocks = tuple(BlockLatency(n, s, 1e-3 * (1 - s / 2)) for n in BLOCKS for s in SPARSITIES)
    validation = {"measured_s": [4e-3, 3e-3], "estimated_s": [4.1e-3, 2.9e-3], "estimated_raw_s": [4.5e-3, 3.3e-3]}
    return LatencyProfile("cpu:test", "torch", 1, "2", "0.1", "f" * 64, (1, 3, 32, 32), 4e-3, 1e-3, blocks,
                          validation=validation)


@pytest.mark.parametrize("points, front", [
    ([], []),
    ([(1.0, 0.5)], [0]),
    # cost up, accuracy up: every point is on the front, by increasing cost
    ([(3.0, 0.9), (1.0, 0.5), (2.0, 0.7)], [1, 2, 0]),
    # (2, 0.6) is beaten by (1, 0.7): cheaper and more accurate
    ([(1.0, 0.7), (2.0, 0.6), (3.0, 0.8)], [0, 2]),
    # same cost, less accurate: beaten; same accuracy, more cost: beaten
    ([(1.0, 0.7), (1.0, 0.6), (2.0, 0.7)], [0]),
    # equal points do not beat each other
    ([(1.0, 0.7), (1.0, 0.7), (2.0, 0.9)], [0, 1, 2]),
    # NaN and infinite coordinates are left out
    ([(float("nan"), 0.9), (1.0, 0.5), (2.0, float("inf")), (3.0, 0.6)], [1, 3]),
])
def test_pareto_front(points, front) -> None:
    assert pareto_front(points) == front


def test_pareto_front_matches_the_definition_on_a_grid() -> None:
    points = [(float(x % 7), float((x * 5) % 11)) for x in range(40)]

    def beaten(p):
        return any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)

    assert sorted(pareto_front(points)) == sorted(i for i, p in enumerate(points) if not beaten(p))


def test_composition_adds_up_the_profile() -> None:
    p, lat = profile(), latency()
    teacher = Composition.of((0.0, 0.0, 0.0), 0.9, p, lat)
    assert teacher.size_bytes == p.frame_size_bytes + 1000 + 2000 + 3000
    assert teacher.params == p.frame_params + 250 + 500 + 750
    assert teacher.latency_s == pytest.approx(1e-3 + 3e-3)
    assert Composition.of((0.6, 0.0, 0.0), 0.8, p).latency_s is None


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("x", ["size_bytes", "params", "latency_s"])
def test_front_plot(x, tmp_path: Path) -> None:
    p, lat = profile(), latency()
    configs = [(a, b, c) for a in SPARSITIES for b in SPARSITIES for c in SPARSITIES]
    points = [Composition.of(cfg, 0.9 - sum(cfg) / 10, p, lat) for cfg in configs]
    picks = [Composition.of((0.3, 0.0, 0.0), 0.87, p, lat)]
    out = plot_accuracy_front(points, tmp_path / "sub" / f"front_{x}.png", x, picks)
    assert out == tmp_path / "sub" / f"front_{x}.png"
    assert_png(out)


def test_front_plot_refuses_an_unknown_axis_and_missing_latencies(tmp_path: Path) -> None:
    points = [Composition((0.0,), 0.9, 100, 10)]
    with pytest.raises(ValueError, match="x must be one of"):
        plot_accuracy_front(points, tmp_path / "a.png", "flops")
    with pytest.raises(ValueError, match="latency needs a latency profile"):
        plot_accuracy_front(points, tmp_path / "a.png", "latency_s")


def test_drop_heatmap(tmp_path: Path) -> None:
    assert_png(plot_drop_heatmap(profile(), tmp_path / "drops.png"))


def test_estimated_vs_measured(tmp_path: Path) -> None:
    report = AccuracyModelReport(((0.3, 0.0, 0.0), (0.6, 0.6, 0.6)), (0.87, 0.6), (0.86, 0.5), (), (0.865, 0.52))
    series = accuracy_series(report)
    assert [s.label for s in series] == ["fitted", "additive"]
    assert_png(plot_estimated_vs_measured(series, tmp_path / "accuracy.png"))
    lat = latency_series(latency())
    assert [s.label for s in lat] == ["calibrated", "uncalibrated"] and lat[0].measured == pytest.approx((4.0, 3.0))
    assert_png(plot_estimated_vs_measured(lat, tmp_path / "latency.png", "latency (ms)"))
    assert latency_series(LatencyProfile(**{**latency().__dict__, "validation": {}})) == []
    with pytest.raises(ValueError, match="every series is empty"):
        plot_estimated_vs_measured([EstimateSeries("none", (), ())], tmp_path / "empty.png")
