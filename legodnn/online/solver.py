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
infeasible budget gets a direct answer (see :func:`solve`).

Tolerances: a configuration fits a budget when its total is ``<= budget * (1 + REL_TOL)``,
so a budget equal to a configuration's cost admits it whatever the summation order; the
optimum is exact up to ``REL_TOL`` times the scale of the drops (sum over blocks of the
largest absolute drop).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidProblemError

__all__ = ["REL_TOL", "ScalingProblem", "Solution", "brute_force", "cheapest", "solve"]

REL_TOL = 1e-12
"""Relative slack of every budget comparison, and of the optimality of :func:`solve`."""

BRUTE_FORCE_LIMIT = 2_000_000
_SURROGATE_MIXES = 9  # mixes of latency and memory tried per round for the surrogate budget
_SURROGATE_ROUNDS = 2  # rounds, each narrowing the range of mixes tenfold
_PAIR_LIMIT = 1 << 17  # configurations up to which the two halves are enumerated and paired
_BEAM = 16  # states per layer in the heuristic pass that finds the first incumbent
_BATCH = 64  # fewest open states the exact search expands per round
_FIRST_LIMIT = 4096  # states the first exact search may expand before the target ladder
_LADDER = (0.25, 0.5)  # targets below the incumbent, as fractions of the gap to the LP bound

