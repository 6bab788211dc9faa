"""ONNX Runtime serving and int8 descendants on the CIFAR-10 ResNet-18 bench teacher.

    python bench/bench_onnxruntime.py --store runs/acc2/block --cache /work/cache --test-images 1000 \\
        --out bench/results_onnxruntime.json

One thread (torch and every ONNX Runtime session), one run; every comparison is timed
interleaved in the same pass, so ratios hold on a loaded machine where absolute times do
not. Measured:

0. why chaining costs: an empty (Identity) session call on bound buffers, each session
   alone vs in sequence inside the chain, and the chain vs one session at graph
   optimization levels ALL (with the NCHWc layout) and EXTENDED (without);
1. served (the fused session of the configuration, what OrtBlockSwitcher serves once it
   is built) and chained sessions (one per frame segment and live descendant, I/O
   binding: what serves right after a swap, or with fuse=False) vs one session exported
   from PyTorch of the same configuration vs PyTorch eager, at four configurations;
2. a swap that changes every block, from the session cache and from disk (read, hash,
   create the sessions), and the time until its fused session is installed;
3. int8 vs float per level: ONNX bytes, latency (served) and accuracy of the whole
   composition at that level, and the mean per-block accuracy drop;
4. the number of configurations the optimizer chooses from, float only vs float + int8,
   and the latency estimate's error on held-out random (sparsity, precision)
   configurations, fused and chained (calibrated on other random ones).

``--mobilenet``: also torchvision mobilenet_v3_large at 224 (random weights, descendants
extracted untrained, random calibration data): latency rows only (served, chained, one
session, eager) and the estimate, few runs.

``--store``: a trained block store of the teacher (``bench_accuracy.py`` writes one under
``--work``/block); without it the teacher's descendants are extracted untrained into a
temporary folder. The ONNX folder is written into a temporary folder, not the store.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
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


def estimate_summary(profile: Any) -> Dict[str, Any]:
    v = profile.validation
    keys = ("n_fit", "n", "within_10pct", "within_10pct_raw", "mean_abs_rel_error", "mean_abs_rel_error_raw",
            "median_rel_error", "max_abs_rel_error")
    return {mode: {**{k: v[mode].get(k) for k in keys}, "calibration": profile.calibration[mode]}
            for mode in ("fused", "chain")}


def _bound_run(buffers: Any, entry: Any) -> Callable[[], Any]:
    b, sess = buffers.binding(entry), entry.session
    return lambda: sess.run_with_iobinding(b)


def why_chaining_costs(sw: OrtBlockSwitcher, size: Tuple[int, ...], runs: int) -> Dict[str, Any]:
    """The teacher's chain at batch 1: an empty session call, each session alone vs in
    sequence, and chain vs one session at optimization levels ALL and EXTENDED."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from legodnn.onnxrt.fuse import fuse_steps

    sw.switch([0.0] * len(sw.block_names), "float")
    x = np.random.default_rng(0).random(size, dtype=np.float32)
    buffers = sw._allocate(sw._config, x)
    np.copyto(buffers.arrays[0], x)
    entries = sw._config.sessions
    ch = [[] for _ in entries]
    clock = time.perf_counter
    runs_ = [_bound_run(buffers, e) for e in entries]

    def chain_timed() -> None:
        for i, r in enumerate(runs_):
            t = clock()
            r()
            ch[i].append(clock() - t)

    shape = list(buffers.arrays[entries[0].step.outputs[0]].shape)
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)

    def session(data: bytes, level: Any) -> Any:
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = 1, 1, 3
        o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        o.graph_optimization_level = level
        return ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])

    ident = session(m.SerializeToString(), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    xi, yi = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    bd = ident.io_binding()
    bd.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(xi))
    bd.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(yi))
    fns = [lambda: ident.run_with_iobinding(bd), chain_timed] + runs_
    parts = [(e.step, e.data) for e in entries]
    fused = fuse_steps(sw.plan, parts)
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    for level in levels.values():
        sessions = [session(data, level) for _, data in parts]
        binds = []
        for (st, _), s_ in zip(parts, sessions):
            b = s_.io_binding()
            for n, v in zip(st.input_names(), st.inputs):
                b.bind_ortvalue_input(n, buffers.values[v])
            for n, v in zip(st.output_names(), st.outputs):
                b.bind_ortvalue_output(n, buffers.values[v])
            binds.append((s_, b))
        one = session(fused, level)
        b1 = one.io_binding()
        b1.bind_ortvalue_input("v0", buffers.values[0])
        for v in sw.plan.outputs:
            b1.bind_ortvalue_output(f"v{v}", buffers.values[v])
        fns.append(lambda binds=binds: [s_.run_with_iobinding(b) for s_, b in binds])
        fns.append(lambda one=one, b1=b1: one.run_with_iobinding(b1))
    t = time_interleaved(fns, runs * 3, "cpu", rounds=runs * 3)
    n = len(entries)
    alone = t[2:2 + n]
    in_chain = [statistics.median(c) for c in ch]
    lv = t[2 + n:]
    return {
        "batch": size[0],
        "identity_call_ms": 1e3 * t[0],
        "sessions": n,
        "session_alone_ms": [1e3 * a for a in alone],
        "session_in_chain_ms": [1e3 * c for c in in_chain],
        "sum_alone_ms": 1e3 * sum(alone),
        "sum_in_chain_ms": 1e3 * sum(in_chain),
        "chain_timed_ms": 1e3 * t[1],
        "opt_all": {"chain_ms": 1e3 * lv[0], "one_session_ms": 1e3 * lv[1], "overhead": lv[0] / lv[1] - 1},
        "opt_extended": {"chain_ms": 1e3 * lv[2], "one_session_ms": 1e3 * lv[3], "overhead": lv[2] / lv[3] - 1},
    }


