"""OnDeviceRuntime on ONNX Runtime, the ONNX Runtime profile and the (sparsity, precision) choice."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from legodnn import (  # noqa: E402
    AutoBlockManager,
    BlockProfiler,
    Budget,
    CommonModelManager,
    LatencyEstimator,
    OnDeviceRuntime,
    ScalingOptimizer,
)
from legodnn.errors import InvalidArgumentError, LegoDNNError, StoreError  # noqa: E402
from legodnn.online.solver import ScalingProblem, brute_force, solve  # noqa: E402
from legodnn.onnxrt import OrtLegoModel, export_onnx_store  # noqa: E402
from legodnn.onnxrt.profile import OnnxProfile, profile_onnx  # noqa: E402

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.5]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory):
    """A width-8 CIFAR ResNet-18 store, profiled in PyTorch and in ONNX Runtime (float + int8)."""
    from cv_tasks import get_model

    root = tmp_path_factory.mktemp("ortrt")
    torch.manual_seed(0)
    model = get_model("cifar_resnet18", num_classes=10, base_width=8).eval()
    mm = CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    store = root / "store"
    bm.extract_all_blocks(str(store))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32, generator=g)
    with torch.no_grad():  # labels the teacher itself gives: an accuracy that int8 can lose
        y = model(x).argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    BlockProfiler(model, bm, mm, str(store), loader, SIZE, "cpu", verbose=False).profile_all_blocks(num_compositions=0)
    LatencyEstimator(bm, mm, str(store), 2, SIZE, "cpu", num_threads=torch.get_num_threads(), verbose=False,
                     method="isolated", rounds=1).profile_all_blocks(num_compositions=0)
    export_onnx_store(store, model, calibration=loader, verbose=False)
    profile = profile_onnx(store, loader, runs=3, num_compositions=8)
    return store, model, loader, profile


def test_onnx_profile(profiled) -> None:
    store, _, _, profile = profiled
    assert profile.precisions == ("float", "int8") and profile.teacher_metric == 1.0
    assert len(profile.options) == 8 * 2 * 2 and profile.frame_bytes > 0 and profile.frame_latency_s > 0
    for o in profile.options:
        assert o.latency_s > 0 and o.size_bytes > 0
        assert (o.metric_drop is not None) == (o.precision == "int8" or o.sparsity == 0.0)
        if o.precision == "int8":
            f = profile.option(o.block, o.sparsity, "float")
            assert o.size_bytes < 0.5 * f.size_bytes
    v = profile.validation
    assert v["n"] == 4 and v["n_fit"] == 5 and len(v["measured_s"]) == 4 and 0.0 <= v["within_10pct"] <= 1.0
    assert all(o.chain_latency_s > 0 for o in profile.options) and profile.chain_frame_latency_s > 0
    # the fitted calibration of each serving mode is physically sensible (no assertion on speed):
    # scales within their bounds, an offset no lower than minus the frame and half the fastest
    # configuration's block time, and every estimate positive, the fastest configuration's too
    from legodnn.onnxrt.profile import SCALE_BOUNDS

    names = sorted({o.block for o in profile.options})
    for mode in ("fused", "chain"):
        frame, offset, scales = profile.mode_costs(mode)
        assert set(scales) == {"float", "int8"}
        assert all(SCALE_BOUNDS[0] <= a <= SCALE_BOUNDS[1] for a in scales.values())
        min_sum = sum(min(profile.block_latency(o, mode) for o in profile.options if o.block == n) for n in names)
        assert offset >= -(frame + 0.5 * min_sum) - 1e-12
        fastest = {n: min(((o.sparsity, o.precision) for o in profile.options if o.block == n),
                          key=lambda c, n=n: profile.estimate({n: c}, mode) - profile.estimate({}, mode))
                   for n in names}
        assert profile.estimate(fastest, mode) > 0
        assert v[mode]["n"] == 4 and all(e > 0 for e in v[mode]["estimated_s"])
        # the estimate is the fitted formula
        cfg = {n: (0.5, "int8") for n in names}
        want = frame + offset + scales["int8"] * sum(profile.block_latency(profile.option(n, 0.5, "int8"), mode)
                                                     for n in names)
        assert profile.estimate(cfg, mode) == pytest.approx(want)
    from legodnn.onnxrt import OnnxStore

    assert OnnxProfile.load(OnnxStore(store / "onnx")) == profile


def test_runtime_onnxruntime_chooses_int8_under_a_tight_memory_budget(profiled) -> None:
    store, model, loader, profile = profiled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the latency profile's device/threads may differ in CI
        optimizer = ScalingOptimizer.from_store(str(store), model, copy_model=True)
    floats = optimizer.problem.num_configurations
    smallest_float = profile.frame_bytes + sum(
        min(o.size_bytes for o in profile.options if o.block == b and o.precision == "float")
        for b in optimizer.block_names)
    budget = Budget(None, 0.9 * smallest_float)
    runtime = OnDeviceRuntime(optimizer, lambda: budget, backend="onnxruntime", precisions=("float", "int8"))
    assert isinstance(runtime.model, OrtLegoModel) and runtime.backend == "onnxruntime"
    assert optimizer.problem.num_configurations == floats * 2 ** len(optimizer.block_names)
    event = runtime.step()
    result = event.result
    assert result.feasible and "int8" in result.precisions and result.model_bytes <= budget.max_memory_bytes
    sw = runtime.model.switcher
    assert sw.sparsities == list(result.sparsities) and sw.live_precisions == list(result.precisions)
    x = torch.randn(2, 3, 32, 32)
    assert sw.wait_fused(60)  # the fused session is installed in the background: wait, then compare bits
    assert torch.equal(runtime.infer(x), sw.run(x))
    # an open budget takes the teacher, all float: nothing beats no drop
    budget = Budget(None, None)
    result = runtime.step().result
    assert result.sparsities == (0.0,) * 8 and result.precisions == ("float",) * 8


def test_from_store_backend_and_refusals(profiled) -> None:
    store, model, _, _ = profiled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = OnDeviceRuntime.from_store(str(store), model, lambda: Budget(None, None), copy_model=True,
                                        backend="onnxruntime")
    assert rt.optimizer.problem.num_configurations == 2 ** 8  # float only by default
    assert rt.step().result.precisions == ("float",) * 8
    opt = rt.optimizer
    with pytest.raises(InvalidArgumentError, match="PyTorch eager runtime serves float descendants only"):
        OnDeviceRuntime(opt, lambda: Budget(), precisions=("float", "int8"))
    with pytest.raises(InvalidArgumentError, match="backend must be one of"):
        OnDeviceRuntime(opt, lambda: Budget(), backend="tensorrt")
    with pytest.raises(InvalidArgumentError, match="precisions must list some of"):
        OnDeviceRuntime(opt, lambda: Budget(), backend="onnxruntime", precisions=("fp16",))


def test_int8_without_onnx_folder_is_refused(profiled, tmp_path) -> None:
    import shutil

    store, model, _, _ = profiled
    bare = tmp_path / "bare"
    shutil.copytree(store, bare, ignore=shutil.ignore_patterns("onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = ScalingOptimizer.from_store(str(bare), model, copy_model=True)
        with pytest.raises(StoreError, match="has no int8 descendants"):
            OnDeviceRuntime(opt, lambda: Budget(), backend="onnxruntime", precisions=("float", "int8"))
        # float on ONNX Runtime still works, exported in memory, on PyTorch's costs (with a warning)
        with pytest.warns(UserWarning, match="no ONNX Runtime profile"):
            rt = OnDeviceRuntime(opt, lambda: Budget(None, None), backend="onnxruntime")
    assert rt.step().result.precisions == ("float",) * 8
    with torch.no_grad():
        assert rt.infer(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_optimizer_choice_is_exact_over_float_and_int8(profiled) -> None:
    store, model, _, profile = profiled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = ScalingOptimizer.from_store(str(store), model, copy_model=True)
        OnDeviceRuntime(optimizer, lambda: Budget(), backend="onnxruntime", precisions=("float", "int8"))
    problem = optimizer.problem
    lo = problem.frame_memory + sum(min(r) for r in problem.memories)
    hi = problem.frame_memory + sum(max(r) for r in problem.memories)
    lat_lo = problem.frame_latency + sum(min(r) for r in problem.latencies)
    lat_hi = problem.frame_latency + sum(max(r) for r in problem.latencies)
    rng = random.Random(0)
    for _ in range(12):
        mem = lo + rng.random() * (hi - lo)
        lat = lat_lo + rng.random() * (lat_hi - lat_lo)
        exact, brute = solve(problem, lat, mem), brute_force(problem, lat, mem)
        assert exact.feasible == brute.feasible
        assert exact.total_drop == pytest.approx(brute.total_drop, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_solver_exact_on_random_sparsity_precision_instances(seed: int) -> None:
    """Random (sparsity x precision) choice sets shaped like the optimizer's: int8 options
    smaller, usually faster, with more drop than their float descendant."""
    rng = random.Random(seed)
    blocks, levels = rng.randint(2, 6), rng.randint(2, 4)
    drops, lats, mems = [], [], []
    for _ in range(blocks):
        fd = sorted(rng.random() * 0.05 for _ in range(levels))
        fl = sorted((rng.uniform(1e-4, 1e-3) for _ in range(levels)), reverse=True)
        fm = sorted((rng.uniform(1e3, 1e5) for _ in range(levels)), reverse=True)
        drops.append(fd + [d + rng.random() * 0.02 for d in fd])
        lats.append(fl + [t * rng.uniform(0.4, 1.2) for t in fl])
        mems.append(fm + [m * rng.uniform(0.25, 0.3) for m in fm])
    problem = ScalingProblem.from_arrays(drops, lats, mems, frame_latency=1e-4, frame_memory=1e3)
    assert problem.num_configurations == (2 * levels) ** blocks
    lo_m = problem.frame_memory + sum(min(m) for m in mems)
    hi_m = problem.frame_memory + sum(max(m) for m in mems)
    lo_l = problem.frame_latency + sum(min(t) for t in lats)
    hi_l = problem.frame_latency + sum(max(t) for t in lats)
    for _ in range(10):
        mem = lo_m * 0.9 + rng.random() * (hi_m - lo_m * 0.9)
        lat = lo_l * 0.9 + rng.random() * (hi_l - lo_l * 0.9)
        exact, brute = solve(problem, lat, mem), brute_force(problem, lat, mem)
        assert exact.feasible == brute.feasible and exact.binding == brute.binding
        assert exact.total_drop == pytest.approx(brute.total_drop, abs=1e-12)
        if exact.feasible:
            assert exact.memory <= mem * (1 + 1e-12) and exact.latency <= lat * (1 + 1e-12)


def test_profile_without_onnx_folder_is_a_clear_error(profiled, tmp_path) -> None:
    import shutil

    store, _, _, _ = profiled
    bare = tmp_path / "bare2"
    shutil.copytree(store, bare, ignore=shutil.ignore_patterns("onnx"))
    with pytest.raises(LegoDNNError, match="has no ONNX folder"):
        profile_onnx(bare)


def test_onnxruntime_backend_needs_no_pytorch_latency_profile(profiled, tmp_path) -> None:
    import shutil

    store, model, _, profile = profiled
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / "latency_profile.json").unlink()
    with pytest.raises(StoreError, match="latency_profile.json is missing"):
        OnDeviceRuntime.from_store(str(copy), model, lambda: Budget(None, None), copy_model=True)
    rt = OnDeviceRuntime.from_store(str(copy), model, lambda: Budget(1.2 * profile.estimate(
        {o.block: (0.5, "int8") for o in profile.options}), None), copy_model=True, backend="onnxruntime",
        precisions=("float", "int8"))
    result = rt.step().result
    assert result.feasible and 0 < result.estimated_latency_s
    chosen = dict(zip(rt.optimizer.block_names, zip(result.sparsities, result.precisions)))
    # the optimizer's latency is the ONNX Runtime estimate of fused serving
    assert result.estimated_latency_s == pytest.approx(profile.estimate(chosen, "fused"))
    shutil.rmtree(copy / "onnx")
    with pytest.raises(StoreError, match="neither an ONNX Runtime profile nor latency_profile.json"):
        OnDeviceRuntime.from_store(str(copy), model, lambda: Budget(None, None), copy_model=True,
                                   backend="onnxruntime")
