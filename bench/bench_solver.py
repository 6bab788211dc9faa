"""Benchmark the exact scaling solver against brute force, PuLP/CBC and SciPy/HiGHS.

For each size (blocks x options), random instances with the structure of real profiles
(drops grow with sparsity, latency and memory shrink, with noise), each under budgets 30%,
50% and 70% of the way from the cheapest to the dearest configuration in both latency
and memory. Times, per solve:

* ours: :func:`legodnn.online.solver.solve`, everything from the budgets to the answer,
  with ``--ours-repeats`` runs;
* brute: :func:`legodnn.online.solver.brute_force` (vectorized enumeration), only where
  there are at most 2,000,000 configurations, with ``--brute-repeats`` runs;
* pulp: build the MILP in PuLP (binary ``x[b,k]``, one option per block, the two knapsack
  rows, minimize the drop) and solve it with the bundled CBC, as the original LegoDNN did
  on every update;
* highs: the same MILP through ``scipy.optimize.milp`` (HiGHS), if SciPy is installed;
  PuLP and HiGHS with ``--repeats`` runs.

Both MILPs state each knapsack row divided by its budget (right-hand side 1), an
equivalent form that keeps the solvers' absolute feasibility tolerances meaningful for
seconds and bytes alike, and ask for a proven optimum (relative gap 0). Each time is the
median over its runs after one warm-up; the table shows medians over all
instances and budgets, and every solver's optimum is checked against ours (within 1e-6,
recomputed from its choice).

Usage (from the repository root, with the package installed or ``PYTHONPATH=.``)::

    python bench/bench_solver.py --repeats 3 --instances 5 --out bench_solver.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from legodnn.online.solver import BRUTE_FORCE_LIMIT, REL_TOL, ScalingProblem, brute_force, solve

try:
    import pulp
except ImportError:  # optional baseline
    pulp = None
try:
    import scipy
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix
except ImportError:  # optional baseline
    scipy = None

SIZES = ((8, 4), (16, 4), (20, 8), (40, 8))
FRACTIONS = (0.3, 0.5, 0.7)
AGREE = 1e-6
# targets from the brief: median solve time on this CPU, single thread
TARGETS_MS = {(8, 4): 5.0, (40, 8): 50.0}

Choice = Optional[Tuple[int, ...]]  # None: the solver found no configuration within budget


def random_problem(rng: np.random.Generator, blocks: int, options: int) -> ScalingProblem:
    """Option 0 is the original block; later options are sparser: more drop, less cost."""
    s = np.linspace(0.0, 0.8, options)
    drops, lats, mems = [], [], []
    for _ in range(blocks):
        sensitivity = rng.uniform(0.2, 8.0)
        steps = np.diff(sensitivity * s ** rng.uniform(1.0, 2.5)) * rng.uniform(
            0.5, 1.5, options - 1
        )
        drops.append(np.concatenate([[0.0], np.cumsum(steps)]) + rng.normal(0.0, 0.05, options))
        lats.append(
            rng.uniform(0.5e-3, 5e-3)
            * (1 - rng.uniform(0.4, 0.9) * s)
            * rng.uniform(0.95, 1.05, options)
        )
        mems.append(rng.uniform(0.2e6, 5e6) * (1 - s) ** rng.uniform(1.2, 2.0) + 1e4)
    return ScalingProblem.from_arrays(
        drops, lats, mems, rng.uniform(1e-3, 5e-3), rng.uniform(1e6, 4e6)
    )


def between(problem: ScalingProblem, fraction: float) -> Tuple[float, float]:
    """Latency and memory budgets ``fraction`` of the way from cheapest to dearest."""
    out = []
    for rows, frame in (
        (problem.latencies, problem.frame_latency),
        (problem.memories, problem.frame_memory),
    ):
        low, high = frame + sum(min(r) for r in rows), frame + sum(max(r) for r in rows)
        out.append(low + fraction * (high - low))
    return out[0], out[1]


def evaluate(problem: ScalingProblem, choice: Sequence[int]) -> Tuple[float, float, float]:
    drop = sum(problem.drops[b][k] for b, k in enumerate(choice))
    lat = problem.frame_latency + sum(problem.latencies[b][k] for b, k in enumerate(choice))
    mem = problem.frame_memory + sum(problem.memories[b][k] for b, k in enumerate(choice))
    return drop, lat, mem


# -- the solvers, each returning the chosen option per block ---------------------------------


def ours(problem: ScalingProblem, max_latency: float, max_memory: float) -> Choice:
    solution = solve(problem, max_latency, max_memory)
    return solution.choice if solution.feasible else None


def brute(problem: ScalingProblem, max_latency: float, max_memory: float) -> Choice:
    solution = brute_force(problem, max_latency, max_memory)
    return solution.choice if solution.feasible else None


def with_pulp(problem: ScalingProblem, max_latency: float, max_memory: float) -> Choice:
    model = pulp.LpProblem("legodnn", pulp.LpMinimize)
    x = [
        [pulp.LpVariable(f"x_{b}_{k}", cat="Binary") for k in range(len(row))]
        for b, row in enumerate(problem.drops)
    ]
    model += pulp.lpSum(d * v for ds, xs in zip(problem.drops, x) for d, v in zip(ds, xs))
    for xs in x:
        model += pulp.lpSum(xs) == 1
    for rows, frame, budget in (
        (problem.latencies, problem.frame_latency, max_latency),
        (problem.memories, problem.frame_memory, max_memory),
    ):
        model += (
            pulp.lpSum(c / budget * v for cs, xs in zip(rows, x) for c, v in zip(cs, xs))
            <= 1 - frame / budget
        )
    model.solve(pulp.PULP_CBC_CMD(msg=False, gapRel=0))
    if pulp.LpStatus[model.status] != "Optimal":
        return None
    return tuple(max(range(len(xs)), key=lambda k: xs[k].value() or 0.0) for xs in x)


@contextmanager
def quiet_c_output() -> Iterator[None]:
    """Send what C code writes to stdout and stderr to /dev/null for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def with_highs(problem: ScalingProblem, max_latency: float, max_memory: float) -> Choice:
    sizes = [len(r) for r in problem.drops]
    n, blocks = sum(sizes), len(sizes)
    owner = np.repeat(np.arange(blocks), sizes)
    one_each = csr_matrix((np.ones(n), (owner, np.arange(n))), shape=(blocks, n))
    costs = np.array(
        [
            np.concatenate(problem.latencies) / max_latency,
            np.concatenate(problem.memories) / max_memory,
        ]
    )
    room = [1 - problem.frame_latency / max_latency, 1 - problem.frame_memory / max_memory]
    with quiet_c_output():  # some HiGHS builds print debug lines from C++
        result = milp(
            np.concatenate(problem.drops),
            integrality=np.ones(n),
            bounds=Bounds(0, 1),
            constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(costs, -np.inf, room)],
            options={"mip_rel_gap": 0.0},
        )
    if result.x is None:
        return None
    starts = np.cumsum([0] + sizes[:-1])
    return tuple(int(np.argmax(result.x[s : s + k])) for s, k in zip(starts, sizes))


