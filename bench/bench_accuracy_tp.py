"""The Torch-Pruning stage of ``bench_accuracy.py`` alone, to run beside the legodnn stages.

    python bench/bench_accuracy_tp.py --cache CACHE --work runs/bench_accuracy --seconds 3680 --threads 1

Writes the ``torch_pruning_<level>.json`` stage files that ``bench_accuracy.py`` reads
instead of running them itself. The budget is the wall time of legodnn's two retraining
stages on an idle machine (``bench_stage_cost.py``: 8 block epochs and 4 composition
epochs, 3,680 s), split equally over the three models: ``--seconds`` gives that total,
and each model's step count is fixed from its own first ten steps, so its cosine
schedule runs to the end (run it on an idle machine, or with at most one other
single-thread job on this 2-core one). ``--steps A,B,C`` replays the step counts a run
recorded, whatever the load. ``--results bench/results_accuracy.json --plot
docs/accuracy_front.png`` puts the new rows into the accuracy bench's recorded result
and draws its front again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_accuracy as ba  # noqa: E402
import cifar10_jpg  # noqa: E402

from legodnn import AutoBlockManager, CommonModelManager  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--archive", type=Path, default=cifar10_jpg.DEFAULT_ARCHIVE)
    p.add_argument("--teacher", type=Path, default=Path(__file__).parent / "weights" / "cifar10_resnet18_w16.safetensors")
    p.add_argument("--work", type=Path, required=True)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--seconds", type=float, help="total fine-tuning time of the three models")
    budget.add_argument("--steps", type=lambda v: [int(n) for n in v.split(",")],
                        help="fine-tuning steps of the models at 0.3,0.6,0.8, as a run recorded them")
    p.add_argument("--retrain-images", type=int, default=20000)
    p.add_argument("--tp-lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=None,
                   help="a results.json of bench_accuracy.py (bench/results_accuracy.json) whose Torch-Pruning rows "
                        "are replaced by this run's, with its table printed and --plot drawn again")
    p.add_argument("--plot", type=Path, default=None, help="with --results: where to draw the front (a PNG)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = ba.load_bench_data(args.cache, args.archive, args.teacher, args.retrain_images)
    teacher, train_b, test_b = data.teacher, data.train_b, data.test_b
    mm = CommonModelManager()
    bm = AutoBlockManager(ba.SPARSITIES, teacher, mm, ba.SIZE, verbose=False)
    store = args.work / "compressed"
    if not store.exists():  # only the descendants' sizes are needed: extraction alone gives them
        bm.extract_all_blocks(str(store))
    rows = []
    for level in ba.LEVELS:
        model = bm.compose({n: bm.load_descendant(str(store), n, level) for n in bm.block_names})
        target = ba._params_flops(mm, model)[0]

        def stage(level: float = level, target: int = target) -> dict:
            pruned = ba._tp_prune(teacher, target)
            params, flops = ba._params_flops(mm, pruned)
            before = ba._accuracy(pruned, test_b)
            steps = args.steps[ba.LEVELS.index(level)] if args.steps else None
            run = ba._tp_finetune(pruned, teacher, train_b, (args.seconds or 0.0) / len(ba.LEVELS), args.tp_lr, steps)
            return {"level": level, "params": params, "flops": flops, "target_params": target,
                    "accuracy_before_finetune": before, "accuracy": ba._accuracy(pruned, test_b), **run}

        row = ba._stage(args.work, f"torch_pruning_{level:g}", stage)
        print(f"Torch-Pruning at {level}: {row['params']:,} params (target {target:,}), "
              f"{100 * row['accuracy_before_finetune']:.2f}% before, {100 * row['accuracy']:.2f}% after "
              f"{row['steps']} steps in {row['seconds']:.0f} s", flush=True)
        rows.append(row)
    if args.results is not None:
        update_results(args.results, rows, args.plot)


def update_results(path: Path, rows: List[dict], plot: Optional[Path]) -> None:
    """Put this run's Torch-Pruning rows into a recorded legodnn result (atomically)."""
    result = json.loads(path.read_text())
    if not (isinstance(result, dict) and {"setup", "evaluation", "timings_s"} <= set(result)):
        raise SystemExit(f"{path} is not a result of bench_accuracy.py (no setup, evaluation and timings_s); "
                         "not rewriting it")
    result["torch_pruning"] = rows
    result["timings_s"]["torch_pruning_finetune_total"] = sum(r["seconds"] for r in rows)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    print(ba._table(result))
    if plot is not None:
        ba._plot(plot, result)


if __name__ == "__main__":
    main()
