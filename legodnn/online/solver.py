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
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["REL_TOL", "ScalingProblem", "Solution", "brute_force", "cheapest", "solve"]

REL_TOL = 1e-12
"""Relative slack of every budget comparison, and of the optimality of :func:`solve`."""

BRUTE_FORCE_LIMIT = 2_000_000
_GOLDEN_STEPS = 14  # surrogate weight search: the bracket shrinks to 0.618**14 ~ 1e-3

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


# --------------------------------------------------------------------------- LP bounds


def _frontier(cost: Sequence[float], obj: Sequence[float]) -> List[Tuple[float, float]]:
    """Lower convex frontier of one block's (cost, objective) points, cheapest first.

    Its segments are the LP relaxation of the block: objective falls as cost rises, ever
    more slowly. Points that are dominated or lie above the frontier never enter the LP.
    """
    hull: List[Tuple[float, float]] = []
    for c, o in sorted(zip(cost, obj)):
        if hull and o >= hull[-1][1]:
            continue
        while len(hull) >= 2:
            (c0, o0), (c1, o1) = hull[-2], hull[-1]
            if (o1 - o0) * (c - c0) >= (o - o0) * (c1 - c0):  # hull[-1] on or above the chord
                hull.pop()
            else:
                break
        hull.append((c, o))
    return hull


def _segments(fronts: Sequence[List[Tuple[float, float]]]) -> Tuple[np.ndarray, ...]:
    blk, dx, dy = [], [], []
    for b, f in enumerate(fronts):
        for (c0, o0), (c1, o1) in zip(f, f[1:]):
            blk.append(b)
            dx.append(c1 - c0)
            dy.append(o1 - o0)
    blk_a, dx_a, dy_a = np.array(blk, dtype=np.int64), np.array(dx), np.array(dy)
    order = np.argsort(dy_a / dx_a, kind="stable") if len(dx) else np.zeros(0, dtype=np.int64)
    return blk_a[order], dx_a[order], dy_a[order]


def _lp_value(obj: Sequence[Sequence[float]], cost: Sequence[Sequence[float]], budget: float) -> float:
    """Optimum of the LP relaxation (one cost constraint) over all blocks; inf if infeasible."""
    fronts = [_frontier(c, o) for o, c in zip(obj, cost)]
    x = budget - sum(f[0][0] for f in fronts)
    if x < 0:
        return math.inf
    value = sum(f[0][1] for f in fronts)
    _, dx, dy = _segments(fronts)
    full = np.cumsum(dx)
    j = int(np.searchsorted(full, x, side="right"))
    value += float(dy[:j].sum())
    if j < len(dx):
        value += float(dy[j] / dx[j]) * (x - (float(full[j - 1]) if j else 0.0))
    return value


class _SuffixLP:
    """LP relaxation of blocks ``i..`` under one cost, as a function of the budget left.

    Precomputed per suffix as breakpoints of a convex piecewise-linear function, so a
    search node reads its bound with one bisection.
    """

    __slots__ = ("min_cost", "xs", "ys", "slopes")

    def __init__(self, obj: Sequence[Sequence[float]], cost: Sequence[Sequence[float]]) -> None:
        fronts = [_frontier(c, o) for o, c in zip(obj, cost)]
        blk, dx, dy = _segments(fronts)
        slope = dy / dx if len(dx) else dx
        n = len(fronts)
        self.min_cost = [0.0] * (n + 1)
        self.xs: List[List[float]] = [[0.0]] * (n + 1)
        self.ys: List[List[float]] = [[0.0]] * (n + 1)
        self.slopes: List[List[float]] = [[0.0]] * (n + 1)
        base = 0.0
        for i in range(n - 1, -1, -1):
            self.min_cost[i] = self.min_cost[i + 1] + fronts[i][0][0]
            base += fronts[i][0][1]
            keep = blk >= i
            self.xs[i] = [0.0] + np.cumsum(dx[keep]).tolist()
            self.ys[i] = [base] + (base + np.cumsum(dy[keep])).tolist()
            self.slopes[i] = slope[keep].tolist() + [0.0]

    def value(self, i: int, budget: float) -> float:
        """Least LP objective of blocks ``i..`` within ``budget`` (at least ``min_cost[i]``)."""
        xs = self.xs[i]
        x = budget - self.min_cost[i]
        if x >= xs[-1]:
            return self.ys[i][-1]
        j = bisect_right(xs, x) - 1
        return self.ys[i][j] + self.slopes[i][j] * (x - xs[j])


