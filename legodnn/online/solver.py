"""Exact solver for the online choice: one descendant per block under a latency and a memory budget.

The choice is a multiple-choice knapsack with two constraints: block ``b`` offers options
``k`` (its descendants; option 0 is the original block), each with an accuracy drop, a
latency and a memory size; pick one option per block to minimize the summed drop with
``frame + sum(latency) <= max_latency`` and ``frame + sum(memory) <= max_memory``.

:func:`solve` is an exact depth-first branch and bound in plain Python, fast because the
problem is small and the bounds are tight: options that cannot fit or are dominated are
dropped first; every node is bounded by the LP relaxation of the blocks left under the
latency budget, under the memory budget, and under one surrogate of both (each a convex
piecewise-linear function of the budget left, precomputed once and read by bisection);
and a node whose remaining blocks fit at their best options is closed at once. The
original LegoDNN rebuilt a PuLP/CBC model on every update (60-80 ms) and relaxed an
infeasible budget 0.1 MB at a time; here an update takes about a millisecond and an
infeasible budget gets a direct answer (see :func:`solve`).

Tolerances: a configuration fits a budget when its total is ``<= budget * (1 + REL_TOL)``,
so a budget equal to a configuration's cost admits it whatever the summation order; the
optimum is exact up to ``REL_TOL`` times the scale of the drops (sum over blocks of the
largest absolute drop).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["REL_TOL", "ScalingProblem", "Solution", "brute_force", "cheapest", "solve"]

REL_TOL = 1e-12
"""Relative slack of every budget comparison, and of the optimality of :func:`solve`."""

BRUTE_FORCE_LIMIT = 2_000_000
_SURROGATE_GRID = 9  # mixes of latency and memory tried for the surrogate bound, twice
_BEAM = 16  # states per layer in the heuristic pass that finds the first incumbent
_DOMINANCE_MIN = 32  # layers with more states than this drop dominated ones
_DOMINANCE_PEERS = 256

Rows = Tuple[Tuple[float, ...], ...]


def _as_rows(name: str, rows: Iterable[Iterable[float]]) -> Rows:
    out = []
    for b, row in enumerate(rows):
        values = tuple(float(v) for v in np.asarray(row, dtype=np.float64).reshape(-1))
        for k, v in enumerate(values):
            if not math.isfinite(v):
                raise ValueError(
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
            raise ValueError("a ScalingProblem needs at least one block")
        if not len(drops) == len(lats) == len(mems):
            raise ValueError(
                f"got drops for {len(drops)} blocks, latencies for {len(lats)} and memories "
                f"for {len(mems)}; every block needs all three"
            )
        for b, (d, l, m) in enumerate(zip(drops, lats, mems)):
            if not d:
                raise ValueError(f"block {b} has no options; each block needs at least one")
            if not len(d) == len(l) == len(m):
                raise ValueError(
                    f"block {b} has {len(d)} drops, {len(l)} latencies and {len(m)} memories; "
                    "each option needs one of each"
                )
        for n in ("frame_latency", "frame_memory"):
            v = float(getattr(self, n))
            if not math.isfinite(v):
                raise ValueError(f"{n} must be a finite number, got {v}")
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
        """Build from nested lists or arrays (a 2-D array is one row per block; rows may be ragged)."""
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
    not both together; ``()`` when feasible. ``nodes`` counts search nodes (diagnostics).
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


def solve(problem: ScalingProblem, max_latency: Optional[float], max_memory: Optional[float]) -> Solution:
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
        choice, nodes = _optimize(
            problem.drops, problem.latencies, problem.memories,
            _net(cap_l, problem.frame_latency), _net(cap_m, problem.frame_memory),
        )
        if choice is not None:
            return _solution(problem, choice, cap_l, cap_m, (), nodes, start)
    binding = _binding(lat_ok, mem_ok)
    if not mem_ok:
        return _solution(problem, _lexmin(problem, "memory"), cap_l, cap_m, binding, 0, start)
    net_m = _net(cap_m, problem.frame_memory)
    fastest, nodes = _optimize(problem.latencies, problem.memories, None, net_m, math.inf)
    assert fastest is not None  # the smallest-memory configuration fits
    cap_fast = _evaluate(problem, fastest)[1]
    choice, more = _optimize(
        problem.drops, problem.latencies, problem.memories,
        _net(cap_fast, problem.frame_latency), net_m,
    )
    final = fastest if choice is None else choice
    return _solution(problem, final, cap_l, cap_m, binding, nodes + more, start)


def brute_force(problem: ScalingProblem, max_latency: Optional[float], max_memory: Optional[float]) -> Solution:
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
        raise ValueError(f"brute_force refuses {n:,} configurations (limit {BRUTE_FORCE_LIMIT:,})")
    shape = tuple(len(d) for d in problem.drops)
    total_d = _enumerate(0.0, problem.drops)
    total_l = _enumerate(problem.frame_latency, problem.latencies)
    total_m = _enumerate(problem.frame_memory, problem.memories)
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
        raise ValueError(f"objective must be 'latency' or 'memory', got {objective!r}")
    start = time.perf_counter()
    return _solution(problem, _lexmin(problem, objective), math.inf, math.inf, (), 0, start)


# ------------------------------------------------------------------------------- helpers


def _check_budget(name: str, value: Optional[float], unit: str) -> float:
    if value is None:
        return math.inf
    v = float(value)
    if math.isnan(v) or v <= 0:
        raise ValueError(f"{name} must be positive {unit} (or None for no limit), got {value!r}")
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
        (problem.latencies, problem.memories) if objective == "latency"
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
    problem: ScalingProblem, choice: Sequence[int], cap_l: float, cap_m: float,
    binding: Tuple[str, ...], nodes: int, start: float,
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


def _enumerate(frame: float, rows: Rows) -> np.ndarray:
    """Totals of every configuration, flat in C order, summed in block order like ``_evaluate``."""
    total = np.asarray(frame, dtype=np.float64)
    for row in rows:
        total = total[..., None] + np.asarray(row, dtype=np.float64)
    return total.reshape(-1)


# ------------------------------------------------------------------------- LP relaxation


def _pad(rows: Sequence[Sequence[float]], fill: float) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), fill)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


@lru_cache(maxsize=None)
def _spans(width: int) -> np.ndarray:
    i, j, k = np.ogrid[:width, :width, :width]
    return (i < j) & (j < k)


def _hull(obj: np.ndarray, cost: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Per row, the lower convex frontier of (cost, objective): the LP relaxation of a block.

    ``obj`` and ``cost`` are (rows, options) arrays, ``obj`` padded with inf. Returns each
    row's cheapest point (``start_cost``, ``start_obj``) and the frontier segments of all
    rows (``row``, ``dx`` > 0, ``dy`` < 0), row by row. Walking all segments steepest first
    traces the LP optimum as the budget grows (the greedy of Sinha and Zoltners).
    """
    cost = np.where(np.isfinite(obj), cost, np.inf)  # padding sorts last and never enters
    order = np.lexsort((obj, cost), axis=-1)
    rows = np.arange(len(obj))[:, None]
    c, o = cost[rows, order], obj[rows, order]
    best_before = np.minimum.accumulate(o, axis=1)
    pareto = np.ones_like(o, dtype=bool)
    pareto[:, 1:] = o[:, 1:] < best_before[:, :-1]
    pareto &= np.isfinite(o)
    cf, of = np.where(pareto, c, 0.0), np.where(pareto, o, 0.0)
    oi, oj, ok = of[:, :, None, None], of[:, None, :, None], of[:, None, None, :]
    ci, cj, ck = cf[:, :, None, None], cf[:, None, :, None], cf[:, None, None, :]
    above = (oj - oi) * (ck - ci) >= (ok - oi) * (cj - ci)  # j on or above the chord i-k
    above &= _spans(o.shape[1]) & pareto[:, :, None, None] & pareto[:, None, None, :]
    vertex = pareto & ~above.any(axis=(1, 3))
    r, k = np.nonzero(vertex)
    same = r[1:] == r[:-1]
    r0, k0, r1, k1 = r[:-1][same], k[:-1][same], r[1:][same], k[1:][same]
    return c[:, 0], o[:, 0], r1, c[r1, k1] - c[r0, k0], o[r1, k1] - o[r0, k0]