Rows = Tuple[Tuple[float, ...], ...]


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
        choice, nodes = _optimize(
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
    fastest, nodes = _optimize(problem.latencies, problem.memories, None, net_m, math.inf)
    if fastest is None:  # cannot happen: the smallest configuration fits; stay safe anyway
        fastest = list(_lexmin(problem, "memory"))
    cap_fast = _evaluate(problem, fastest)[1]
    choice, more = _optimize(
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


def _enumerate(frame: float, rows: Rows) -> np.ndarray:
    """Totals of every configuration, flat in C order, summed in block order like ``_evaluate``."""
    total = np.asarray(frame, dtype=np.float64)
    for row in rows:
        total = total[..., None] + np.asarray(row, dtype=np.float64)
    return total.reshape(-1)


# ------------------------------------------------------------------------- LP relaxation


def _pad(rows: Sequence[Sequence[float]], fill: float) -> np.ndarray:
    out = np.full((len(rows), max((len(r) for r in rows), default=1)), fill)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


@lru_cache(maxsize=None)
def _later(width: int) -> np.ndarray:
    return np.triu(np.ones((width, width), dtype=bool), 1)


class _Frontier(NamedTuple):
    """Lower convex frontiers of (cost, objective), one per row: the LP relaxation of a block.

    Each row's cheapest point (least objective among equally cheap), and the segments of
    all rows, row by row, each from option ``head`` to option ``tail``, ``dx`` > 0 dearer
    and ``dy`` < 0 better. Walking all segments steepest first traces the LP optimum as the
    budget grows (the greedy of Sinha and Zoltners).
    """

    start_cost: np.ndarray
    start_obj: np.ndarray
    start: np.ndarray
    row: np.ndarray
    head: np.ndarray
    tail: np.ndarray
    dx: np.ndarray
    dy: np.ndarray


def _hull(obj: np.ndarray, cost: np.ndarray) -> _Frontier:
    """The frontiers of (rows, options) arrays; ``obj`` is padded with inf."""
    cost = np.where(np.isfinite(obj), cost, np.inf)  # padding sorts last and never enters
    order = np.lexsort((obj, cost), axis=-1)
    rows = np.arange(len(obj))[:, None]
    c, o = cost[rows, order], obj[rows, order]
    best_before = np.minimum.accumulate(o, axis=1)
    pareto = np.ones_like(o, dtype=bool)
    pareto[:, 1:] = o[:, 1:] < best_before[:, :-1]
    pareto &= np.isfinite(o)
    # a Pareto point is a vertex when every chord arriving from a cheaper Pareto point is
    # steeper than every chord leaving to a dearer one (a supporting line passes below)
    cf, of = np.where(pareto, c, 0.0), np.where(pareto, o, 0.0)
    pair = pareto[:, :, None] & pareto[:, None, :] & _later(o.shape[1])  # [row, i, j]: i < j
    run = np.where(pair, cf[:, None, :] - cf[:, :, None], 1.0)
    chord = (of[:, None, :] - of[:, :, None]) / run
    arrive = np.where(pair, chord, -np.inf).max(axis=1)  # over i < j
    leave = np.where(pair, chord, np.inf).min(axis=2)  # over k > j
    vertex = pareto & (arrive < leave)
    r, k = np.nonzero(vertex)
    same = r[1:] == r[:-1]
    r0, k0, r1, k1 = r[:-1][same], k[:-1][same], r[1:][same], k[1:][same]
    return _Frontier(
        c[:, 0],
        o[:, 0],
        order[:, 0],
        r1,
        order[r0, k0],
        order[r1, k1],
        c[r1, k1] - c[r0, k0],
        o[r1, k1] - o[r0, k0],
    )


def _lp_usage(stage: "_Stage", wl: np.ndarray, wm: np.ndarray) -> Tuple[np.ndarray, ...]:
    """For each mix ``p``: optimum of the LP relaxation under the one budget ``wl[p] *
    latency + wm[p] * memory``, and the latency and memory its solution uses (value inf
    where even the cheapest options exceed it). One frontier computation for all mixes."""
    obj, lat, mem = stage.padded
    n, count = len(obj), len(wl)
    f = _hull(
        np.tile(obj, (count, 1)),
        (wl[:, None, None] * lat + wm[:, None, None] * mem).reshape(count * n, -1),
    )
    group, blk = np.divmod(f.row, n)
    steep = np.lexsort((f.dy / f.dx, group))
    group, blk, dx, dy, head, tail = (a[steep] for a in (group, blk, f.dx, f.dy, f.head, f.tail))
    room = wl * stage.cap_l + wm * stage.cap_m - f.start_cost.reshape(count, n).sum(axis=1)
    before = np.cumsum(dx) - dx
    before -= np.append(before, 0.0)[np.searchsorted(group, np.arange(count))][group]
    used = np.clip((room[group] - before) / dx, 0.0, 1.0)  # fraction of each segment taken
    start = f.start.reshape(count, n)
    value, used_l, used_m = (
        rows[np.arange(n), start].sum(axis=1)
        + np.bincount(group, used * (rows[blk, tail] - rows[blk, head]), minlength=count)
        for rows in (obj, lat, mem)
    )
    return np.where(room >= 0.0, value, np.inf), used_l, used_m


class _Bounds:
    """LP relaxations of the blocks after each depth, one per cost mix ``wl * lat + wm * mem``.

    For each mix and depth ``i``, the least LP objective of blocks ``i..`` is a convex
    piecewise-linear function of the budget beyond their cheapest cost; its breakpoints
    are rows of ``xs``/``ys`` (a row repeats breakpoints where an earlier block's segment
    is left out). Costs are scaled to a unit span per mix and every row is shifted by twice
    its index into one sorted key, so one ``searchsorted`` reads the bound of a whole batch
    of states at any mix of depths. A rounding slip to a neighbouring segment only lowers
    the value (each segment's line lies below a convex function): a bound stays a bound.
    """

    def __init__(self, stage: "_Stage", mixes: List[Tuple[float, float]]) -> None:
        obj, lat, mem = stage.padded
        n, width = obj.shape
        count = len(mixes)
        self.mixes = mixes
        wl, wm = np.array(mixes).T
        costs = wl[:, None, None] * lat + wm[:, None, None] * mem
        f = _hull(np.tile(obj, (count, 1)), costs.reshape(-1, width))
        start_c, start_o, row, dx, dy = f.start_cost, f.start_obj, f.row, f.dx, f.dy
        group, blk = np.divmod(row, n)
        span = np.bincount(group, dx, minlength=count)
        scale = np.where(span > 0.0, span, 1.0)
        self.wl, self.wm = wl / scale, wm / scale
        dx = dx / scale[group]
        order = np.lexsort((dy / dx, group))
        group, blk, dx, dy = group[order], blk[order], dx[order], dy[order]
        pos = np.arange(len(group)) - np.searchsorted(group, group)
        size = int(pos.max()) + 1 if len(pos) else 0
        seg = np.zeros((3, count, size))
        seg[0, group, pos], seg[1, group, pos], seg[2, group, pos] = dx, dy, blk + 1
        inside = seg[2][:, None, :] > np.arange(n + 1)[None, :, None]  # block at or after depth
        self.min_cost = _suffix_sums(start_c.reshape(count, n) / scale[:, None])
        xs = np.zeros((count, n + 1, size + 1))
        ys = np.repeat(_suffix_sums(start_o.reshape(count, n))[:, :, None], size + 1, axis=2)
        np.cumsum(np.where(inside, seg[0][:, None, :], 0.0), axis=2, out=xs[:, :, 1:])
        ys[:, :, 1:] += np.cumsum(np.where(inside, seg[1][:, None, :], 0.0), axis=2)
        run = np.diff(xs, axis=2)
        slopes = np.zeros_like(xs)
        slopes[:, :, :-1] = np.where(
            run > 0.0, np.diff(ys, axis=2) / np.where(run > 0.0, run, 1.0), 0.0
        )
        self.rows2 = 2.0 * (n + 1) * np.arange(count)[:, None]
        self.key = (xs + (self.rows2 + 2.0 * np.arange(n + 1))[:, :, None]).ravel()
        self.xs, self.ys, self.slopes = xs.ravel(), ys.ravel(), slopes.ravel()
        root, slope = self._read(
            np.zeros(1, dtype=np.intp), (self.wl * stage.cap_l + self.wm * stage.cap_m)[:, None]
        )
        self.root = root[:, 0]  # the LP bound of the whole stage, and its multiplier
        self.dual = np.where(np.isfinite(self.root), -slope[:, 0], 0.0)

    def _read(self, depth: np.ndarray, room: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        x = room - self.min_cost[:, depth]
        # a negative x lands in the row before; its value is replaced by inf below
        j = (
            np.searchsorted(self.key, np.minimum(x, 1.0) + (self.rows2 + 2.0 * depth), side="right")
            - 1
        )
        slope = self.slopes[j]
        value = self.ys[j] + slope * (np.minimum(x, 1.0) - self.xs[j])
        value[x < 0.0] = np.inf
        return value, slope

    def bound(self, depth: np.ndarray, room_l: np.ndarray, room_m: np.ndarray) -> np.ndarray:
        """Least LP objective of the blocks from each state's depth on, within its room.

        The best over the mixes; inf where the cheapest options of those blocks do not fit.
        """
        room = self.wl[:, None] * room_l + self.wm[:, None] * room_m
        return self._read(depth, room)[0].max(axis=0)


def _suffix_sums(values: np.ndarray) -> np.ndarray:
    """Along the last axis, ``out[..., i] = values[..., i:].sum()``; one more column of zeros."""
    out = np.zeros(values.shape[:-1] + (values.shape[-1] + 1,))
    out[..., :-1] = np.cumsum(values[..., ::-1], axis=-1)[..., ::-1]
    return out


def _bounds(stage: "_Stage", surrogate: Optional[Tuple[float, float]] = None) -> Optional[_Bounds]:
    """Relaxations for a stage: one per active budget, and a surrogate of both when both are.

    The surrogate mix, unless given, is searched for (``_surrogate``). Any mix gives a
    valid bound: the search only buys pruning.
    """
    mixes = [m for m, on in (((1.0, 0.0), stage.active_l), ((0.0, 1.0), stage.active_m)) if on]
    if len(mixes) == 2:
        mixes.append(surrogate or _surrogate(stage))
    return _Bounds(stage, mixes) if mixes else None


def _surrogate(stage: "_Stage") -> Tuple[float, float]:
    """Weights of the surrogate budget ``wl * latency + wm * memory`` with the best root bound.

    A search on the mix ``t`` (costs scaled by their spans) that narrows, each round, to
    the mixes between the last one whose LP optimum overspends memory (it needs more memory
    weight) and the first that overspends latency; a mix whose LP optimum fits both budgets
    is the two-budget LP optimum and ends the search.
    """
    obj, lat, mem = stage.padded
    valid = np.isfinite(obj)
    span_l = float(np.ptp(np.where(valid, lat, lat.min()), axis=1).sum()) or 1.0
    span_m = float(np.ptp(np.where(valid, mem, mem.min()), axis=1).sum()) or 1.0
    low, high, best, best_t = 0.0, 1.0, -math.inf, 0.5
    for _ in range(_SURROGATE_ROUNDS):
        t = low + (high - low) * np.arange(1, _SURROGATE_MIXES + 1) / (_SURROGATE_MIXES + 1)
        value, used_l, used_m = _lp_usage(stage, (1.0 - t) / span_l, t / span_m)
        if value.max() > best:
            best, best_t = float(value.max()), float(t[np.argmax(value)])
        over_l, over_m = used_l > stage.cap_l, used_m > stage.cap_m
        if math.isinf(best) or not (over_l | over_m).all():  # proven infeasible, or LP optimal
            break
        low = float(t[over_m].max()) if over_m.any() else low
        high = float(t[over_l].min()) if over_l.any() else high
    return (1.0 - best_t) / span_l, best_t / span_m


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
    no_worse = (a <= c).all(axis=0)
    better = (a < c).any(axis=0) | _later(vals.shape[2])[None]
    dominated = (no_worse & better & valid[:, :, None]).any(axis=1)
    keep = valid & ~dominated
    if not keep.any(axis=1).all():
        return None
    return [np.flatnonzero(row).tolist() for row in keep]


class _Stage:
    """Blocks left to search, in search order: their options and the budgets left.

    An inactive budget has zero costs and zero room, so it never binds and never needs inf
    arithmetic. ``table`` holds per depth the suffix sums the search reads: the least drop
    of the blocks left and the latency and memory of those least-drop options (ties to the
    cheaper). ``steps`` adds an option to a state: (+drop, -latency, -memory).
    """

    def __init__(
        self,
        obj: List[np.ndarray],
        lat: List[np.ndarray],
        mem: List[np.ndarray],
        cap_l: float,
        cap_m: float,
        active_l: bool,
        active_m: bool,
        fixed_drop: float = 0.0,
    ) -> None:
        self.obj, self.lat, self.mem = obj, lat, mem
        self.cap_l, self.cap_m, self.active_l, self.active_m = cap_l, cap_m, active_l, active_m
        self.fixed_drop = fixed_drop
        self.padded = (_pad(obj, np.inf), _pad(lat, 0.0), _pad(mem, 0.0))
        self.width = self.padded[0].shape[1]
        drops, lats, mems = self.padded
        best_k = np.lexsort((mems, lats, drops), axis=1)[:, 0]
        rows = np.arange(len(obj))
        self.best_k = best_k.tolist()
        self.table = _suffix_sums(np.stack([a[rows, best_k] for a in self.padded]))
        self.steps = np.stack([drops, -lats, -mems], axis=1)

    def select(self, alive: List[np.ndarray]) -> Tuple["_Stage", List[int]]:
        """The blocks with more than one option alive (and their indices); the others are
        fixed: their drop is kept aside and their costs leave the budgets."""
        free = [d for d, a in enumerate(alive) if a.sum() > 1]
        fixed = [(d, int(np.flatnonzero(a)[0])) for d, a in enumerate(alive) if a.sum() == 1]
        stage = _Stage(
            [self.obj[d][alive[d]] for d in free],
            [self.lat[d][alive[d]] for d in free],
            [self.mem[d][alive[d]] for d in free],
            self.cap_l - sum(float(self.lat[d][k]) for d, k in fixed),
            self.cap_m - sum(float(self.mem[d][k]) for d, k in fixed),
            self.active_l,
            self.active_m,
            sum(float(self.obj[d][k]) for d, k in fixed),
        )
        return stage, free


def _optimize(
    obj: Rows, lat: Rows, mem: Optional[Rows], cap_l: float, cap_m: float
) -> Tuple[Optional[List[int]], int]:
    """Exact least ``sum(obj)`` with ``sum(lat) <= cap_l`` and ``sum(mem) <= cap_m``.

    Caps are net of the frame and include the slack; ``mem=None`` means one constraint.
    Returns the option per block (None if nothing fits) and the number of search states.
    A narrow beam, block by block, finds a good configuration; :func:`_improve` then finds
    a better one or proves there is none.
    """
    # a budget that no configuration exceeds constrains nothing
    active_l = math.isfinite(cap_l) and cap_l < sum(max(r) for r in lat)
    active_m = mem is not None and math.isfinite(cap_m) and cap_m < sum(max(r) for r in mem)
    zeros = tuple((0.0,) * len(r) for r in obj)
    lat = lat if active_l else zeros
    mem = mem if active_m and mem is not None else zeros
    kept = _reduce(obj, lat, mem, cap_l if active_l else math.inf, cap_m if active_m else math.inf)
    if kept is None:
        return None, 0
    if math.prod(len(ks) for ks in kept) <= _PAIR_LIMIT:
        _, found = _pair_halves(
            *([[r[k] for k in ks] for r, ks in zip(rows, kept)] for rows in (obj, lat, mem)),
            cap_l if active_l else math.inf,
            cap_m if active_m else math.inf,
        )
        nodes = math.prod(len(ks) for ks in kept)
        return (None if found is None else [ks[k] for ks, k in zip(kept, found)]), nodes
    # branch first on the blocks whose choice moves the objective most
    spread = [max(obj[b][k] for k in ks) - min(obj[b][k] for k in ks) for b, ks in enumerate(kept)]
    order = sorted(range(len(obj)), key=lambda b: -spread[b])
    kept = [kept[b] for b in order]
    stage = _Stage(
        [np.array([obj[b][k] for k in ks]) for b, ks in zip(order, kept)],
        [np.array([lat[b][k] for k in ks]) for b, ks in zip(order, kept)],
        [np.array([mem[b][k] for k in ks]) for b, ks in zip(order, kept)],
        cap_l if active_l else 0.0,
        cap_m if active_m else 0.0,
        active_l,
        active_m,
    )
    tol = REL_TOL * sum(float(np.abs(r).max()) for r in stage.obj)
    bounds = _bounds(stage)
    value, found, nodes = _search(stage, bounds, math.inf, tol, _BEAM)  # may miss: a heuristic
    better, more = _improve(stage, bounds, value, tol)
    choice = found if better is None else better
    if choice is None:
        return None, nodes + more
    return _in_block_order([kept[d][k] for d, k in enumerate(choice)], order), nodes + more


def _pair_halves(
    obj: Sequence[Sequence[float]],
    lat: Sequence[Sequence[float]],
    mem: Sequence[Sequence[float]],
    cap_l: float,
    cap_m: float,
) -> Tuple[float, Optional[List[int]]]:
    """Exact by enumeration, for few configurations: every configuration of each half of the
    blocks, then the best pair that fits (meet in the middle: a few array operations).

    Returns the least total objective and its options, or (inf, None) if nothing fits.
    """
    sizes = [len(r) for r in obj]
    half = min(
        range(len(sizes) + 1), key=lambda h: abs(math.prod(sizes[:h]) - math.prod(sizes[h:]))
    )
    first, second = [
        [_enumerate(0.0, tuple(tuple(r) for r in rows[part])) for rows in (obj, lat, mem)]
        for part in (slice(None, half), slice(half, None))
    ]
    fits = (first[1][:, None] + second[1] <= cap_l) & (first[2][:, None] + second[2] <= cap_m)
    total = np.where(fits, first[0][:, None] + second[0], np.inf)
    best = int(np.argmin(total))
    if not np.isfinite(total.flat[best]):
        return math.inf, None
    i, j = divmod(best, len(second[0]))
    return float(total.flat[best]), [
        int(k) for k in np.unravel_index(i, sizes[:half]) + np.unravel_index(j, sizes[half:])
    ]


def _improve(
    stage: _Stage, bounds: Optional[_Bounds], value: float, tol: float
) -> Tuple[Optional[List[int]], int]:
    """The best configuration with drop below ``value - tol``, or None if there is none.

    For a target, options whose Lagrangian bound cannot beat it are removed (``_fix``),
    which fixes most blocks and tightens the relaxations of the rest, and a best-first
    search over the blocks left finds the best configuration below the target or proves
    there is none. The first target is ``value``, with a cap on the work; if that runs
    long, a ladder of targets from just above the LP bound up to the best value so far: a
    lower target fixes more blocks and keeps fewer states, and the first that succeeds
    gives the optimum. Returns the options (indices into the stage's) and search states.
    """
    surrogate = bounds.mixes[2] if bounds is not None and len(bounds.mixes) == 3 else None
    floor = float(bounds.root.max()) if bounds is not None else -math.inf
    best, nodes = None, 0
    targets: List[Tuple[float, Optional[int]]] = [(value, _FIRST_LIMIT)]
    while targets:
        target, limit = targets.pop(0)
        alive = _fix(stage, bounds, target - tol)
        if alive is None:
            continue
        rest, free = stage.select(alive)
        ran_long = False
        size = math.prod(len(r) for r in rest.obj)
        if size <= _PAIR_LIMIT or not free:  # few configurations left (perhaps one): enumerate
            found, better = _pair_halves(rest.obj, rest.lat, rest.mem, rest.cap_l, rest.cap_m)
            nodes += size
            if found + rest.fixed_drop >= target - tol:
                better = None
        else:
            found, better, more = _search(
                rest, _bounds(rest, surrogate), target - rest.fixed_drop, tol, None, limit
            )
            nodes += more
            ran_long = limit is not None and more > limit
        if better is not None:
            pick = dict(zip(free, better))
            best = [int(np.flatnonzero(a)[pick.get(d, 0)]) for d, a in enumerate(alive)]
            value = found + rest.fixed_drop
        if ran_long:  # climb the ladder instead
            gap = value - floor
            ladder = [floor + f * gap for f in _LADDER if math.isfinite(gap) and f * gap > tol]
            targets = [(t, None) for t in ladder + [value]]
        elif better is not None:
            break
    return best, nodes


def _fix(stage: _Stage, bounds: Optional[_Bounds], target: float) -> Optional[List[np.ndarray]]:
    """Per block, the options that may still be part of a configuration below ``target``.

    For a relaxation with root multiplier ``u``, any fitting configuration has drop at
    least ``sum_b min(drop + u * cost) - u * budget`` plus the excess of its own options
    over each block's minimum; options whose excess alone reaches the target go. None when
    a block keeps nothing (no configuration is below the target).
    """
    obj, lat, mem = stage.padded
    if bounds is None:
        dual, cost, budget = np.zeros(1), np.zeros((1,) + obj.shape), np.zeros(1)
    else:
        dual = bounds.dual
        cost = bounds.wl[:, None, None] * lat + bounds.wm[:, None, None] * mem
        budget = bounds.wl * stage.cap_l + bounds.wm * stage.cap_m
    reduced = obj + dual[:, None, None] * cost
    lows = reduced.min(axis=2)
    floor = lows.sum(axis=1) - dual * budget
    alive = (floor[:, None, None] + reduced - lows[:, :, None] < target).all(axis=0)
    if not alive.any(axis=1).all():
        return None
    return [alive[d, : len(row)] for d, row in enumerate(stage.obj)]


def _in_block_order(choice: List[int], order: List[int]) -> List[int]:
    out = [0] * len(order)
    for depth, b in enumerate(order):
        out[b] = choice[depth]
    return out


def _search(
    stage: _Stage,
    bounds: Optional[_Bounds],
    incumbent: float,
    tol: float,
    beam: Optional[int],
    limit: Optional[int] = None,
) -> Tuple[float, Optional[List[int]], int]:
    """Branch and bound over partial configurations, expanded in vectorized batches.

    A state fixes the options of the first blocks: its drop so far and the room left in
    each budget. A child is closed at once when the rest fits at each block's least-drop
    option (its best completion is then known); it is cut when no completion fits or its
    bound (the best of the relaxations) cannot beat the incumbent by more than ``tol``.

    Exact (``beam=None``): best-first; each round expands the open states with the least
    bound (half the open list, at least ``_BATCH``), so few states beyond those whose bound
    is below the optimum are ever expanded; it stops early, inexact, once more than
    ``limit`` states are expanded. Heuristic (``beam=W``): layer by layer, keeping the
    ``W`` best-bound states. Returns the best value found below ``incumbent``, its options
    (None if none) and the number of states expanded.
    """
    width, table, steps = stage.width, stage.table, stage.steps
    best, best_at = incumbent, None
    parents, options = [np.array([-1])], [np.array([-1])]
    # one column per open state: depth, drop, room left in latency and memory, bound, id
    states = np.array([[0.0], [0.0], [stage.cap_l], [stage.cap_m], [-np.inf], [0.0]])
    pruned_at, expanded, next_id = best, 0, 1
    while states.shape[1] and (limit is None or expanded <= limit):
        if best < pruned_at:
            states, pruned_at = states[:, states[4] < best - tol], best
            if not states.shape[1]:
                break
        rest = None
        size = max(_BATCH, states.shape[1] // 2)
        if beam is None and states.shape[1] > size:
            take = np.zeros(states.shape[1], dtype=bool)
            take[np.argpartition(states[4], size - 1)[:size]] = True
            states, rest = states[:, take], states[:, ~take]
        expanded += states.shape[1]
        depth = states[0].astype(np.intp)
        child = (states[1:4].T[:, :, None] + steps[depth]).transpose(1, 0, 2).reshape(3, -1)
        drop, room_l, room_m = child
        nxt = np.repeat(depth + 1, width)
        least, free_l, free_m = table[:, nxt]
        bound = drop + least
        done = (room_l >= free_l) & (room_m >= free_m)  # implies the cheapest options fit
        if done.any():
            j = int(np.flatnonzero(done)[np.argmin(bound[done])])
            if bound[j] < best - tol:
                best, best_at = (
                    float(bound[j]),
                    (int(states[5, j // width]), int(nxt[j]), j % width),
                )
        if bounds is not None:  # inf where the cheapest options of the rest do not fit
            bound = np.maximum(bound, drop + bounds.bound(nxt, room_l, room_m))
        go = np.flatnonzero(~done & (bound < best - tol))
        if beam is not None and len(go) > beam:
            go = go[np.argpartition(bound[go], beam - 1)[:beam]]
        parents.append(states[5, go // width].astype(np.int64))
        options.append(go % width)
        states = np.vstack(
            [nxt[go], child[:, go], bound[go], np.arange(next_id, next_id + len(go))]
        )
        next_id += len(go)
        if rest is not None:
            states = np.concatenate([rest, states], axis=1)
    if best_at is None:
        return best, None, expanded
    state, at, k = best_at
    parent, option = np.concatenate(parents), np.concatenate(options)
    choice = [0] * (at - 1) + [k] + stage.best_k[at:]
    for i in range(at - 2, -1, -1):
        choice[i] = int(option[state])
        state = int(parent[state])
    return best, choice, expanded