# -- timing ------------------------------------------------------------------------------------


def median_time(fn: Callable[[], Choice], repeats: int) -> Tuple[float, Choice]:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up, and its answer."""
    answer = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), answer


def run_size(
    blocks: int, options: int, instances: int, repeats: Dict[str, int], seed: int
) -> Dict[str, Any]:
    rng = np.random.default_rng(seed)
    solvers: Dict[str, Tuple[Callable[..., Choice], int]] = {"ours": (ours, repeats["ours"])}
    if options**blocks <= BRUTE_FORCE_LIMIT:
        solvers["brute"] = (brute, repeats["brute"])
    if pulp is not None:
        solvers["pulp"] = (with_pulp, repeats["baselines"])
    if scipy is not None:
        solvers["highs"] = (with_highs, repeats["baselines"])
    times: Dict[str, List[float]] = {name: [] for name in solvers}
    nodes: List[int] = []
    disagreements: List[str] = []
    for i in range(instances):
        problem = random_problem(rng, blocks, options)
        for fraction in FRACTIONS:
            max_latency, max_memory = between(problem, fraction)
            nodes.append(solve(problem, max_latency, max_memory).nodes)
            answers: Dict[str, Choice] = {}
            for name, (fn, reps) in solvers.items():
                seconds, answers[name] = median_time(
                    partial(fn, problem, max_latency, max_memory), reps
                )
                times[name].append(seconds)
            best = answers["ours"]
            for name, choice in answers.items():
                where = f"instance {i}, budgets at {fraction:.0%}"
                if (choice is None) != (best is None):
                    disagreements.append(f"{name}: feasibility differs from ours ({where})")
                    continue
                if choice is None:
                    continue
                drop, lat, mem = evaluate(problem, choice)
                over = lat > max_latency * (1 + REL_TOL) or mem > max_memory * (1 + REL_TOL)
                gap = drop - evaluate(problem, best)[0]
                if over or abs(gap) > AGREE:
                    over_text = " and over budget" if over else ""
                    disagreements.append(f"{name}: drop {gap:+.3g} from ours{over_text} ({where})")
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "blocks": blocks,
        "options": options,
        "configurations": options**blocks,
        "solves": len(times["ours"]),
        "median_seconds": medians,
        "ours_p90_seconds": float(np.percentile(times["ours"], 90)),
        "ours_max_seconds": max(times["ours"]),
        "median_nodes": statistics.median(nodes),
        "ratios": {
            f"{name}/ours": medians[name] / medians["ours"] for name in medians if name != "ours"
        },
        "agree": not disagreements,
        "disagreements": disagreements,
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def configs(n: int) -> str:
    return f"{n:,}" if n < 10**12 else f"{n:.2e}"


def report(rows: List[Dict[str, Any]], env: Dict[str, Any]) -> str:
    def ms(row: Dict[str, Any], name: str) -> str:
        seconds = row["median_seconds"].get(name)
        return f"{seconds * 1e3:10.3f}" if seconds is not None else f"{'-':>10}"

    def ratio(row: Dict[str, Any], name: str) -> str:
        value = row["ratios"].get(f"{name}/ours")
        return f"{value:10.1f}" if value is not None else f"{'-':>10}"

    lines = [
        f"solver benchmark: {env['cpu']}, Python {env['python']}, numpy {env['numpy']}, "
        f"PuLP {env['pulp']}, SciPy {env['scipy']}",
        f"load average before/after: {env['load_before']} / {env['load_after']}"
        f" on {env['cpus']} CPUs",
        "median ms per solve over instances x budgets (30/50/70%); ratios are medians / ours",
        f"{'size':>6} {'configs':>14} {'solves':>6} {'nodes':>6} {'ours':>10} {'ours p90':>10} "
        f"{'brute':>10} {'pulp':>10} {'highs':>10} {'brute/ours':>10} {'pulp/ours':>10} "
        f"{'highs/ours':>10} {'agree':>6}",
    ]
    for row in rows:
        lines.append(
            f"{row['blocks']:>3}x{row['options']:<2} {configs(row['configurations']):>14} "
            f"{row['solves']:>6} "
            f"{row['median_nodes']:>6.0f} {ms(row, 'ours')} {row['ours_p90_seconds'] * 1e3:10.3f} "
            f"{ms(row, 'brute')} {ms(row, 'pulp')} {ms(row, 'highs')} {ratio(row, 'brute')} "
            f"{ratio(row, 'pulp')} {ratio(row, 'highs')} {'yes' if row['agree'] else 'NO':>6}"
        )
        lines.extend(f"    disagreement: {d}" for d in row["disagreements"])
    for row in rows:
        target = TARGETS_MS.get((row["blocks"], row["options"]))
        if target is not None:
            got = row["median_seconds"]["ours"] * 1e3
            verdict = "met" if got < target else "MISSED"
            size = f"{row['blocks']}x{row['options']}"
            lines.append(f"target {size}: median < {target:g} ms: {got:.3f} ms, {verdict}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per PuLP and HiGHS solve"
    )
    parser.add_argument("--ours-repeats", type=int, default=10, help="timed runs per solve()")
    parser.add_argument(
        "--brute-repeats", type=int, default=2, help="timed runs per brute-force solve"
    )
    parser.add_argument("--instances", type=int, default=5, help="random instances per size")
    parser.add_argument(
        "--sizes", default=",".join(f"{b}x{k}" for b, k in SIZES), help="e.g. 8x4,40x8"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    repeats = {"ours": args.ours_repeats, "brute": args.brute_repeats, "baselines": args.repeats}
    env: Dict[str, Any] = {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pulp": getattr(pulp, "__version__", None) if pulp is not None else None,
        "scipy": scipy.__version__ if scipy is not None else None,
        "load_before": [round(v, 2) for v in os.getloadavg()],
    }
    rows = [run_size(b, k, args.instances, repeats, args.seed + 1000 * b + k) for b, k in sizes]
    env["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(report(rows, env))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"env": env, "args": vars(args), "sizes": rows}, f, indent=2)
    return 0 if all(row["agree"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
