"""The exact choice when the whole levels are measured, not estimated.

Composition-aware retraining trains every whole level (each block at the same sparsity)
at every step, so those few compositions end far better than a separable estimate fitted
on the mixed ones says (README's digits demo: every block at 0.8 measures 91.9%, a fit
on all compositions said 76.2%). The profiler measures them anyway, and the optimizer
takes their measurement (:class:`~legodnn.offline.accuracy_fit.FittedAccuracyModel`'s
``levels``). The objective is then no longer separable, but it is on each piece of a
partition of the configurations, and each piece is a knapsack over fewer options:

* ``U_s``, every block at the measured level ``s``: the metric is the measurement minus
  what the picked options add beyond the level's own terms (int8 noise on another
  backend); the least total in ``U_s`` is its best.
* everything else: the configuration with the least total over all (one plain solve)
  when it is not a measured level; otherwise the rest splits by the first block ``i``
  whose level differs from block 0's level ``s0`` (blocks ``0..i-1`` at ``s0``, block
  ``i`` not, later blocks free): disjoint pieces that cover every mixed configuration.

The best of the pieces' optima is the optimum, so the answer stays exact; the usual
case costs one plain solve plus one small solve per measured level that could win.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from .solver import ScalingProblem, Solution, solve

__all__ = ["configuration_metric", "solve_with_levels"]

Allowed = List[List[int]]


def solve_with_levels(
    problem: ScalingProblem,
    max_latency: Optional[float],
    max_memory: Optional[float],
    option_levels: Sequence[Sequence[float]],
    measured: Mapping[float, float],
    estimate: Callable[[float], float],
) -> Tuple[Solution, float]:
    """The fitting configuration of the highest metric, and that metric.

    ``option_levels[b][k]`` is the sparsity of block ``b``'s option ``k``; ``measured``
    maps a whole level's sparsity to its measured metric; ``estimate(total)`` is the
    metric of any other configuration from its total term (decreasing in ``total``).
    When nothing fits, the plain solver's closest configuration is returned as it is.
    """
    start = time.perf_counter()
    best = solve(problem, max_latency, max_memory)
    nodes = best.nodes
    if not best.feasible or not measured:
        return best, configuration_metric(problem, best, option_levels, measured, estimate)
    candidates: List[Tuple[Solution, float]] = []
    plain_level = _uniform_level(option_levels, best.choice)
    if plain_level not in measured:
        candidates.append((best, estimate(best.total_drop)))
    else:
        for allowed in _mixed_pieces(option_levels, measured):
            sol = _solve_restricted(problem, allowed, max_latency, max_memory)
            if sol is not None:
                nodes += sol.nodes
                candidates.append((sol, estimate(sol.total_drop)))
    for level, metric in measured.items():
        if candidates and metric <= max(v for _, v in candidates):
            continue  # the extras are >= 0: this level cannot win
        allowed = _at_level(option_levels, level)
        sol = _solve_restricted(problem, allowed, max_latency, max_memory)
        if sol is not None:
            nodes += sol.nodes
            candidates.append((sol, metric - (sol.total_drop - _level_base(problem, allowed))))
    if not candidates:  # cannot happen: the plain optimum lies in some piece; stay safe anyway
        return best, configuration_metric(problem, best, option_levels, measured, estimate)
    top = max(v for _, v in candidates)
    # equal metrics: the smaller total (the plain tie-break prefers less pruning)
    sol, value = min((c for c in candidates if c[1] == top), key=lambda c: c[0].total_drop)
    return replace(sol, solve_seconds=time.perf_counter() - start, nodes=nodes), value


def configuration_metric(problem: ScalingProblem, sol: Solution, option_levels: Sequence[Sequence[float]],
                         measured: Mapping[float, float], estimate: Callable[[float], float]) -> float:
    """The metric of ``sol``'s configuration: a measured level's measurement less its
    options' extras, otherwise ``estimate`` of its total."""
    level = _uniform_level(option_levels, sol.choice)
    if level in measured:
        return measured[level] - (sol.total_drop - _level_base(problem, _at_level(option_levels, level)))
    return estimate(sol.total_drop)


def _uniform_level(option_levels: Sequence[Sequence[float]], choice: Sequence[int]) -> Optional[float]:
    levels = {float(option_levels[b][k]) for b, k in enumerate(choice)}
    return levels.pop() if len(levels) == 1 else None


def _at_level(option_levels: Sequence[Sequence[float]], level: float) -> Allowed:
    """Per block, the indices of its options at ``level``."""
    return [[k for k, s in enumerate(row) if s == level] for row in option_levels]


def _level_base(problem: ScalingProblem, allowed: Allowed) -> float:
    """The least total of a whole level: its own terms, without any option's extra."""
    return sum(min(problem.drops[b][k] for k in ks) for b, ks in enumerate(allowed))


def _mixed_pieces(option_levels: Sequence[Sequence[float]], measured: Mapping[float, float]) -> List[Allowed]:
    """Disjoint option subsets whose union is every configuration that is not a measured level.

    Block 0's level ``s0`` splits them; for a measured ``s0``, the first later block off
    ``s0`` splits again (a block with no option at ``s0`` ends the chain: the piece where
    it is "off" holds all that follows).
    """
    everything = [list(range(len(row))) for row in option_levels]
    pieces: List[Allowed] = []
    for s0 in sorted({float(s) for s in option_levels[0]}):
        at = _at_level(option_levels, s0)
        if s0 not in measured:
            pieces.append([at[0]] + everything[1:])
            continue
        for i in range(1, len(option_levels)):
            off = [k for k, s in enumerate(option_levels[i]) if s != s0]
            if all(at[j] for j in range(i)) and off:
                pieces.append(at[:i] + [off] + everything[i + 1:])
    return pieces


def _solve_restricted(problem: ScalingProblem, allowed: Allowed, max_latency: Optional[float],
                      max_memory: Optional[float]) -> Optional[Solution]:
    """The plain optimum over ``allowed`` options (indices of the full problem), or ``None``
    when the subset is empty or nothing in it fits."""
    if any(not ks for ks in allowed):
        return None
    sub = ScalingProblem(
        tuple(tuple(problem.drops[b][k] for k in ks) for b, ks in enumerate(allowed)),
        tuple(tuple(problem.latencies[b][k] for k in ks) for b, ks in enumerate(allowed)),
        tuple(tuple(problem.memories[b][k] for k in ks) for b, ks in enumerate(allowed)),
        problem.frame_latency,
        problem.frame_memory,
    )
    sol = solve(sub, max_latency, max_memory)
    if not sol.feasible or not math.isfinite(sol.total_drop):
        return None
    return replace(sol, choice=tuple(allowed[b][k] for b, k in enumerate(sol.choice)))
