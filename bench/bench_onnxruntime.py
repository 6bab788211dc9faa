"""ONNX Runtime serving and int8 descendants on the CIFAR-10 ResNet-18 bench teacher.

    python bench/bench_onnxruntime.py --store runs/acc2/block --cache /work/cache --test-images 1000 \\
        --out bench/results_onnxruntime.json

One thread (torch and every ONNX Runtime session), one run; every comparison is timed
interleaved in the same pass, so ratios hold on a loaded machine where absolute times do
not. Measured:

1. chained sessions (one per frame segment and live descendant, I/O binding) vs one
   exported session of the same configuration vs PyTorch eager, at four configurations;
2. a swap that changes every block, from the session cache and from disk (read, hash,
   create the sessions);
3. int8 vs float per level: ONNX bytes, latency (chain) and accuracy of the whole
   composition at that level, and the mean per-block accuracy drop;
4. the number of configurations the optimizer chooses from, float only vs float + int8,
   and the estimate's error on random (sparsity, precision) chains.

``--store``: a trained block store of the teacher (``bench_accuracy.py`` writes one under
``--work``/block); without it the teacher's descendants are extracted untrained into a
temporary folder. The ONNX folder is written into a temporary folder, not the store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_jpg  # noqa: E402

from cv_tasks import get_model  # noqa: E402
from legodnn import AutoBlockManager, CommonModelManager  # noqa: E402
from legodnn.blockmanager.switcher import BlockSwitcher  # noqa: E402
from legodnn.online.latency import time_interleaved  # noqa: E402
from legodnn.online.onnx_export import OnnxRunner, export_onnx  # noqa: E402
from legodnn.onnxrt import OrtBlockSwitcher, export_onnx_store  # noqa: E402
from legodnn.onnxrt.profile import profile_onnx  # noqa: E402

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.3, 0.6, 0.8]


def _teacher(path: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    model = get_model("cifar_resnet18", num_classes=10, base_width=16)
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=None)
    p.add_argument("--teacher", type=Path, default=Path(__file__).parent / "weights" / "cifar10_resnet18_w16.safetensors")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "legodnn" / "cifar10")
    p.add_argument("--archive", type=Path, default=cifar10_jpg.DEFAULT_ARCHIVE)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--batch", type=int, default=32, help="the larger batch of the chaining comparison")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results_onnxruntime.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = _teacher(args.teacher)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ort-"))
    if args.store is None:
        store = tmp / "store"
        AutoBlockManager(SPARSITIES, model, None, SIZE, verbose=False).extract_all_blocks(str(store))
        store_kind = "extracted, untrained descendants"
    else:
        store, store_kind = args.store, f"trained store {args.store}"
    test = cifar10_jpg.load_split("test", args.cache, args.archive)
    idx = test.subset_indices(args.test_images, seed=0)
    test_b = cifar10_jpg.Batches(cifar10_jpg.Split(test.images[idx], test.labels[idx]), 250, train=False)
    train = cifar10_jpg.load_split("train", args.cache, args.archive)
    cidx = train.subset_indices(64 * args.calibration_batches, seed=1)
    calib = cifar10_jpg.Batches(cifar10_jpg.Split(train.images[cidx], train.labels[cidx]), 64, train=False)
    out: Dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load average "
                                      f"{os.getloadavg()[0]:.1f} at start (shared, loaded)",
                           "threads": 1, "store": store_kind, "sparsities": SPARSITIES,
                           "test_images": len(idx), "onnxruntime": __import__("onnxruntime").__version__,
                           "torch": torch.__version__}

    start = time.perf_counter()
    onnx_dir = tmp / "onnx"
    export_onnx_store(store, model, calibration=calib, calibration_batches=args.calibration_batches,
                      onnx_dir=onnx_dir, verbose=False)
    out["export_s"] = time.perf_counter() - start
    start = time.perf_counter()
    profile = profile_onnx(store, test_b, onnx_dir=onnx_dir, runs=args.runs, num_compositions=20,
                           measure_float_accuracy=True)
    out["profile_s"] = time.perf_counter() - start

    ort_sw = OrtBlockSwitcher.from_store(store, onnx_dir=onnx_dir, cache_bytes=2**40)
    torch_sw = BlockSwitcher(str(store), model)
    names = ort_sw.block_names
    x = torch.rand(SIZE, generator=torch.Generator().manual_seed(0))

    # 1. chained vs one session vs eager, interleaved in one pass, at batch 1 and a larger batch
    chains = []
    fns = []
    for batch in (1, args.batch):
        xb = torch.rand((batch,) + SIZE[1:], generator=torch.Generator().manual_seed(0))
        for level in SPARSITIES:
            cfg = [level] * len(names)
            ort_sw.switch(cfg)
            torch_sw.switch(cfg)
            config = ort_sw._config
            one = OnnxRunner(export_onnx(torch_sw.model, SIZE), num_threads=1)
            eager = torch_sw.model.body
            with torch.no_grad():
                ref = eager(xb)
            chains.append({"batch": batch, "level": level,
                           "max_abs_diff_chain_vs_eager": float((ort_sw.model(xb) - ref).abs().max()),
                           "max_abs_diff_one_session_vs_eager": float((one(xb) - ref).abs().max())})

            def chained(config=config, xb=xb):
                ort_sw._config = config
                return ort_sw.run(xb)

            def eager_run(m=eager, xb=xb):
                with torch.no_grad():
                    return m(xb)

            x_np = xb.numpy()
            fns += [chained, lambda one=one, x_np=x_np: one.run_numpy(x_np), eager_run]
    times = time_interleaved(fns, args.runs * 3, "cpu", rounds=10)
    for i, row in enumerate(chains):
        c, o, e = times[3 * i: 3 * i + 3]
        row.update({"chained_ms": 1e3 * c, "one_session_ms": 1e3 * o, "eager_ms": 1e3 * e,
                    "chain_overhead": c / o - 1.0, "chained_vs_eager": c / e})
    out["latency"] = chains
    out["segments"] = sum(1 for s in ort_sw.plan.steps if s.kind == "segment")
    out["sessions_per_inference"] = len(ort_sw.plan.steps)

    # 2. swaps that change every block: from cache and from disk
    cfg_a, cfg_b = [0.3] * len(names), [0.6] * len(names)
    ort_sw.preload(["float"])
    cached = []
    for i in range(10):
        cached.append(ort_sw.switch(cfg_a if i % 2 == 0 else cfg_b).seconds)
    disk = []
    for i in range(6):
        ort_sw.switch([0.0] * len(names))
        ort_sw.clear_cache()
        r = ort_sw.switch(cfg_a if i % 2 == 0 else cfg_b)
        assert len(r.from_disk) == len(names)
        disk.append(r.seconds)
    torch_disk = []
    for i in range(6):
        torch_sw.switch([0.0] * len(names))
        torch_sw.clear_cache()
        torch_disk.append(torch_sw.switch(cfg_a if i % 2 == 0 else cfg_b).seconds)
    out["swap_all_blocks"] = {"from_cache_ms": 1e3 * statistics.median(cached),
                              "from_disk_ms": 1e3 * statistics.median(disk),
                              "pytorch_from_disk_ms": 1e3 * statistics.median(torch_disk)}

    # 3. int8 vs float per level
    mm = CommonModelManager()
    levels = []
    chain_fns = []
    for level in SPARSITIES:
        row: Dict[str, Any] = {"level": level}
        for prec in ("float", "int8"):
            opts = [profile.option(n, level, prec) for n in names]
            row[f"{prec}_bytes"] = profile.frame_bytes + sum(o.size_bytes for o in opts)
            row[f"{prec}_estimated_ms"] = 1e3 * (profile.frame_latency_s + sum(o.latency_s for o in opts))
            drops = [o.metric_drop for o in opts if o.metric_drop is not None]
            row[f"{prec}_mean_block_drop"] = statistics.mean(drops) if drops else None
            ort_sw.switch([level] * len(names), prec)
            row[f"{prec}_accuracy"] = float(mm.get_model_acc(ort_sw.model, test_b, "cpu"))
            config = ort_sw._config

            def chained(config=config):
                ort_sw._config = config
                return ort_sw.run(x)

            chain_fns.append(chained)
        row["bytes_ratio_int8_float"] = row["int8_bytes"] / row["float_bytes"]
        row["accuracy_drop_int8_vs_float"] = row["float_accuracy"] - row["int8_accuracy"]
        levels.append(row)
    times = time_interleaved(chain_fns, args.runs * 5, "cpu", rounds=10)
    for i, row in enumerate(levels):
        row["float_ms"], row["int8_ms"] = 1e3 * times[2 * i], 1e3 * times[2 * i + 1]
        row["latency_ratio_int8_float"] = times[2 * i + 1] / times[2 * i]
    out["teacher_accuracy_onnxruntime"] = profile.teacher_metric
    out["int8_vs_float"] = levels

    # 4. the choice set and the estimate
    k = len(SPARSITIES)
    out["configurations"] = {"float": k ** len(names), "float_int8": (2 * k) ** len(names)}
    out["estimate"] = {key: profile.validation[key] for key in ("n", "within_10pct", "mean_abs_rel_error",
                                                                "median_rel_error")}
    out["load_average_end"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
