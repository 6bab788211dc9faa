"""Composed models against per-model pruning on real CIFAR-10, with a converged teacher.

    python bench/bench_accuracy.py --cache ~/.cache/legodnn/cifar10 --work runs/bench_accuracy \\
        --teacher bench/weights/cifar10_resnet18_w16.safetensors --threads 2

The teacher (``bench/train_cifar_teacher.py``) trained on a class-balanced 20,000-image
subset of the CIFAR-10 training set; the other 30,000 training images are data the
teacher never saw, and give the held-out set that picks the best epoch and the set the
profiler measures on. Every accuracy in the table is on all 10,000 test images.

Stages (each one's result is kept in ``--work`` and reused when the bench runs again):

1. legodnn block distillation (``BlockRetrainer``, ``--block-epochs``).
2. legodnn composition-aware retraining of those descendants (``CompositionRetrainer``,
   ``--composition-epochs``, its default recipe: KL at temperature 2 plus the labels'
   cross-entropy, SGD, the sandwich of compositions).
3. Profiling of both stores with the fitted accuracy estimate (``profile_all_blocks``,
   ``--fit-compositions`` compositions measured on 5,000 of the unseen training images).
4. Torch-Pruning (``MagnitudePruner``, L1, the final classifier ignored) pruned to the
   parameter count of each legodnn level and fine-tuned with distillation from the
   teacher (KL at temperature 2 plus cross-entropy), the three models together given the
   wall time of stages 1 + 2.
5. Evaluation: every block at 0.3 / 0.6 / 0.8 and ``--random`` random compositions.

Writes ``results.json``, ``results.md`` (the table) and ``front.png`` (accuracy against
parameters) into ``--work``.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cifar10_jpg  # noqa: E402

from cv_tasks import get_model  # noqa: E402
from cv_tasks.image_classification.train import load_weights, warmup_cosine  # noqa: E402
from legodnn import AutoBlockManager, BlockProfiler, BlockRetrainer, CommonModelManager  # noqa: E402
from legodnn.offline import CompositionRetrainer, FittedAccuracyModel  # noqa: E402
from legodnn.offline.accuracy_fit import refit_accuracy_model, sample_compositions  # noqa: E402
from legodnn.offline.bn_calibration import recalibrate_store  # noqa: E402
from legodnn.offline.composition import distillation_loss  # noqa: E402

SPARSITIES = [0.0, 0.3, 0.6, 0.8]
SIZE = (1, 3, 32, 32)
LEVELS = (0.3, 0.6, 0.8)


@dataclass
class BenchData:
    """The bench's teacher and its data, split the same way by every script of the bench."""

    teacher: nn.Module
    meta: Dict[str, str]
    train: Any  # the teacher's own training images, the retraining set
    val: Any  # 1,000 images the teacher never saw: picks the best epoch
    profile: Any  # 5,000 other unseen images the profiler measures on
    test: Any  # all 10,000 test images: every accuracy in the table
    train_b: Any
    val_b: Any
    test_b: Any
    profile_b: Any


def load_bench_data(cache: Path, archive: Path, teacher_path: Path, retrain_images: int,
                    profile_on: str = "unseen") -> BenchData:
    """The teacher (in eval mode) and its splits: the training set is stored class by class,
    so the unseen images are shuffled (seed 2) before they are sliced into val and profile."""
    full = cifar10_jpg.load_split("train", cache, archive)
    teacher = get_model("cifar_resnet18", num_classes=10, base_width=16)
    meta = load_weights(teacher, teacher_path)
    teacher.eval()
    seen = full.subset_indices(int(json.loads(meta.get("train_images", "20000"))), int(json.loads(meta.get("seed", "0"))))
    rest = full.complement(seen)
    unseen = full.take(rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(2))])
    train = full.take(seen).subset(retrain_images, 1)
    val = unseen.take(torch.arange(0, 1000))
    profile = unseen.take(torch.arange(1000, 6000))
    test = cifar10_jpg.load_split("test", cache, archive)
    test_b = cifar10_jpg.Batches(test, 500, train=False)
    return BenchData(teacher, meta, train, val, profile, test, cifar10_jpg.Batches(train, 128, train=True, seed=1),
                     cifar10_jpg.Batches(val, 250, train=False), test_b,
                     cifar10_jpg.Batches(profile, 250, train=False) if profile_on == "unseen" else test_b)