def _surrogate_weight(obj: Rows, lat: Rows, mem: Rows, cap_l: float, cap_m: float) -> Tuple[float, float]:
    """Weights (a, b) of the surrogate constraint a*lat + b*mem <= a*cap_l + b*cap_m.

    Golden-section search for the weight whose LP bound at the root is highest (the
    surrogate dual is quasi-concave); every weight gives a valid bound, so an inexact
    search only costs pruning. Costs are scaled by their spans so the weights compare.
    """
    span_l = sum(max(r) - min(r) for r in lat) or 1.0
    span_m = sum(max(r) - min(r) for r in mem) or 1.0

    def bound(t: float) -> float:
        a, b = (1.0 - t) / span_l, t / span_m
        cost = [[a * x + b * y for x, y in zip(rl, rm)] for rl, rm in zip(lat, mem)]
        return _lp_value(obj, cost, a * cap_l + b * cap_m)

    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    lo, hi = 0.0, 1.0
    t1, t2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f1, f2 = bound(t1), bound(t2)
    for _ in range(_GOLDEN_STEPS):
        if math.isinf(f1) or math.isinf(f2):
            break
        if f1 < f2:
            lo, t1, f1 = t1, t2, f2
            t2 = lo + ratio * (hi - lo)
            f2 = bound(t2)
        else:
            hi, t2, f2 = t2, t1, f1
            t1 = hi - ratio * (hi - lo)
            f1 = bound(t1)
    t = t1 if f1 >= f2 else t2
    return (1.0 - t) / span_l, t / span_m


# ------------------------------------------------------------------------ branch and bound


def _reduce(
    obj: Rows, lat: Rows, mem: Rows, cap_l: float, cap_m: float
) -> Optional[List[List[int]]]:
    """Per block, the options worth searching: those that can fit and are not dominated.

    An option is dropped when it exceeds a budget even with every other block at its
    cheapest, or when another option is no worse in drop, latency and memory (and better
    in one, or equal and earlier). Neither removal can lose the optimum. None if a block
    is left with nothing (no configuration fits).
    """
    n_blocks, width = len(obj), max(len(r) for r in obj)
    pad = np.full((3, n_blocks, width), np.inf)
    for b in range(n_blocks):
        pad[:, b, : len(obj[b])] = (obj[b], lat[b], mem[b])
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
    no_worse = (a <= c).all(axis=0)
    better = (a < c).any(axis=0) | np.triu(np.ones((width, width), dtype=bool), 1)[None]
    dominated = (no_worse & better & valid[:, :, None]).any(axis=1)
    keep = valid & ~dominated
    if not keep.any(axis=1).all():
        return None
    return [np.flatnonzero(row).tolist() for row in keep]


