"""The exact search of the scaling solver: reduction, meet in the middle, branch and bound.

Options that cannot fit or are dominated go first. Small problems (up to ``_PAIR_LIMIT``
configurations) enumerate each half of the blocks and take the best fitting pair. Larger
ones run a best-first branch and bound over batches of partial configurations, bounded
by :mod:`.mckp_bounds`: a narrow beam finds an incumbent, options whose Lagrangian bound
cannot beat it are fixed out, and the search proves the optimum.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .mckp_bounds import Bounds, later_mask, make_bounds, pad_rows, suffix_sums

__all__ = ["REL_TOL", "Rows", "Stage", "enumerate_totals", "optimize"]

REL_TOL = 1e-12
"""Relative slack of every budget comparison, and of the optimality of the solver."""

_PAIR_LIMIT = 1 << 17  # configurations up to which the two halves are enumerated and paired
_BEAM = 16  # states per layer in the heuristic pass that finds the first incumbent
_BATCH = 64  # fewest open states the exact search expands per round
_FIRST_LIMIT = 4096  # states the first exact search may expand before the target ladder
_LADDER = (0.25, 0.5)  # targets below the incumbent, as fractions of the gap to the LP bound

Rows = Tuple[Tuple[float, ...], ...]

def enumerate_totals(frame: float, rows: Rows) -> np.ndarray:
    """Totals of every configuration, flat in C order, summed in block order like ``_evaluate``."""
    total = np.asarray(frame, dtype=np.float64)
    for row in rows:
        total = total[..., None] + np.asarray(row, dtype=np.float64)
    return total.reshape(-1)


def _reduce(
    obj: Rows, lat: Rows, mem: Rows, cap_l: float, cap_m: float
) -> Optional[List[List[int]]]:
    """Per block, the options worth searching: those that can fit and are not dominated.

    An option is dropped when it exceeds a budget even with every other block at its
    cheapest, or when another option is no worse in drop, latency and memory (and better
    in one, or equal and earlier). Neither removal can lose the optimum. None if a block
    is left with nothing (no configuration fits).
    """
    pad = np.stack([pad_rows(obj, np.inf), pad_rows(lat, np.inf), pad_rows(mem, np.inf)])
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
    better = (a < c).any(axis=0) | later_mask(vals.shape[2])[None]
    dominated = (no_worse & better & valid[:, :, None]).any(axis=1)
    keep = valid & ~dominated
    if not keep.any(axis=1).all():
        return None
    return [np.flatnonzero(row).tolist() for row in keep]


class Stage:
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
        self.padded = (pad_rows(obj, np.inf), pad_rows(lat, 0.0), pad_rows(mem, 0.0))
        self.width = self.padded[0].shape[1]
        drops, lats, mems = self.padded
        best_k = np.lexsort((mems, lats, drops), axis=1)[:, 0]
        rows = np.arange(len(obj))
        self.best_k = best_k.tolist()
        self.table = suffix_sums(np.stack([a[rows, best_k] for a in self.padded]))
        self.steps = np.stack([drops, -lats, -mems], axis=1)

    def select(self, alive: List[np.ndarray]) -> Tuple["Stage", List[int]]:
        """The blocks with more than one option alive (and their indices); the others are
        fixed: their drop is kept aside and their costs leave the budgets."""
        free = [d for d, a in enumerate(alive) if a.sum() > 1]
        fixed = [(d, int(np.flatnonzero(a)[0])) for d, a in enumerate(alive) if a.sum() == 1]
        stage = Stage(
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


def optimize(
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
    stage = Stage(
        [np.array([obj[b][k] for k in ks]) for b, ks in zip(order, kept)],
        [np.array([lat[b][k] for k in ks]) for b, ks in zip(order, kept)],
        [np.array([mem[b][k] for k in ks]) for b, ks in zip(order, kept)],
        cap_l if active_l else 0.0,
        cap_m if active_m else 0.0,
        active_l,
        active_m,
    )
    tol = REL_TOL * sum(float(np.abs(r).max()) for r in stage.obj)
    bounds = make_bounds(stage)
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
        [enumerate_totals(0.0, tuple(tuple(r) for r in rows[part])) for rows in (obj, lat, mem)]
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
    stage: Stage, bounds: Optional[Bounds], value: float, tol: float
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
                rest, make_bounds(rest, surrogate), target - rest.fixed_drop, tol, None, limit
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


def _fix(stage: Stage, bounds: Optional[Bounds], target: float) -> Optional[List[np.ndarray]]:
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
    stage: Stage,
    bounds: Optional[Bounds],
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