def _lp_values(obj: np.ndarray, costs: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """LP optimum over all blocks under each of several costs: ``costs[p]`` within ``budgets[p]``.

    One frontier computation for all ``p`` (rows stacked); each segment then contributes the
    fraction of it that the budget left after the steeper ones covers. inf where infeasible.
    """
    n_p, n_b, width = costs.shape
    start_c, start_o, row, dx, dy = _hull(np.tile(obj, (n_p, 1)), costs.reshape(n_p * n_b, width))
    group = row // n_b
    order = np.lexsort((dy / dx, group))
    group, dx, dy = group[order], dx[order], dy[order]
    room = budgets - start_c.reshape(n_p, n_b).sum(axis=1)
    reach = np.cumsum(dx)
    first = np.searchsorted(group, np.arange(n_p))
    before = reach - dx - np.append(reach - dx, 0.0)[first][group]
    used = np.clip((room[group] - before) / dx, 0.0, 1.0)
    value = start_o.reshape(n_p, n_b).sum(axis=1) + np.bincount(group, dy * used, minlength=n_p)
    return np.where(room >= 0.0, value, np.inf)


class _Relaxation:
    """LP relaxation of the blocks after each depth under ``wl * latency + wm * memory``.

    Row ``i`` of ``xs``/``ys`` is the convex piecewise-linear least objective of blocks
    ``i..`` as a function of budget beyond ``min_cost[i]``, read with ``np.interp`` for a
    whole layer of states at once (rows repeat breakpoints of earlier blocks' segments,
    which ``np.interp`` tolerates). ``dual`` is the LP's multiplier at the root budget.
    """

    __slots__ = ("wl", "wm", "min_cost", "xs", "ys", "dual")

    def __init__(self, obj: np.ndarray, cost: np.ndarray, wl: float, wm: float, budget: float) -> None:
        self.wl, self.wm = wl, wm
        start_c, start_o, blk, dx, dy = _hull(obj, cost)
        slope = dy / dx
        steep = np.argsort(slope, kind="stable")
        blk, dx, dy, slope = blk[steep], dx[steep], dy[steep], slope[steep]
        n = len(obj)
        self.min_cost = np.append(np.cumsum(start_c[::-1])[::-1], 0.0)
        base = np.append(np.cumsum(start_o[::-1])[::-1], 0.0)
        inside = blk[None, :] >= np.arange(n + 1)[:, None]
        self.xs = np.zeros((n + 1, len(dx) + 1))
        self.ys = np.repeat(base[:, None], len(dx) + 1, axis=1)
        np.cumsum(np.where(inside, dx, 0.0), axis=1, out=self.xs[:, 1:])
        self.ys[:, 1:] += np.cumsum(np.where(inside, dy, 0.0), axis=1)
        j = int(np.searchsorted(self.xs[0, 1:], budget - self.min_cost[0], side="right"))
        self.dual = float(-slope[j]) if 0.0 <= budget - self.min_cost[0] and j < len(dx) else 0.0

    def bound(self, depth: int, room_l: np.ndarray, room_m: np.ndarray) -> np.ndarray:
        """Least LP objective of blocks ``depth..`` for each state's room; inf if none fits."""
        if self.wm == 0.0:
            room = room_l
        elif self.wl == 0.0:
            room = room_m
        else:
            room = self.wl * room_l + self.wm * room_m
        x = room - self.min_cost[depth]
        value = np.interp(x, self.xs[depth], self.ys[depth])
        return np.where(x >= 0.0, value, np.inf)


def _relaxations(
    obj: np.ndarray, lat: np.ndarray, mem: np.ndarray, cap_l: float, cap_m: float,
    weights: Optional[Tuple[float, float]] = None,
) -> List[_Relaxation]:
    """One relaxation per finite budget, and a surrogate of both when both are finite.

    The surrogate's weights, unless given, are those of a grid (then a finer grid around
    the best) whose LP bound at the root is highest; costs are scaled by their spans so the
    mix is even. Any weights give a valid bound: the search only buys pruning.
    """
    out = []
    if math.isfinite(cap_l):
        out.append(_Relaxation(obj, lat, 1.0, 0.0, cap_l))
    if math.isfinite(cap_m):
        out.append(_Relaxation(obj, mem, 0.0, 1.0, cap_m))
    if len(out) < 2:
        return out
    if weights is None:
        valid = np.isfinite(obj)
        span_l = float(np.ptp(np.where(valid, lat, lat.min()), axis=1).sum()) or 1.0
        span_m = float(np.ptp(np.where(valid, mem, mem.min()), axis=1).sum()) or 1.0
        mix = np.linspace(0.0, 1.0, _SURROGATE_GRID + 2)[1:-1]
        step = mix[0]
        for _ in range(2):
            wl, wm = (1.0 - mix) / span_l, mix / span_m
            costs = wl[:, None, None] * lat + wm[:, None, None] * mem
            bounds = _lp_values(obj, costs, wl * cap_l + wm * cap_m)
            t = float(mix[np.argmax(bounds)])
            step /= (_SURROGATE_GRID + 1) / 2
            mix = np.clip(t + step * np.arange(-(_SURROGATE_GRID // 2), _SURROGATE_GRID // 2 + 1), 0, 1)
        weights = ((1.0 - t) / span_l, t / span_m)
    wl, wm = weights
    out.append(_Relaxation(obj, wl * lat + wm * mem, wl, wm, wl * cap_l + wm * cap_m))
    return out


# ------------------------------------------------------------------------------- search


def _reduce(
    obj: Rows, lat: Rows, mem: Rows, cap_l: float, cap_m: float
) -> Optional[List[List[int]]]:
    """Per block, the options worth searching: those that can fit and are not dominated.

    An option is dropped when it exceeds a budget even with every other block at its
    cheapest, or when another option is no worse in drop, latency and memory (and better
    in one, or equal and earlier). Neither removal can lose the optimum. None if a block
    is left with nothing (no configuration fits).
    """
    pad = np.stack([_pad(obj, np.inf), _pad(lat, np.inf), _pad(mem, np.inf)])
    valid = np.isfinite(pad[0])
    for axis, cap in ((1, cap_l), (2, cap_m)):
        if math.isinf(cap):
            continue
        lows = np.where(valid, pad[axis], np.inf).min(axis=1)
        if not np.isfinite(lows).all():
            return None
        valid &= pad[axis] <= cap - (lows.sum() - lows)[:, None]
    vals = np.where(valid[None], pad, np.inf)
    a, c = vals[:, :, :, None], vals[:, :, None, :]  # option i (rows) against option j (cols)
    width = vals.shape[2]
    no_worse = (a <= c).all(axis=0)
    better = (a < c).any(axis=0) | np.triu(np.ones((width, width), dtype=bool), 1)[None]
    dominated = (no_worse & better & valid[:, :, None]).any(axis=1)
    keep = valid & ~dominated
    if not keep.any(axis=1).all():
        return None
    return [np.flatnonzero(row).tolist() for row in keep]


@dataclass
class _Stage:
    """Blocks left to search, in search order, with their option arrays and the budgets left."""

    obj: List[np.ndarray]
    lat: List[np.ndarray]
    mem: List[np.ndarray]
    cap_l: float
    cap_m: float

    def padded(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _pad(self.obj, np.inf), _pad(self.lat, 0.0), _pad(self.mem, 0.0)


def _optimize(
    obj: Rows, lat: Rows, mem: Optional[Rows], cap_l: float, cap_m: float
) -> Tuple[Optional[List[int]], int]:
    """Exact least ``sum(obj)`` with ``sum(lat) <= cap_l`` and ``sum(mem) <= cap_m``.

    Caps are net of the frame and include the slack; ``mem=None`` means one constraint.
    Returns the option per block (None if nothing fits) and the number of search states.

    Three steps: a narrow beam through the layers finds a good configuration; options
    whose Lagrangian bound (from each relaxation's root dual) cannot beat it are removed,
    which fixes most blocks and tightens the relaxations of the rest; an exact layered
    search over the remaining blocks then keeps every partial configuration whose bound
    beats the incumbent and that no other dominates (in drop, latency and memory left).
    """
    # a budget that no configuration exceeds constrains nothing: its costs become zeros
    if mem is None or cap_m >= sum(max(r) for r in mem):
        mem, cap_m = tuple((0.0,) * len(r) for r in obj), math.inf
    if cap_l >= sum(max(r) for r in lat):
        lat, cap_l = tuple((0.0,) * len(r) for r in obj), math.inf
    kept = _reduce(obj, lat, mem, cap_l, cap_m)
    if kept is None:
        return None, 0
    # branch first on the blocks whose choice moves the objective most
    spread = [max(obj[b][k] for k in ks) - min(obj[b][k] for k in ks) for b, ks in enumerate(kept)]
    order = sorted(range(len(obj)), key=lambda b: -spread[b])
    kept = [kept[b] for b in order]
    stage = _Stage(
        [np.array([obj[b][k] for k in ks]) for b, ks in zip(order, kept)],
        [np.array([lat[b][k] for k in ks]) for b, ks in zip(order, kept)],
        [np.array([mem[b][k] for k in ks]) for b, ks in zip(order, kept)],
        cap_l, cap_m,
    )
    tol = REL_TOL * sum(float(np.abs(r).max()) for r in stage.obj)
    o_pad, l_pad, m_pad = stage.padded()
    relax = _relaxations(o_pad, l_pad, m_pad, cap_l, cap_m)
    value, found, nodes = _layers(stage, relax, math.inf, tol, _BEAM)
    if found is None:  # the beam keeps every state whose room allows a completion
        return None, nodes
    best = [kept[d][k] for d, k in enumerate(found)]

    # fix: drop options that cannot beat the incumbent, then search the blocks left
    alive = np.isfinite(o_pad)
    for r in relax:
        reduced = np.where(alive, o_pad + r.dual * (r.wl * l_pad + r.wm * m_pad), np.inf)
        lows = reduced.min(axis=1)
        floor = lows.sum() - r.dual * (r.wl * cap_l + r.wm * cap_m)
        alive &= floor + reduced - lows[:, None] < value - tol
        if not alive.any(axis=1).all():  # some block has no option that could do better
            return _in_block_order(best, order), nodes
    free = [d for d in range(len(kept)) if alive[d].sum() > 1]
    fixed = [d for d in range(len(kept)) if alive[d].sum() == 1]
    pick = {d: int(np.flatnonzero(alive[d])[0]) for d in fixed}
    base = sum(float(stage.obj[d][k]) for d, k in pick.items())
    rest = _Stage(
        [stage.obj[d][alive[d, : len(kept[d])]] for d in free],
        [stage.lat[d][alive[d, : len(kept[d])]] for d in free],
        [stage.mem[d][alive[d, : len(kept[d])]] for d in free],
        cap_l - sum(float(stage.lat[d][k]) for d, k in pick.items()),
        cap_m - sum(float(stage.mem[d][k]) for d, k in pick.items()),
    )
    if not free:
        fits = rest.cap_l >= 0.0 and rest.cap_m >= 0.0
        if fits and base < value - tol:
            best = [kept[d][pick[d]] for d in range(len(kept))]
        return _in_block_order(best, order), nodes
    weights = (relax[-1].wl, relax[-1].wm) if len(relax) == 3 else None
    relax = _relaxations(*rest.padded(), rest.cap_l, rest.cap_m, weights)
    _, better, more = _layers(rest, relax, value - base, tol, None)
    if better is not None:
        for d, k in zip(free, better):
            pick[d] = int(np.flatnonzero(alive[d])[k])
        best = [kept[d][pick[d]] for d in range(len(kept))]
    return _in_block_order(best, order), nodes + more


def _in_block_order(choice: List[int], order: List[int]) -> List[int]:
    out = [0] * len(order)
    for depth, b in enumerate(order):
        out[b] = choice[depth]
    return out


def _layers(
    stage: _Stage, relax: List[_Relaxation], incumbent: float, tol: float, beam: Optional[int]
) -> Tuple[float, Optional[List[int]], int]:
    """Breadth-first branch and bound, one block per layer, all states of a layer at once.

    A state is a partial configuration: drop so far and room left in each budget. A child
    is closed at once when the rest fits at each block's least-drop option (its best
    completion is then known); it is cut when no completion fits or its bound (the best of
    the relaxations) cannot beat the incumbent by more than ``tol``; of the rest, those that
    another state dominates are dropped, and with ``beam`` only that many best-bound states
    go on (a heuristic). Returns the best value found below ``incumbent``, its options
    (None if none) and the number of states expanded.
    """
    o, l, m = stage.obj, stage.lat, stage.mem
    n = len(o)
    best_k = [int(np.lexsort((mr, lr, orow))[0]) for orow, lr, mr in zip(o, l, m)]
    need_l, need_m = _suffix([r.min() for r in l]), _suffix([r.min() for r in m])
    free_o = _suffix([r[k] for r, k in zip(o, best_k)])
    free_l = _suffix([r[k] for r, k in zip(l, best_k)])
    free_m = _suffix([r[k] for r, k in zip(m, best_k)])

    best, best_at = incumbent, None
    drop, room_l, room_m = np.zeros(1), np.array([stage.cap_l]), np.array([stage.cap_m])
    parents: List[np.ndarray] = []
    options: List[np.ndarray] = []
    nodes = 0
    for i in range(n):
        nxt, width = i + 1, len(o[i])
        nodes += len(drop)
        d = (drop[:, None] + o[i]).ravel()
        rl = (room_l[:, None] - l[i]).ravel()
        rm = (room_m[:, None] - m[i]).ravel()
        lb = d + free_o[nxt]
        fits = (rl >= need_l[nxt]) & (rm >= need_m[nxt])
        done = fits & (rl >= free_l[nxt]) & (rm >= free_m[nxt])
        if done.any():
            j = int(np.flatnonzero(done)[np.argmin(lb[done])])
            if lb[j] < best - tol:
                best, best_at = float(lb[j]), (i, j // width, j % width)
        idx = np.flatnonzero(fits & ~done & (lb < best - tol))
        d, rl, rm, lb = d[idx], rl[idx], rm[idx], lb[idx]
        for r in relax:
            lb = np.maximum(lb, d + r.bound(nxt, rl, rm))
        keep = lb < best - tol
        idx, d, rl, rm, lb = idx[keep], d[keep], rl[keep], rm[keep], lb[keep]
        if len(idx) > _DOMINANCE_MIN:
            keep = _undominated(d, rl, rm)
            idx, d, rl, rm, lb = idx[keep], d[keep], rl[keep], rm[keep], lb[keep]
        if beam is not None and len(idx) > beam:
            keep = np.argpartition(lb, beam)[:beam]
            idx, d, rl, rm = idx[keep], d[keep], rl[keep], rm[keep]
        if not len(idx):
            break
        parents.append(idx // width)
        options.append(idx % width)
        drop, room_l, room_m = d, rl, rm
    if best_at is None:
        return best, None, nodes
    depth, state, k = best_at
    choice = [0] * depth + [k] + best_k[depth + 1 :]
    for t in range(depth - 1, -1, -1):
        choice[t] = int(options[t][state])
        state = int(parents[t][state])
    return best, choice, nodes


def _suffix(values: Sequence[float]) -> List[float]:
    """``out[i] = sum(values[i:])``, with ``out[len(values)] = 0``."""
    out = [0.0] * (len(values) + 1)
    for i in range(len(values) - 1, -1, -1):
        out[i] = out[i + 1] + float(values[i])
    return out


def _undominated(drop: np.ndarray, room_l: np.ndarray, room_m: np.ndarray) -> np.ndarray:
    """Indices of states that no other state dominates (no more drop, no less room in both).

    Each state is checked against the ``_DOMINANCE_PEERS`` with the least drop, which are
    the likeliest to dominate it; a partial check keeps more states but loses nothing.
    """
    order = np.lexsort((-room_m, -room_l, drop))  # any dominator of a state comes before it
    rl, rm = room_l[order], room_m[order]
    peers = min(len(order), _DOMINANCE_PEERS)
    earlier = np.arange(peers)[:, None] < np.arange(len(order))[None, :]
    beaten = ((rl[:peers, None] >= rl[None, :]) & (rm[:peers, None] >= rm[None, :]) & earlier).any(axis=0)
    return np.sort(order[~beaten])