def compare_serving(ort_sw: OrtBlockSwitcher, torch_sw: Any, size: Tuple[int, ...], levels: Sequence[float],
                    batches: Sequence[int], runs: int) -> List[Dict[str, Any]]:
    """Served (fused) vs chained vs one exported session vs eager, interleaved in one pass."""
    names = ort_sw.block_names
    rows: List[Dict[str, Any]] = []
    for batch in batches:
        fns, batch_rows = [], []
        xb = torch.rand((batch,) + tuple(size[1:]), generator=torch.Generator().manual_seed(0))
        for level in levels:
            cfg = [level] * len(names)
            ort_sw.switch(cfg)
            assert ort_sw.wait_fused(120)
            torch_sw.switch(cfg)
            served = ort_sw._config
            chained = dataclasses.replace(served, fused=None)
            one = OnnxRunner(export_onnx(torch_sw.model, size), num_threads=1)
            eager = torch_sw.model.body
            with torch.no_grad():
                ref = eager(xb)
            ort_sw._config = chained
            chain_out = ort_sw.model(xb)
            ort_sw._config = served
            batch_rows.append({"batch": batch, "level": level,
                         "max_abs_diff_chain_vs_eager": float((chain_out - ref).abs().max()),
                         "max_abs_diff_served_vs_eager": float((ort_sw.model(xb) - ref).abs().max()),
                         "max_abs_diff_one_session_vs_eager": float((one(xb) - ref).abs().max())})

            def run_config(config: Any, xb: torch.Tensor = xb) -> Any:
                ort_sw._config = config
                return ort_sw.run(xb)

            def eager_run(m: Any = eager, xb: torch.Tensor = xb) -> Any:
                with torch.no_grad():
                    return m(xb)

            x_np = xb.numpy()
            fns += [lambda c=served, f=run_config: f(c), lambda c=chained, f=run_config: f(c),
                    lambda one=one, x_np=x_np: one.run_numpy(x_np), eager_run]
        # one run of each per pass; batch 1 takes a millisecond, so many more runs there
        n = runs * (20 if batch == 1 else 4)
        times = time_interleaved(fns, n, "cpu", rounds=n)
        for i, row in enumerate(batch_rows):
            f, c, o, e = times[4 * i: 4 * i + 4]
            row.update({"runs": n, "served_ms": 1e3 * f, "chained_ms": 1e3 * c, "one_session_ms": 1e3 * o,
                        "eager_ms": 1e3 * e, "served_overhead": f / o - 1.0, "chain_overhead": c / o - 1.0,
                        "served_vs_eager": f / e, "chained_vs_eager": c / e})
        rows += batch_rows
    return rows