def _stage(work: Path, name: str, run: Any) -> Dict[str, Any]:
    """Run ``run()`` once; its JSON result is kept in ``work/name.json`` and reused after."""
    path = work / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = run()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


def _accuracy(model: nn.Module, batches: Any) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def _params_flops(mm: CommonModelManager, model: nn.Module) -> Tuple[int, int]:
    flops, params = mm.get_model_flops_and_param(model, SIZE)
    return int(params), int(flops)


def _compositions(names: Sequence[str], n: int, seed: int) -> List[Tuple[float, ...]]:
    rng = random.Random(seed)
    out = [tuple([s] * len(names)) for s in LEVELS]
    while len(out) < len(LEVELS) + n:
        cfg = tuple(rng.choice(SPARSITIES) for _ in names)
        if cfg not in out and len(set(cfg)) > 1:
            out.append(cfg)
    return out


def estimate_errors(rows: Sequence[Dict[str, Any]], fitted_on: Any, teacher_test: float,
                    teacher_profile: float) -> Dict[str, Any]:
    """How far the estimate is from the test accuracy, as accuracies and as drops.

    The estimate is the teacher's accuracy on the profile images minus a fitted drop. On
    the test images the teacher itself scores differently (82.85% against 83.10% on the
    5,000 profile images, 83.4% on all 29,000 images it never saw: CIFAR-10's test set is a
    little harder), and that shift is in every row's accuracy error. The drop error,
    (measured - teacher on test) - (estimated - teacher on profile), is what the optimizer
    depends on: it ranks compositions by the drop, whatever the anchor.
    """
    errors = [r["measured"] - r["estimated"] for r in rows]
    drops = [e - (teacher_test - teacher_profile) for e in errors]
    held = [e for r, e in zip(rows, errors) if tuple(r["sparsities"]) not in fitted_on]
    return {
        "mean_abs_error": sum(map(abs, errors)) / len(errors), "max_abs_error": max(map(abs, errors)),
        "drop_mean_abs_error": sum(map(abs, drops)) / len(drops), "drop_max_abs_error": max(map(abs, drops)),
        "teacher_test": teacher_test, "teacher_profile": teacher_profile,
        "n": len(errors), "n_in_fit": len(errors) - len(held),
        "heldout_mean_abs_error": sum(map(abs, held)) / len(held) if held else None,
        "heldout_max_abs_error": max(map(abs, held)) if held else None}


def _evaluate_store(bm: AutoBlockManager, mm: CommonModelManager, store: Path, configs: Sequence[Tuple[float, ...]],
                    test: Any) -> List[Dict[str, Any]]:
    fitted = FittedAccuracyModel.load(store)
    rows = []
    for cfg in configs:
        blocks = {n: bm.load_descendant(str(store), n, s).eval() for n, s in zip(bm.block_names, cfg) if s > 0}
        model = bm.compose(blocks).eval()
        params, flops = _params_flops(mm, model)
        rows.append({"sparsities": list(cfg), "params": params, "flops": flops, "measured": _accuracy(model, test),
                     "estimated": fitted.estimate(cfg)})
    return rows


# -- Torch-Pruning baseline ---------------------------------------------------------------------


def _tp_prune(teacher: nn.Module, target_params: int) -> nn.Module:
    """A copy of ``teacher`` pruned by Torch-Pruning's L1 magnitude pruner to ``target_params``.

    The global pruning ratio is searched by bisection so that the parameter count matches
    legodnn's within 0.5%.
    """
    import torch_pruning as tp

    example = torch.randn(*SIZE)

    def prune(ratio: float) -> nn.Module:
        model = copy.deepcopy(teacher).eval()
        fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=[fc])
        pruner.step()
        return model

    lo, hi = 0.0, 0.99
    best = prune(0.5)
    for _ in range(30):
        mid = (lo + hi) / 2
        model = prune(mid)
        n = sum(p.numel() for p in model.parameters())
        if abs(n - target_params) < abs(sum(p.numel() for p in best.parameters()) - target_params):
            best = model
        if abs(n - target_params) / target_params < 0.002:
            break
        lo, hi = (mid, hi) if n > target_params else (lo, mid)
    return best


