"""LP relaxation bounds for the exact scaling solver's branch and bound.

For the blocks not yet fixed, the LP relaxation of a multiple-choice knapsack under one
budget is read off each block's lower convex frontier of (cost, drop): spend the room on
the steepest segments first. Tabulated once per depth as a convex piecewise-linear
function of the room left, it bounds whole batches of partial configurations at once.
With both budgets active, a surrogate budget ``wl * latency + wm * memory`` (the mix
with the best root bound) adds a third, usually tighter, bound.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
    from .mckp_search import Stage

__all__ = ["Bounds", "later_mask", "make_bounds", "pad_rows", "suffix_sums"]

_SURROGATE_MIXES = 9  # mixes of latency and memory tried per round for the surrogate budget
_SURROGATE_ROUNDS = 2  # rounds, each narrowing the range of mixes tenfold

def pad_rows(rows: Sequence[Sequence[float]], fill: float) -> np.ndarray:
    out = np.full((len(rows), max((len(r) for r in rows), default=1)), fill)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


@lru_cache(maxsize=None)
def later_mask(width: int) -> np.ndarray:
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
    pair = pareto[:, :, None] & pareto[:, None, :] & later_mask(o.shape[1])  # [row, i, j]: i < j
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


def _lp_usage(stage: Stage, wl: np.ndarray, wm: np.ndarray) -> Tuple[np.ndarray, ...]:
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


class Bounds:
    """LP relaxations of the blocks after each depth, one per cost mix ``wl * lat + wm * mem``.

    For each mix and depth ``i``, the least LP objective of blocks ``i..`` is a convex
    piecewise-linear function of the budget beyond their cheapest cost; its breakpoints
    are rows of ``xs``/``ys`` (a row repeats breakpoints where an earlier block's segment
    is left out). Costs are scaled to a unit span per mix and every row is shifted by twice
    its index into one sorted key, so one ``searchsorted`` reads the bound of a whole batch
    of states at any mix of depths. A rounding slip to a neighbouring segment only lowers
    the value (each segment's line lies below a convex function): a bound stays a bound.
    """

    def __init__(self, stage: Stage, mixes: List[Tuple[float, float]]) -> None:
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
        self.min_cost = suffix_sums(start_c.reshape(count, n) / scale[:, None])
        xs = np.zeros((count, n + 1, size + 1))
        ys = np.repeat(suffix_sums(start_o.reshape(count, n))[:, :, None], size + 1, axis=2)
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


def suffix_sums(values: np.ndarray) -> np.ndarray:
    """Along the last axis, ``out[..., i] = values[..., i:].sum()``; one more column of zeros."""
    out = np.zeros(values.shape[:-1] + (values.shape[-1] + 1,))
    out[..., :-1] = np.cumsum(values[..., ::-1], axis=-1)[..., ::-1]
    return out


def make_bounds(stage: Stage, surrogate: Optional[Tuple[float, float]] = None) -> Optional[Bounds]:
    """Relaxations for a stage: one per active budget, and a surrogate of both when both are.

    The surrogate mix, unless given, is searched for (``_surrogate``). Any mix gives a
    valid bound: the search only buys pruning.
    """
    mixes = [m for m, on in (((1.0, 0.0), stage.active_l), ((0.0, 1.0), stage.active_m)) if on]
    if len(mixes) == 2:
        mixes.append(surrogate or _surrogate(stage))
    return Bounds(stage, mixes) if mixes else None


def _surrogate(stage: Stage) -> Tuple[float, float]:
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