def bench_mobilenet(runs: int, tmp: Path) -> Dict[str, Any]:
    """torchvision mobilenet_v3_large at 224: served vs chained vs one session vs eager, the estimate."""
    import torchvision

    size = (1, 3, 224, 224)
    levels = [0.0, 0.5]
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_large(num_classes=1000).eval()
    store = tmp / "mnv3_store"
    start = time.perf_counter()
    AutoBlockManager(levels, model, None, size, verbose=False).extract_all_blocks(str(store))
    extract_s = time.perf_counter() - start
    g = torch.Generator().manual_seed(0)
    calib = [torch.rand(4, 3, 224, 224, generator=g) for _ in range(2)]
    start = time.perf_counter()
    export_onnx_store(store, model, calibration=calib, calibration_batches=2, verbose=False)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    profile = profile_onnx(store, None, runs=runs, num_compositions=20)
    profile_s = time.perf_counter() - start
    ort_sw = OrtBlockSwitcher.from_store(store, cache_bytes=2**40)
    torch_sw = BlockSwitcher(str(store), model)
    rows = compare_serving(ort_sw, torch_sw, size, levels, (1,), runs)
    return {"weights": "random (torchvision init), descendants extracted untrained", "sparsities": levels,
            "blocks": len(ort_sw.block_names), "segments": sum(1 for s in ort_sw.plan.steps if s.kind == "segment"),
            "sessions_per_inference_chained": len(ort_sw.plan.steps), "extract_s": extract_s,
            "export_s": export_s, "profile_s": profile_s, "latency": rows, "estimate": estimate_summary(profile)}


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
    p.add_argument("--mobilenet", action="store_true", help="also torchvision mobilenet_v3_large at 224")
    p.add_argument("--runs-mobilenet", type=int, default=8)
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
    profile = profile_onnx(store, test_b, onnx_dir=onnx_dir, runs=args.runs, num_compositions=40,
                           measure_float_accuracy=True)
    out["profile_s"] = time.perf_counter() - start

    ort_sw = OrtBlockSwitcher.from_store(store, onnx_dir=onnx_dir, cache_bytes=2**40)
    torch_sw = BlockSwitcher(str(store), model)
    names = ort_sw.block_names
    x = torch.rand(SIZE, generator=torch.Generator().manual_seed(0))

    out["why_chaining_costs"] = why_chaining_costs(ort_sw, SIZE, args.runs)
    out["latency"] = compare_serving(ort_sw, torch_sw, SIZE, SPARSITIES, (1, args.batch), args.runs)
    out["segments"] = sum(1 for s in ort_sw.plan.steps if s.kind == "segment")
    out["sessions_per_inference_chained"] = len(ort_sw.plan.steps)
    out["sessions_per_inference_served"] = 1

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
    fuse_wait = []
    for i in range(6):  # a configuration not fused before: the chain serves until its fused session is in
        level = SPARSITIES[i % len(SPARSITIES)]
        cfg = [level if b % 2 else 0.0 for b in range(len(names))]
        precs = ["int8" if (b + i) % 3 == 0 else "float" for b in range(len(names))]
        start = time.perf_counter()
        ort_sw.switch(cfg, precs)
        assert ort_sw.wait_fused(60)
        fuse_wait.append(time.perf_counter() - start)
    out["swap_all_blocks"] = {"from_cache_ms": 1e3 * statistics.median(cached),
                              "from_disk_ms": 1e3 * statistics.median(disk),
                              "pytorch_from_disk_ms": 1e3 * statistics.median(torch_disk),
                              "swap_until_fused_installed_ms": 1e3 * statistics.median(fuse_wait)}

    # 3. int8 vs float per level
    mm = CommonModelManager()
    levels = []
    chain_fns = []
    for level in SPARSITIES:
        row: Dict[str, Any] = {"level": level}
        for prec in ("float", "int8"):
            opts = [profile.option(n, level, prec) for n in names]
            row[f"{prec}_bytes"] = profile.frame_bytes + sum(o.size_bytes for o in opts)
            row[f"{prec}_estimated_ms"] = 1e3 * profile.estimate({n: (level, prec) for n in names})
            drops = [o.metric_drop for o in opts if o.metric_drop is not None]
            row[f"{prec}_mean_block_drop"] = statistics.mean(drops) if drops else None
            ort_sw.switch([level] * len(names), prec)
            assert ort_sw.wait_fused(60)
            row[f"{prec}_accuracy"] = float(mm.get_model_acc(ort_sw.model, test_b, "cpu"))
            config = ort_sw._config  # served: its fused session

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
    out["estimate"] = estimate_summary(profile)
    if args.mobilenet:
        out["mobilenet_v3_large_224"] = bench_mobilenet(args.runs_mobilenet, tmp)
    out["load_average_end"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
