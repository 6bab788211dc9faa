"""solve() against brute_force() on random instances, the infeasible answers, and input checks.

Ties make the optimal choice ambiguous, so answers are compared by total drop (to 1e-9),
feasibility and ``binding``, and every answer's latency and memory are recomputed.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import pytest

from legodnn.online import mckp_search
from legodnn.online.solver import REL_TOL, ScalingProblem, Solution, brute_force, cheapest, solve

FRACTIONS = (0.0, 0.3, 0.5, 0.7, 1.0)  # of the way from the cheapest to the dearest configuration


def realistic(
    rng: np.random.Generator,
    blocks: int,
    options: int,
    *,
    ragged: bool = False,
    negative: bool = False,
    ties: bool = False,
) -> ScalingProblem:
    """Drops grow and costs shrink with sparsity, with noise; option counts may differ."""
    drops, lats, mems = [], [], []
    for _ in range(blocks):
        k = int(rng.integers(1, options + 1)) if ragged else options
        s = np.linspace(0.0, 0.8, k)
        if ties:  # few distinct values: many configurations share the optimum
            drops.append(rng.integers(0, 3, k).astype(float))
            lats.append(rng.integers(1, 4, k).astype(float))
            mems.append(rng.integers(1, 4, k).astype(float))
            continue
        drop = np.cumsum(np.concatenate([[0.0], rng.uniform(0.0, 3.0, k - 1)])) * rng.uniform(
            0.2, 2
        )
        drops.append(drop + rng.normal(0.0, 0.3 if negative else 0.02, k))
        lats.append(
            rng.uniform(0.5e-3, 5e-3) * (1 - rng.uniform(0.3, 0.9) * s) * rng.uniform(0.95, 1.05, k)
        )
        mems.append(rng.uniform(0.2e6, 5e6) * (1 - s) ** rng.uniform(1.0, 2.0) + 1e4)
    frame_l, frame_m = (0.0, 0.0) if ties else (rng.uniform(1e-3, 5e-3), rng.uniform(1e6, 4e6))
    return ScalingProblem.from_arrays(drops, lats, mems, frame_l, frame_m)


def between(problem: ScalingProblem, fraction: float, resource: str) -> float:
    """A budget ``fraction`` of the way from the cheapest to the dearest configuration."""
    rows = problem.latencies if resource == "latency" else problem.memories
    frame = problem.frame_latency if resource == "latency" else problem.frame_memory
    low, high = frame + sum(min(r) for r in rows), frame + sum(max(r) for r in rows)
    return low + fraction * (high - low)


def recomputed(problem: ScalingProblem, choice: tuple) -> tuple:
    drop = sum(problem.drops[b][k] for b, k in enumerate(choice))
    lat = problem.frame_latency + sum(problem.latencies[b][k] for b, k in enumerate(choice))
    mem = problem.frame_memory + sum(problem.memories[b][k] for b, k in enumerate(choice))
    return drop, lat, mem


def check(
    problem: ScalingProblem, max_latency: Optional[float], max_memory: Optional[float]
) -> Solution:
    """solve() agrees with brute_force() and reports its own configuration truthfully."""
    got, ref = (
        solve(problem, max_latency, max_memory),
        brute_force(problem, max_latency, max_memory),
    )
    context = f"budgets {max_latency!r}, {max_memory!r}: solve {got}, brute force {ref}"
    assert got.feasible == ref.feasible, context
    assert got.binding == ref.binding, context
    assert got.total_drop == pytest.approx(ref.total_drop, rel=0, abs=1e-9), context
    assert len(got.choice) == problem.num_blocks
    assert all(0 <= k < len(problem.drops[b]) for b, k in enumerate(got.choice))
    drop, lat, mem = recomputed(problem, got.choice)
    assert (got.total_drop, got.latency, got.memory) == pytest.approx((drop, lat, mem), rel=1e-12)
    if got.feasible:
        assert got.binding == ()
        assert max_latency is None or lat <= max_latency * (1 + REL_TOL), context
        assert max_memory is None or mem <= max_memory * (1 + REL_TOL), context
    else:  # the closest configuration: same resources as the reference's
        assert got.latency == pytest.approx(ref.latency, rel=1e-12), context
        assert got.memory == pytest.approx(ref.memory, rel=1e-12) or got.binding != ("memory",)
    return got


@pytest.fixture(params=["pairs", "search"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Small problems are enumerated in two halves; "search" forces the branch and bound."""
    if request.param == "search":
        monkeypatch.setattr(mckp_search, "_PAIR_LIMIT", 0)
    return request.param