def _optimize(
    obj: Rows, lat: Rows, mem: Optional[Rows], cap_l: float, cap_m: float
) -> Tuple[Optional[List[int]], int]:
    """Exact least ``sum(obj)`` with ``sum(lat) <= cap_l`` and ``sum(mem) <= cap_m``.

    Caps are net of the frame and include the slack; ``mem=None`` means one constraint.
    Returns the option per block (None if nothing fits) and the number of search nodes.
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
    o = [[obj[b][k] for k in kept[b]] for b in order]
    l = [[lat[b][k] for k in kept[b]] for b in order]
    m = [[mem[b][k] for k in kept[b]] for b in order]
    found, nodes = _search(o, l, m, cap_l, cap_m)
    if found is None:
        return None, nodes
    choice = [0] * len(obj)
    for depth, b in enumerate(order):
        choice[b] = kept[b][found[depth]]
    return choice, nodes


def _search(
    o: List[List[float]], l: List[List[float]], m: List[List[float]], cap_l: float, cap_m: float,
    incumbent: float = math.inf,
) -> Tuple[Optional[List[int]], int]:
    """Depth-first branch and bound over blocks in the given order; children best bound first."""
    n = len(o)
    # suffix sums: cheapest costs, and each block's least-objective option with its costs
    best_k = [min(range(len(r)), key=lambda k: (r[k], lr[k], mr[k])) for r, lr, mr in zip(o, l, m)]
    need_l, need_m = [0.0] * (n + 1), [0.0] * (n + 1)
    free_o, free_l, free_m = [0.0] * (n + 1), [0.0] * (n + 1), [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        need_l[i] = need_l[i + 1] + min(l[i])
        need_m[i] = need_m[i + 1] + min(m[i])
        free_o[i] = free_o[i + 1] + o[i][best_k[i]]
        free_l[i] = free_l[i + 1] + l[i][best_k[i]]
        free_m[i] = free_m[i + 1] + m[i][best_k[i]]
    lp_l = _SuffixLP(o, l) if math.isfinite(cap_l) else None
    lp_m = _SuffixLP(o, m) if math.isfinite(cap_m) else None
    lp_s, wl, wm = None, 0.0, 0.0
    if lp_l is not None and lp_m is not None:
        wl, wm = _surrogate_weight(o, l, m, cap_l, cap_m)
        lp_s = _SuffixLP(o, [[wl * x + wm * y for x, y in zip(rl, rm)] for rl, rm in zip(l, m)])

    tol = REL_TOL * sum(max(abs(v) for v in r) for r in o)
    best = incumbent
    best_choice: Optional[List[int]] = None
    path = [0] * n

    def expand(i: int, drop: float, room_l: float, room_m: float) -> list:
        """Children of a node at depth ``i`` that may beat the incumbent, best bound first.

        A child whose remaining blocks fit at their least-objective options is a complete
        answer: it updates the incumbent and is not expanded.
        """
        nonlocal best, best_choice
        nxt = i + 1
        kids = []
        for k, (dk, lk, mk) in enumerate(zip(o[i], l[i], m[i])):
            rl, rm = room_l - lk, room_m - mk
            if rl < need_l[nxt] or rm < need_m[nxt]:
                continue
            d = drop + dk
            lb = d + free_o[nxt]
            if rl >= free_l[nxt] and rm >= free_m[nxt]:
                if lb < best - tol:
                    best, best_choice = lb, path[:i] + [k] + best_k[nxt:]
                continue
            cut = best - tol
            if lb >= cut:
                continue
            if lp_l is not None:
                lb = max(lb, d + lp_l.value(nxt, rl))
            if lp_m is not None and lb < cut:
                lb = max(lb, d + lp_m.value(nxt, rm))
            if lp_s is not None and lb < cut:
                room = wl * rl + wm * rm
                if room < lp_s.min_cost[nxt]:  # the surrogate shows no completion fits
                    continue
                lb = max(lb, d + lp_s.value(nxt, room))
            if lb < cut:
                kids.append((lb, k, d, rl, rm))
        kids.sort()
        return kids

    stack = [expand(0, 0.0, cap_l, cap_m)]
    cursor = [0]
    nodes = 1
    while stack:
        depth = len(stack) - 1
        kids, p = stack[-1], cursor[-1]
        if p == len(kids) or kids[p][0] >= best - tol:
            stack.pop()
            cursor.pop()
            continue
        cursor[-1] = p + 1
        _, k, d, rl, rm = kids[p]
        path[depth] = k
        nodes += 1
        stack.append(expand(depth + 1, d, rl, rm))
        cursor.append(0)
    return best_choice, nodes
