"""Exact solver for the online choice: one descendant per block under a latency and a memory budget.

The choice is a multiple-choice knapsack with two constraints: block ``b`` offers options
``k`` (its descendants; option 0 is the original block), each with an accuracy drop, a
latency and a memory size; pick one option per block to minimize the summed drop with
``frame + sum(latency) <= max_latency`` and ``frame + sum(memory) <= max_memory``.

:func:`solve` is exact and vectorized with numpy. Options that cannot fit or are dominated
go first. Up to 131,072 configurations, every configuration of each half of the blocks is
enumerated and the best fitting pair taken (meet in the middle: 8 blocks of 4 options in
about a millisecond). Beyond, a branch and bound bounds whole batches of partial
configurations at once by the LP relaxation of the blocks left under the latency budget,
the memory budget and a surrogate of both (convex piecewise-linear functions of the room
left, tabulated once per depth); a narrow beam finds an incumbent, options whose
Lagrangian bound cannot beat it are fixed out, and a best-first search proves the
optimum. The original LegoDNN rebuilt a PuLP/CBC model on every update (60-80 ms) and
relaxed an infeasible budget 0.1 MB at a time; here an update takes milliseconds and an
infeasible budget gets a direct answer (see :func:`solve`). The search is in
:mod:`.mckp_search`, its LP bounds in :mod:`.mckp_bounds`; this module is the API.

Tolerances: a configuration fits a budget when its total is ``<= budget * (1 + REL_TOL)``,
so a budget equal to a configuration's cost admits it whatever the summation order; the
optimum is exact up to ``REL_TOL`` times the scale of the drops (sum over blocks of the
largest absolute drop).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidProblemError
from .mckp_search import REL_TOL, Rows, enumerate_totals, optimize

__all__ = ["REL_TOL", "ScalingProblem", "Solution", "brute_force", "cheapest", "solve"]

BRUTE_FORCE_LIMIT = 2_000_000


def _as_rows(name: str, rows: Iterable[Iterable[float]]) -> Rows:
    out = []
    for b, row in enumerate(rows):
        values = tuple(float(v) for v in np.asarray(row, dtype=np.float64).reshape(-1))
        for k, v in enumerate(values):
            if not math.isfinite(v):
                raise InvalidProblemError(
                    f"{name} of block {b}, option {k} is {v}; drops, latencies and memories "
                    "must be finite numbers"
                )
        out.append(values)
    return tuple(out)


@dataclass(frozen=True)
class ScalingProblem:
    """Per-block options of one model: accuracy drops, latencies (seconds), memories (bytes).

    ``drops[b][k]`` is the accuracy lost when block ``b`` runs as option ``k`` (may be
    negative: a descendant can beat its teacher). The frame, everything outside the blocks,
    adds ``frame_latency`` and ``frame_memory`` to every configuration. Blocks may offer
    different numbers of options. Lists and arrays are stored as tuples of floats.
    """

    drops: Rows
    latencies: Rows
    memories: Rows
    frame_latency: float = 0.0
    frame_memory: float = 0.0

    def __post_init__(self) -> None:
        names = {"drops": "drop", "latencies": "latency", "memories": "memory"}
        rows = {n: _as_rows(what, getattr(self, n)) for n, what in names.items()}
        drops, lats, mems = rows["drops"], rows["latencies"], rows["memories"]
        if not drops:
            raise InvalidProblemError("a ScalingProblem needs at least one block")
        if not len(drops) == len(lats) == len(mems):
            raise InvalidProblemError(
                f"got drops for {len(drops)} blocks, latencies for {len(lats)} and memories "
                f"for {len(mems)}; every block needs all three"
            )
        for b, (drop, lat, mem) in enumerate(zip(drops, lats, mems)):
            if not drop:
                raise InvalidProblemError(f"block {b} has no options; each block needs at least one")
            if not len(drop) == len(lat) == len(mem):
                raise InvalidProblemError(
                    f"block {b} has {len(drop)} drops, {len(lat)} latencies and {len(mem)} "
                    "memories; each option needs one of each"
                )
        for n in ("frame_latency", "frame_memory"):
            v = float(getattr(self, n))
            if not math.isfinite(v):
                raise InvalidProblemError(f"{n} must be a finite number, got {v}")
            object.__setattr__(self, n, v)
        for n, v in rows.items():
            object.__setattr__(self, n, v)

    @classmethod
    def from_arrays(
        cls,
        drops: Sequence[Sequence[float]] | np.ndarray,
        latencies: Sequence[Sequence[float]] | np.ndarray,
        memories: Sequence[Sequence[float]] | np.ndarray,
        frame_latency: float = 0.0,
        frame_memory: float = 0.0,
    ) -> "ScalingProblem":
        """Build from nested lists or arrays: one row per block, rows may differ in length."""
        return cls(
            _as_rows("drop", drops),
            _as_rows("latency", latencies),
            _as_rows("memory", memories),
            float(frame_latency),
            float(frame_memory),
        )

    @property
    def num_blocks(self) -> int:
        return len(self.drops)

    @property
    def num_configurations(self) -> int:
        return math.prod(len(d) for d in self.drops)


@dataclass(frozen=True)
class Solution:
    """One option per block and what it costs; latency and memory include the frame.

    ``feasible`` is False when no configuration meets both budgets; ``binding`` then says
    why: ``"latency"`` and/or ``"memory"`` when even the cheapest configuration in that
    resource misses its budget, ``"latency+memory"`` when each budget alone can be met but
    not both together; ``()`` when feasible. ``nodes`` counts the partial configurations the
    search expanded plus those it enumerated (diagnostics).
    """

    choice: Tuple[int, ...]
    total_drop: float
    latency: float
    memory: float
    feasible: bool
    binding: Tuple[str, ...]
    solve_seconds: float
    nodes: int


# ---------------------------------------------------------------------------- public API


def solve(
    problem: ScalingProblem, max_latency: Optional[float], max_memory: Optional[float]
) -> Solution:
    """The configuration with the least total drop that fits both budgets, exactly.

    ``None`` (or ``inf``) leaves a budget unconstrained. When no configuration fits, the
    result has ``feasible=False`` and the configuration that comes closest, taking memory as
    the hard limit (a model that does not fit cannot run; a slow one still can): if some
    configuration fits the memory budget, the fastest of those (least drop among equally
    fast ones); otherwise the smallest one (then fastest, then least drop). Both are exact
    answers, not a budget relaxed step by step.
    """
    start = time.perf_counter()
    cap_l = _check_budget("max_latency", max_latency, "seconds")
    cap_m = _check_budget("max_memory", max_memory, "bytes")
    lat_ok, mem_ok = _cheapest_fits(problem, cap_l, cap_m)
    if lat_ok and mem_ok:
        choice, nodes = optimize(
            problem.drops,
            problem.latencies,
            problem.memories,
            _net(cap_l, problem.frame_latency),
            _net(cap_m, problem.frame_memory),
        )
        if choice is not None:
            return _solution(problem, choice, cap_l, cap_m, (), nodes, start)
    binding = _binding(lat_ok, mem_ok)
    if not mem_ok:
        return _solution(problem, _lexmin(problem, "memory"), cap_l, cap_m, binding, 0, start)
    net_m = _net(cap_m, problem.frame_memory)
    fastest, nodes = optimize(problem.latencies, problem.memories, None, net_m, math.inf)
    if fastest is None:  # cannot happen: the smallest configuration fits; stay safe anyway
        fastest = list(_lexmin(problem, "memory"))
    cap_fast = _evaluate(problem, fastest)[1]
    choice, more = optimize(
        problem.drops,
        problem.latencies,
        problem.memories,
        _net(cap_fast, problem.frame_latency),
        net_m,
    )
    final = fastest if choice is None else choice
    return _solution(problem, final, cap_l, cap_m, binding, nodes + more, start)


def brute_force(
    problem: ScalingProblem, max_latency: Optional[float], max_memory: Optional[float]
) -> Solution:
    """:func:`solve` by enumerating every configuration (vectorized): the reference for tests.

    Same budgets, tolerance and infeasible answer as :func:`solve`; among configurations with
    equal drop it returns the first in lexicographic order of ``choice``. Raises
    ``ValueError`` above 2,000,000 configurations.
    """
    start = time.perf_counter()
    cap_l = _check_budget("max_latency", max_latency, "seconds")
    cap_m = _check_budget("max_memory", max_memory, "bytes")
    n = problem.num_configurations
    if n > BRUTE_FORCE_LIMIT:
        raise InvalidProblemError(f"brute_force refuses {n:,} configurations (limit {BRUTE_FORCE_LIMIT:,})")
    shape = tuple(len(d) for d in problem.drops)
    total_d = enumerate_totals(0.0, problem.drops)
    total_l = enumerate_totals(problem.frame_latency, problem.latencies)
    total_m = enumerate_totals(problem.frame_memory, problem.memories)
    fit_l = total_l <= cap_l * (1.0 + REL_TOL)
    fit_m = total_m <= cap_m * (1.0 + REL_TOL)
    both = fit_l & fit_m
    binding: Tuple[str, ...] = ()
    if both.any():
        flat = int(np.argmin(np.where(both, total_d, np.inf)))
    else:
        binding = _binding(bool(fit_l.any()), bool(fit_m.any()))
        if not fit_m.any():
            flat = int(np.lexsort((total_d, total_l, total_m))[0])
        else:
            fastest = total_l[fit_m].min()
            near = fit_m & (total_l <= fastest * (1.0 + REL_TOL))
            flat = int(np.argmin(np.where(near, total_d, np.inf)))
    choice = tuple(int(i) for i in np.unravel_index(flat, shape))
    return _solution(problem, choice, cap_l, cap_m, binding, n, start)


def cheapest(problem: ScalingProblem, objective: str = "latency") -> Solution:
    """The fastest (``objective="latency"``) or smallest (``"memory"``) configuration.

    Exact: each block independently takes its cheapest option, ties broken by the other
    resource, then by drop. No budget applies, so the result is ``feasible``.
    """
    if objective not in ("latency", "memory"):
        raise InvalidProblemError(f"objective must be 'latency' or 'memory', got {objective!r}")
    start = time.perf_counter()
    return _solution(problem, _lexmin(problem, objective), math.inf, math.inf, (), 0, start)


# ------------------------------------------------------------------------------- helpers


def _check_budget(name: str, value: Optional[float], unit: str) -> float:
    if value is None:
        return math.inf
    v = float(value)
    if math.isnan(v) or v <= 0:
        raise InvalidProblemError(f"{name} must be positive {unit} (or None for no limit), got {value!r}")
    return v


def _net(budget: float, frame: float) -> float:
    """Budget left to the blocks, with the relative slack of every comparison."""
    return budget * (1.0 + REL_TOL) - frame


def _fits(total: float, budget: float) -> bool:
    return total <= budget * (1.0 + REL_TOL)


def _binding(lat_ok: bool, mem_ok: bool) -> Tuple[str, ...]:
    if lat_ok and mem_ok:
        return ("latency+memory",)
    return tuple(n for n, ok in (("latency", lat_ok), ("memory", mem_ok)) if not ok)


def _cheapest_fits(problem: ScalingProblem, cap_l: float, cap_m: float) -> Tuple[bool, bool]:
    min_l = problem.frame_latency + sum(min(r) for r in problem.latencies)
    min_m = problem.frame_memory + sum(min(r) for r in problem.memories)
    return _fits(min_l, cap_l), _fits(min_m, cap_m)


def _lexmin(problem: ScalingProblem, objective: str) -> Tuple[int, ...]:
    first, second = (
        (problem.latencies, problem.memories)
        if objective == "latency"
        else (problem.memories, problem.latencies)
    )
    return tuple(
        min(range(len(d)), key=lambda k: (a[k], s[k], d[k]))
        for a, s, d in zip(first, second, problem.drops)
    )


def _evaluate(problem: ScalingProblem, choice: Sequence[int]) -> Tuple[float, float, float]:
    """Total drop, latency and memory of a configuration, summed in block order."""
    drop, lat, mem = 0.0, problem.frame_latency, problem.frame_memory
    for b, k in enumerate(choice):
        drop += problem.drops[b][k]
        lat += problem.latencies[b][k]
        mem += problem.memories[b][k]
    return drop, lat, mem


def _solution(
    problem: ScalingProblem,
    choice: Sequence[int],
    cap_l: float,
    cap_m: float,
    binding: Tuple[str, ...],
    nodes: int,
    start: float,
) -> Solution:
    drop, lat, mem = _evaluate(problem, choice)
    return Solution(
        choice=tuple(int(k) for k in choice),
        total_drop=drop,
        latency=lat,
        memory=mem,
        feasible=not binding and _fits(lat, cap_l) and _fits(mem, cap_m),
        binding=binding,
        solve_seconds=time.perf_counter() - start,
        nodes=nodes,
    )