def budget_grid(problem: ScalingProblem) -> Iterator[tuple]:
    for fl in FRACTIONS[1:4]:
        for fm in FRACTIONS[1:4]:
            yield between(problem, fl, "latency"), between(problem, fm, "memory")


# -- exactness ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_realistic_instances_match_brute_force(engine: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    problem = realistic(rng, int(rng.integers(2, 8)), int(rng.integers(2, 5)))
    for budgets in budget_grid(problem):
        check(problem, *budgets)


@pytest.mark.parametrize("seed", range(3))
def test_eight_blocks_of_four_match_brute_force(engine: str, seed: int) -> None:
    problem = realistic(np.random.default_rng(1000 + seed), 8, 4)  # 65,536 configurations
    for f in (0.3, 0.5, 0.7):
        check(problem, between(problem, f, "latency"), between(problem, f, "memory"))


@pytest.mark.parametrize("seed", range(30))
def test_ragged_options_and_negative_drops_match_brute_force(engine: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    problem = realistic(rng, int(rng.integers(1, 8)), 5, ragged=True, negative=True)
    assert any(d < 0 for row in problem.drops for d in row) or seed > 5
    for f in (0.3, 0.6):
        check(problem, between(problem, f, "latency"), between(problem, 1 - f, "memory"))


@pytest.mark.parametrize("seed", range(30))
def test_ties_match_brute_force(engine: str, seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    problem = realistic(rng, int(rng.integers(2, 8)), 4, ragged=seed % 2 == 1, ties=True)
    for budgets in budget_grid(problem):
        check(problem, *budgets)


@pytest.mark.parametrize("seed", range(20))
def test_one_budget_or_none_match_brute_force(engine: str, seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    problem = realistic(rng, int(rng.integers(1, 8)), 4, ragged=True)
    for f in (0.2, 0.6):
        check(problem, between(problem, f, "latency"), None)
        check(problem, None, between(problem, f, "memory"))
    unconstrained = check(problem, None, None)
    assert unconstrained.choice == check(problem, math.inf, math.inf).choice
    assert unconstrained.total_drop == pytest.approx(sum(min(r) for r in problem.drops))


@pytest.mark.parametrize("seed", range(20))
def test_budget_equal_to_a_configuration_admits_it(engine: str, seed: int) -> None:
    rng = np.random.default_rng(400 + seed)
    problem = realistic(rng, int(rng.integers(1, 7)), 4, ragged=True, negative=seed % 3 == 0)
    target = tuple(int(rng.integers(0, len(r))) for r in problem.drops)
    _, lat, mem = recomputed(problem, target)
    got = check(problem, lat, mem)
    assert got.feasible
    assert got.total_drop <= recomputed(problem, target)[0] + 1e-9
    # the same budgets with memory binding alone and latency binding alone
    check(problem, lat, None)
    check(problem, None, mem)


@pytest.mark.parametrize(
    "knobs", [{"_FIRST_LIMIT": 0}, {"_BEAM": 1}, {"_BEAM": 1, "_FIRST_LIMIT": 0}]
)
@pytest.mark.parametrize("seed", range(15))
def test_every_search_path_is_exact(
    monkeypatch: pytest.MonkeyPatch, knobs: dict, seed: int
) -> None:
    # a one-state beam gives poor incumbents; a zero work cap sends every search up the ladder
    monkeypatch.setattr(mckp_search, "_PAIR_LIMIT", 0)
    for name, value in knobs.items():
        monkeypatch.setattr(mckp_search, name, value)
    rng = np.random.default_rng(500 + seed)
    problem = realistic(
        rng, int(rng.integers(3, 8)), 4, ragged=seed % 2 == 0, negative=seed % 3 == 0
    )
    for f in (0.3, 0.5, 0.7):
        check(problem, between(problem, f, "latency"), between(problem, f, "memory"))


# -- infeasible budgets ---------------------------------------------------------------------


def crossed() -> ScalingProblem:
    """Two blocks, each fast-but-big or slow-but-small: each budget alone is easy, not both."""
    return ScalingProblem.from_arrays(
        drops=[[0.0, 1.0], [0.0, 1.0]],
        latencies=[[1.0, 10.0], [1.0, 10.0]],
        memories=[[10.0, 1.0], [10.0, 1.0]],
    )


def test_jointly_infeasible_budget_binds_both_together() -> None:
    problem = crossed()  # (lat, mem): both fast (2, 20), mixed (11, 11), both small (20, 2)
    got = check(problem, 5.0, 5.0)
    assert not got.feasible and got.binding == ("latency+memory",)
    # memory is the hard limit: the fastest configuration within 5 bytes is both small
    assert got.choice == (1, 1) and got.memory <= 5.0


def test_latency_alone_binding() -> None:
    problem = crossed()
    got = check(problem, 1.5, 12.0)
    assert got.binding == ("latency",)
    assert got.choice in ((0, 1), (1, 0)) and got.latency == 11.0  # fastest within 12 bytes


def test_memory_alone_binding() -> None:
    problem = crossed()
    got = check(problem, 30.0, 1.5)
    assert got.binding == ("memory",)
    assert got.choice == (1, 1) and got.memory == 2.0  # the smallest configuration


def test_both_budgets_below_the_cheapest() -> None:
    got = check(crossed(), 1.0, 1.0)
    assert got.binding == ("latency", "memory") and got.choice == (1, 1)


@pytest.mark.parametrize("seed", range(20))
def test_random_infeasible_budgets_match_brute_force(engine: str, seed: int) -> None:
    rng = np.random.default_rng(600 + seed)
    problem = realistic(rng, int(rng.integers(1, 7)), 4, ragged=True)
    low_l, low_m = between(problem, 0.0, "latency"), between(problem, 0.0, "memory")
    bindings = set()
    for lat, mem in [
        (0.99 * low_l, between(problem, 0.5, "memory")),
        (between(problem, 0.5, "latency"), 0.99 * low_m),
        (0.99 * low_l, 0.99 * low_m),
        (low_l * (1 + 1e-9), low_m * (1 + 1e-9)),  # barely above each cheapest: often joint
        (0.99 * low_l, None),
        (None, 0.99 * low_m),
    ]:
        got = check(problem, lat, mem)
        bindings.add(got.binding)
    assert {("latency",), ("memory",), ("latency", "memory")} <= bindings


# -- the other entry points ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_cheapest_is_the_least_latency_or_memory(seed: int) -> None:
    problem = realistic(np.random.default_rng(700 + seed), 5, 4, ragged=True)
    totals = [recomputed(problem, c) for c in np.ndindex(*(len(r) for r in problem.drops))]
    fast, small = cheapest(problem, "latency"), cheapest(problem, "memory")
    assert fast.feasible and fast.binding == ()
    assert fast.latency == pytest.approx(min(t[1] for t in totals), rel=1e-12)
    assert small.memory == pytest.approx(min(t[2] for t in totals), rel=1e-12)
    assert (fast.total_drop, fast.latency, fast.memory) == pytest.approx(
        recomputed(problem, fast.choice)
    )
    assert cheapest(problem).choice == fast.choice


def test_brute_force_reports_every_configuration_as_nodes() -> None:
    problem = realistic(np.random.default_rng(0), 3, 3)
    assert brute_force(problem, None, None).nodes == 27


def test_solution_is_frozen_and_problem_hashable() -> None:
    problem = crossed()
    got = solve(problem, 20.0, 20.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.total_drop = 0.0  # type: ignore[misc]
    assert hash(problem) == hash(crossed()) and problem == crossed()
    assert got.solve_seconds >= 0.0 and got.nodes >= 0


def test_from_arrays_accepts_arrays_lists_and_ragged_rows() -> None:
    a = np.array([[0.0, 1.0], [0.0, 2.0]])
    problem = ScalingProblem.from_arrays(a, a + 1, [np.array([3.0, 1.0]), [4, 2]], 1, 2)
    assert problem.drops == ((0.0, 1.0), (0.0, 2.0))
    assert problem.memories == ((3.0, 1.0), (4.0, 2.0))
    assert (problem.frame_latency, problem.frame_memory) == (1.0, 2.0)
    ragged = ScalingProblem.from_arrays(
        [[0.0], [0.0, 1.0, 2.0]], [[1.0], [3, 2, 1]], [[1.0], [3, 2, 1]]
    )
    assert [len(r) for r in ragged.drops] == [1, 3] and ragged.num_configurations == 3
    direct = ScalingProblem([[0.0, 1.0]], [[2.0, 1.0]], [[2.0, 1.0]])  # type: ignore[arg-type]
    assert direct.drops == ((0.0, 1.0),)


# -- input checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("drops", math.nan, "drop of block 1, option 0 is nan"),
        ("latencies", math.inf, "latency of block 1, option 0 is inf"),
        ("memories", -math.inf, "memory of block 1, option 0 is -inf"),
    ],
)
def test_non_finite_numbers_are_named(field: str, value: float, message: str) -> None:
    rows = {
        "drops": [[0.0, 1.0], [0.0, 1.0]],
        "latencies": [[2.0, 1.0], [2.0, 1.0]],
        "memories": [[2.0, 1.0], [2.0, 1.0]],
    }
    rows[field][1][0] = value
    with pytest.raises(ValueError, match=message):
        ScalingProblem.from_arrays(**rows)


@pytest.mark.parametrize(
    ("drops", "lats", "mems", "message"),
    [
        ([], [], [], "at least one block"),
        ([[0.0]], [[1.0], [1.0]], [[1.0]], "drops for 1 blocks, latencies for 2"),
        ([[0.0, 1.0]], [[1.0]], [[1.0, 2.0]], "block 0 has 2 drops, 1 latencies and 2 memories"),
        ([[0.0], []], [[1.0], []], [[1.0], []], "block 1 has no options"),
    ],
)
def test_shape_mismatches_are_named(drops: list, lats: list, mems: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScalingProblem.from_arrays(drops, lats, mems)


def test_non_finite_frame_is_rejected() -> None:
    with pytest.raises(ValueError, match="frame_memory must be a finite number"):
        ScalingProblem.from_arrays([[0.0]], [[1.0]], [[1.0]], frame_memory=math.nan)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, -math.inf])
@pytest.mark.parametrize("entry", [solve, brute_force])
def test_budgets_must_be_positive(entry, bad: float) -> None:  # noqa: ANN001
    problem = crossed()
    with pytest.raises(ValueError, match="max_latency must be positive seconds"):
        entry(problem, bad, 10.0)
    with pytest.raises(ValueError, match="max_memory must be positive bytes"):
        entry(problem, 10.0, bad)


def test_brute_force_refuses_huge_problems_and_cheapest_unknown_objectives() -> None:
    huge = ScalingProblem.from_arrays([[0.0] * 5] * 10, [[1.0] * 5] * 10, [[1.0] * 5] * 10)
    with pytest.raises(ValueError, match="brute_force refuses 9,765,625 configurations"):
        brute_force(huge, None, None)
    assert solve(huge, 100.0, 100.0).feasible  # solve has no such limit
    with pytest.raises(ValueError, match="objective must be 'latency' or 'memory'"):
        cheapest(crossed(), "flops")


@pytest.mark.slow
def test_online_phase_imports_without_optional_packages() -> None:
    # the device runs the optimizer and the loop with the core only: torch and numpy
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('scipy', 'pulp', 'torchvision', 'onnx', 'onnxruntime', 'thop'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from legodnn.online import solver, ScalingOptimizer, OnDeviceRuntime\n"
        "import legodnn.online.cli\n"
        "p = solver.ScalingProblem.from_arrays([[0, 1]], [[2, 1]], [[2, 1]])\n"
        "assert solver.solve(p, 1.5, None).choice == (1,)\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=root)


def _all_choices(problem: ScalingProblem) -> List[tuple]:
    return list(np.ndindex(*(len(r) for r in problem.drops)))


def test_brute_force_matches_a_plain_loop() -> None:
    # the reference itself, against the definition, on a small ragged instance
    problem = realistic(np.random.default_rng(9), 4, 4, ragged=True, negative=True)
    lat, mem = between(problem, 0.4, "latency"), between(problem, 0.6, "memory")
    fitting = [
        recomputed(problem, c)[0]
        for c in _all_choices(problem)
        if recomputed(problem, c)[1] <= lat and recomputed(problem, c)[2] <= mem
    ]
    assert brute_force(problem, lat, mem).total_drop == pytest.approx(min(fitting), abs=1e-12)