def _tp_finetune(student: nn.Module, teacher: nn.Module, train: Any, seconds: float, lr: float,
                 steps: Optional[int] = None) -> Dict[str, Any]:
    """Fine-tune with KD + CE for ``steps`` steps, or (``steps=None``) for about ``seconds``:
    the step count is then fixed from the first steps' time, so the cosine schedule runs
    to its end."""
    student = student.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    teacher.eval()
    done, start = 0, time.perf_counter()
    probe = 10
    while steps is None or done < steps:
        for x, y in train:
            if steps is not None and done >= steps:
                break
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                target = teacher(x)
            student.train()
            out = student(x)
            loss = distillation_loss(out, target, 2.0) + F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if steps is None and done == probe:
                per_step = (time.perf_counter() - start) / probe
                steps = max(probe, int(seconds / per_step))
            factor = warmup_cosine(done, steps or 10**9, warmup_fraction=0.02)
            for g in opt.param_groups:
                g["lr"] = lr * factor
    return {"steps": done, "seconds": time.perf_counter() - start}


def _plot(path: Path, result: Dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, marker in (("block", "legodnn, block distillation", "o"),
                               ("composed", "legodnn, composition-aware", "s"),
                               ("composed_bn", "legodnn, + BatchNorm recalibrated per level", "D")):
        rows = result["evaluation"][key]
        ax.scatter([r["params"] / 1e3 for r in rows], [100 * r["measured"] for r in rows], marker=marker, label=label)
    comp = result["evaluation"]["composed"]
    ax.scatter([r["params"] / 1e3 for r in comp], [100 * r["estimated"] for r in comp], marker="x", color="gray",
               label="legodnn estimate (composition-aware)")
    tp_rows = result["torch_pruning"]
    ax.scatter([r["params"] / 1e3 for r in tp_rows], [100 * r["accuracy"] for r in tp_rows], marker="^", color="k",
               label="Torch-Pruning + KD (one model each)")
    ax.axhline(100 * result["teacher"]["accuracy"], color="gray", lw=0.8, ls="--", label="teacher")
    ax.set_xlabel("parameters (thousands)")
    ax.set_ylabel("CIFAR-10 test accuracy (%, 10,000 images)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(result: Dict[str, Any]) -> str:
    ev = result["evaluation"]
    tp_by = {r["level"]: r for r in result["torch_pruning"]}
    lines = ["| composition | params | MFLOPs | block distillation | composition-aware | + BN recalibrated | "
             "Torch-Pruning + KD | estimated | measured - estimated |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b, c, r in zip(ev["block"], ev["composed"], ev["composed_bn"]):
        cfg = c["sparsities"]
        name = f"all {cfg[0]:g}" if len(set(cfg)) == 1 else " ".join(f"{s:g}" for s in cfg)
        tp_row = tp_by.get(cfg[0]) if len(set(cfg)) == 1 else None
        tp_cell = f"{100 * tp_row['accuracy']:.2f}% ({tp_row['params']:,})" if tp_row else ""
        lines.append(f"| {name} | {c['params']:,} | {c['flops'] / 1e6:.1f} | {100 * b['measured']:.2f}% | "
                     f"{100 * c['measured']:.2f}% | {100 * r['measured']:.2f}% | {tp_cell} | {100 * c['estimated']:.2f}% | "
                     f"{100 * (c['measured'] - c['estimated']):+.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, required=True, help="where the decoded CIFAR-10 arrays are kept")
    p.add_argument("--archive", type=Path, default=cifar10_jpg.DEFAULT_ARCHIVE)
    p.add_argument("--teacher", type=Path, default=Path(__file__).parent / "weights" / "cifar10_resnet18_w16.safetensors")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--retrain-images", type=int, default=20000, help="training images for retraining (the teacher's)")
    p.add_argument("--block-epochs", type=int, default=8)
    p.add_argument("--composition-epochs", type=int, default=6)
    p.add_argument("--composition-lr", type=float, default=0.01)
    p.add_argument("--batchnorm", default="train", choices=("frozen", "train"))
    p.add_argument("--composition-samples", type=int, default=1, help="random compositions per step")
    p.add_argument("--one-level", dest="every_level", action="store_false",
                   help="the smallest and one level in turn at each step (the earlier sandwich), not every level")
    p.add_argument("--fit-compositions", type=int, default=24)
    p.add_argument("--random", type=int, default=10, help="random compositions evaluated")
    p.add_argument("--profile-on", default="unseen", choices=("unseen", "test"),
                   help="the images the profiler measures on: 5,000 unseen training images, or the test images "
                        "(as the original passes its test loader; the random compositions evaluated are then "
                        "still held out of the fit)")
    p.add_argument("--tp-lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--refit", action="store_true",
                   help="fit each store's accuracy estimate again from the compositions its profile measured "
                        "(refit_accuracy_model): for a work folder profiled by an earlier version")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="legodnn's stages in the default layout (Torch-Pruning's fine-tuning is channels_last: "
                        "on CPU it is 1.1x faster for block distillation, 1.3x for the composition stage)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    verbose = not args.quiet
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    data = load_bench_data(args.cache, args.archive, args.teacher, args.retrain_images, args.profile_on)
    teacher, meta, train, val, test = data.teacher, data.meta, data.train, data.val, data.test
    profile_split = data.profile
    train_b, val_b, test_b, profile_b = data.train_b, data.val_b, data.test_b, data.profile_b
    mm = CommonModelManager()

    result: Dict[str, Any] = {"setup": {
        "teacher": str(args.teacher), "teacher_metadata": {k: v for k, v in meta.items() if k != "format"},
        "retrain_images": len(train), "val_images": len(val), "profile_images": len(profile_split) if args.profile_on == "unseen" else len(test),
        "profile_on": args.profile_on,
        "test_images": len(test), "block_epochs": args.block_epochs, "composition_epochs": args.composition_epochs,
        "composition_lr": args.composition_lr, "batchnorm": args.batchnorm, "threads": args.threads,
        "channels_last": args.channels_last,
        "composition_samples": args.composition_samples, "every_level": args.every_level,
        "fit_compositions": args.fit_compositions,
        "sparsities": SPARSITIES, "torch": torch.__version__}}
    result["teacher"] = _stage(work, "teacher", lambda: {
        "accuracy": _accuracy(teacher, test_b), "params": _params_flops(mm, teacher)[0],
        "flops": _params_flops(mm, teacher)[1]})
    print(f"teacher: {100 * result['teacher']['accuracy']:.2f}% on {len(test)} test images", flush=True)

    bm = AutoBlockManager(SPARSITIES, teacher, mm, SIZE, verbose=False)
    compressed, block_dir, composed_dir = work / "compressed", work / "block", work / "composed"

    def extract() -> Dict[str, Any]:
        t = time.perf_counter()
        bm.extract_all_blocks(str(compressed))
        return {"seconds": time.perf_counter() - t, "blocks": len(bm.block_names), "coverage": bm.coverage}

    timings: Dict[str, float] = {"extract": _stage(work, "extract", extract)["seconds"]}

    def block_stage() -> Dict[str, Any]:
        t = time.perf_counter()
        BlockRetrainer(teacher, bm, mm, str(compressed), str(block_dir), args.block_epochs, train_b, val_b,
                       verbose=verbose, composition_epochs=0,
                       channels_last=args.channels_last).train_all_blocks()  # block distillation alone
        return {"seconds": time.perf_counter() - t}

    timings["block_distillation"] = _stage(work, "block_stage", block_stage)["seconds"]
    print(f"block distillation: {timings['block_distillation']:.0f} s", flush=True)

    def composition_stage() -> Dict[str, Any]:
        t = time.perf_counter()
        history = CompositionRetrainer(teacher, bm, mm, str(block_dir), str(composed_dir), args.composition_epochs,
                                       train_b, val_b, verbose=verbose, lr=args.composition_lr,
                                       batchnorm=args.batchnorm, num_random=args.composition_samples,
                                       every_level=args.every_level,
                                       channels_last=args.channels_last).train_all_compositions()
        return {"seconds": time.perf_counter() - t, "train": list(history.train), "val": list(history.val),
                "best_epoch": history.best_epoch}

    comp = _stage(work, "composition_stage", composition_stage)
    timings["composition_aware"] = comp["seconds"]
    print(f"composition-aware retraining: {timings['composition_aware']:.0f} s (held-out loss {comp['val']})",
          flush=True)

    recalibrated_dir = work / "composed_bn"

    def recalibrate_stage() -> Dict[str, Any]:
        t = time.perf_counter()
        batches = recalibrate_store(bm, mm, str(composed_dir), str(recalibrated_dir), train_b, max_batches=50)
        return {"seconds": time.perf_counter() - t, "batches": batches}

    timings["batchnorm_recalibration"] = _stage(work, "recalibrate_stage", recalibrate_stage)["seconds"]

    stores = (("block", block_dir), ("composed", composed_dir), ("composed_bn", recalibrated_dir))
    for name, store in stores:
        def profile(store: Path = store) -> Dict[str, Any]:
            t = time.perf_counter()
            BlockProfiler(teacher, bm, mm, str(store), profile_b, SIZE, verbose=verbose).profile_all_blocks(
                num_compositions=args.fit_compositions)
            return {"seconds": time.perf_counter() - t}  # the fit's numbers are read from the store below

        timings[f"profile_{name}"] = _stage(work, f"profile_{name}", profile)["seconds"]
        if args.refit:  # the estimate fitted again from what the profile measured (no new measurement)
            refit_accuracy_model(store)
        # read from the store, not the stage's cache: a refit shows in the results
        fitted = FittedAccuracyModel.load(store)
        result[f"profile_{name}"] = {"seconds": timings[f"profile_{name}"], "curvature": fitted.curvature,
                                     "cv_mean_abs_error": fitted.heldout_mean_abs_error,
                                     "cv_max_abs_error": fitted.heldout_max_abs_error,
                                     "levels": [list(level) for level in fitted.levels]}

    configs = _compositions(bm.block_names, args.random, seed=1)
    result["evaluation"] = {}
    for name, store in stores:
        rows = _stage(work, f"evaluate_{name}", lambda s=store: {"rows": _evaluate_store(
            bm, mm, s, configs, test_b)})["rows"]
        fitted = FittedAccuracyModel.load(store)
        result["evaluation"][name] = [{**r, "estimated": fitted.estimate(r["sparsities"])} for r in rows]

    budget = timings["block_distillation"] + timings["composition_aware"]
    tp_rows = []
    for level, row in zip(LEVELS, result["evaluation"]["composed"][:3]):
        def tp_stage(level: float = level, target: int = row["params"]) -> Dict[str, Any]:
            model = _tp_prune(teacher, target)
            params, flops = _params_flops(mm, model)
            before = _accuracy(model, test_b)
            run = _tp_finetune(model, teacher, train_b, budget / len(LEVELS), args.tp_lr)
            return {"level": level, "params": params, "flops": flops, "target_params": target,
                    "accuracy_before_finetune": before, "accuracy": _accuracy(model, test_b), **run}

        tp_rows.append(_stage(work, f"torch_pruning_{level:g}", tp_stage))
        print(f"Torch-Pruning at {level}: {100 * tp_rows[-1]['accuracy']:.2f}%", flush=True)
    result["torch_pruning"] = tp_rows
    timings["torch_pruning_finetune_total"] = sum(r["seconds"] for r in tp_rows)
    result["timings_s"] = timings

    fitted_on = set(sample_compositions(bm.block_names, bm.block_sparsity, args.fit_compositions, 0))
    if "profile_accuracy" not in result["teacher"]:  # a work folder from before it was recorded
        result["teacher"]["profile_accuracy"] = _accuracy(teacher, profile_b)
    for name, rows in result["evaluation"].items():
        result[f"estimate_{name}"] = {**estimate_errors(rows, fitted_on, result["teacher"]["accuracy"],
                                                        result["teacher"]["profile_accuracy"]),
                                      "profile_on": args.profile_on}
    result["estimate"] = result["estimate_composed"]
    (work / "results.json").write_text(json.dumps(result, indent=1))
    table = _table(result)
    lines = [f"teacher {100 * result['teacher']['accuracy']:.2f}% ({result['teacher']['params']:,} params); "
             f"profiled on the {args.profile_on} images"]
    for name, _ in stores:
        e, cv = result[f"estimate_{name}"], result[f"profile_{name}"]
        held = (f"; the {e['n'] - e['n_in_fit']} not in the fit: mean {100 * e['heldout_mean_abs_error']:.2f}, "
                f"max {100 * e['heldout_max_abs_error']:.2f}") if e["heldout_mean_abs_error"] is not None else ""
        lines.append(f"{name}: estimate error over {e['n']} compositions on the test images: mean "
                     f"{100 * e['mean_abs_error']:.2f}, max {100 * e['max_abs_error']:.2f} points{held}; "
                     f"as drops from the teacher: mean {100 * e['drop_mean_abs_error']:.2f}, "
                     f"max {100 * e['drop_max_abs_error']:.2f} "
                     f"(cross-validated on the profile images: mean {100 * cv['cv_mean_abs_error']:.2f}, "
                     f"max {100 * cv['cv_max_abs_error']:.2f})")
    lines.append("stage wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    summary = "\n".join(lines)
    (work / "results.md").write_text(table + "\n\n" + summary + "\n")
    _plot(work / "front.png", result)
    print(table)
    print(summary)


if __name__ == "__main__":
    main()
