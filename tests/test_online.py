"""LatencyEstimator, ONNX export, ScalingOptimizer, the on-device loop and its CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from zoo import build

from legodnn import (
    AutoBlockManager,
    BlockProfiler,
    BlockRetrainer,
    Budget,
    CommonModelManager,
    InfeasibleBudgetError,
    LatencyEstimator,
    LatencyProfile,
    LegoDNNError,
    OnDeviceRuntime,
    ScalingOptimizer,
    StoreError,
    export_onnx,
)
from legodnn.blockmanager.measure import count_flops
from legodnn.online.cli import main as cli_main
from legodnn.online.runtime import memory_budget_source

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.4, 0.8]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    """A functional model through extraction, one epoch of retraining and profiling."""
    root = tmp_path_factory.mktemp("online")
    model = build("functional")
    mm = CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    bm.extract_all_blocks(str(root / "compressed"))
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 3, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g))
    loader = DataLoader(data, batch_size=16)
    BlockRetrainer(model, bm, mm, str(root / "compressed"), str(root / "trained"), 1, loader,
                   verbose=False).train_all_blocks()
    BlockProfiler(model, bm, mm, str(root / "trained"), loader, SIZE, "cpu", verbose=False).profile_all_blocks()
    latency = LatencyEstimator(bm, mm, str(root / "trained"), 5, SIZE, "cpu", num_threads=torch.get_num_threads(),
                               verbose=False).profile_all_blocks(num_compositions=6)
    return root / "trained", model, mm, bm, latency


def test_latency_profile(pipeline) -> None:
    path, model, mm, bm, latency = pipeline
    assert latency.backend == "torch" and latency.device.startswith("cpu")
    assert latency.num_threads == torch.get_num_threads()
    table = latency.table()
    assert set(table) == set(bm.block_names)
    assert all(set(t) == set(SPARSITIES) and all(v > 0 for v in t.values()) for t in table.values())
    assert 0 < latency.frame_latency_s < latency.teacher_latency_s
    assert latency.method == "in_situ"  # the torch default: blocks timed inside composed models
    v = latency.validation
    assert v["n"] == 6 and len(v["measured_s"]) == 6 and 0.0 <= v["within_10pct"] <= 1.0
    assert LatencyProfile.load(path) == latency


def test_isolated_timing_and_bad_methods(pipeline, tmp_path: Path) -> None:
    path, model, mm, bm, _ = pipeline
    work = tmp_path / "trained"
    shutil.copytree(path, work)
    profile = LatencyEstimator(bm, mm, str(work), 3, SIZE, "cpu", method="isolated", rounds=1,
                               verbose=False).profile_all_blocks(num_compositions=0)
    assert profile.method == "isolated" and not profile.validation
    assert set(profile.table()) == set(bm.block_names) and profile.frame_latency_s > 0
    with pytest.raises(ValueError, match="in-situ timing needs the torch backend"):
        LatencyEstimator(bm, mm, str(work), 3, SIZE, "cpu", backend="onnxruntime", method="in_situ")
    with pytest.raises(ValueError, match="method must be"):
        LatencyEstimator(bm, mm, str(work), 3, SIZE, "cpu", method="fast")
    with pytest.raises(ValueError, match="rounds must be a whole number >= 1"):
        LatencyEstimator(bm, mm, str(work), 3, SIZE, "cpu", rounds=0)


def test_time_interleaved_keeps_each_function_apart() -> None:
    import time

    from legodnn.online.latency import time_interleaved

    calls = {"short": 0, "long": 0}

    def short() -> None:
        calls["short"] += 1

    def long() -> None:
        calls["long"] += 1
        time.sleep(0.002)

    fast, slow = time_interleaved([short, long], runs=7, rounds=3, warmup=1)
    assert calls == {"short": 8, "long": 8}  # 1 warm-up + 7 timed runs each, spread over 3 passes
    assert fast < 0.001 < 0.0015 < slow


def test_latency_profile_with_nan_is_refused(pipeline, tmp_path: Path) -> None:
    path = pipeline[0]
    data = json.loads((path / "latency_profile.json").read_text())
    data["blocks"][0]["latency_s"] = float("nan")
    (tmp_path / "latency_profile.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match="invalid latencies"):
        LatencyProfile.load(tmp_path)


def test_onnx_export_matches_torch(pipeline, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from legodnn.online import OnnxRunner

    path, model, mm, bm, _ = pipeline
    composed = bm.compose({b: bm.load_descendant(str(path), b, 0.4) for b in bm.block_names}).eval()
    onnx_path = tmp_path / "model.onnx"
    export_onnx(composed, (1, 3, 32, 32), onnx_path)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = composed(x)
    got = OnnxRunner(onnx_path)(x)
    assert torch.allclose(expected, got, atol=1e-4, rtol=1e-4)
    # an existing file is the user's unless they say otherwise: refused before any export
    mine = tmp_path / "notes.onnx"
    mine.write_text("not a model")
    with pytest.raises(LegoDNNError, match="already exists"):
        export_onnx(composed, (1, 3, 32, 32), mine)
    assert mine.read_text() == "not a model"
    export_onnx(composed, (1, 3, 32, 32), mine, overwrite=True)
    assert OnnxRunner(mine)(x).shape == expected.shape


@pytest.mark.slow
def test_onnxruntime_backend(pipeline, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path, model, mm, bm, _ = pipeline
    work = tmp_path / "trained"
    shutil.copytree(path, work)
    profile = LatencyEstimator(bm, mm, str(work), 5, SIZE, "cpu", backend="onnxruntime", num_threads=1,
                               verbose=False).profile_all_blocks(num_compositions=4)
    assert profile.backend == "onnxruntime" and profile.num_threads == 1
    assert all(b.latency_s > 0 for b in profile.blocks)


def _optimizer(pipeline) -> ScalingOptimizer:
    path, model, mm, bm, _ = pipeline
    return ScalingOptimizer(str(path), SIZE, bm, mm, "cpu")


def test_optimizer_respects_budgets_and_swaps_only_changes(pipeline) -> None:
    opt = _optimizer(pipeline)
    bm = pipeline[3]
    sizes = [opt.problem.frame_memory + sum(m[k] for m in opt.problem.memories) for k in range(len(SPARSITIES))]
    lats = [opt.problem.frame_latency + sum(t[k] for t in opt.problem.latencies) for k in range(len(SPARSITIES))]
    budget_mem = (sizes[0] + sizes[-1]) / 2
    budget_lat = max(lats) * 2
    r = opt.update_model(budget_lat, budget_mem)
    assert r.feasible and r.model_bytes <= budget_mem and r.estimated_latency_s <= budget_lat
    assert list(r.sparsities) == opt.switcher.sparsities
    assert r.solve_seconds >= 0 and r.swap_seconds >= 0
    assert set(r.blocks_swapped) == {n for n, s in zip(bm.block_names, r.sparsities) if s != 0.0}
    again = opt.update_model(budget_lat, budget_mem)
    assert again.sparsities == r.sparsities and again.blocks_swapped == ()
    # the live model is the configuration it reports
    x = torch.rand(2, 3, 32, 32)
    blocks = {n: bm.load_descendant(str(pipeline[0]), n, s) for n, s in zip(bm.block_names, r.sparsities) if s > 0}
    with torch.no_grad():
        assert torch.equal(opt.model(x), bm.compose(blocks)(x))
    # a generous budget gives the teacher back
    assert opt.update_model(budget_lat, sizes[0] * 2).estimated_metric >= r.estimated_metric


def test_optimizer_infeasible(pipeline) -> None:
    opt = _optimizer(pipeline)
    smallest = opt.problem.frame_memory + sum(min(m) for m in opt.problem.memories)
    with pytest.raises(InfeasibleBudgetError, match="memory") as info:
        opt.update_model(None, smallest * 0.5)
    assert info.value.closest.binding == ("memory",)
    before = opt.switcher.sparsities
    assert opt.switcher.sparsities == before  # nothing installed
    fastest = opt.problem.frame_latency + sum(min(t) for t in opt.problem.latencies)
    with pytest.raises(InfeasibleBudgetError, match="latency"):
        opt.update_model(fastest * 0.5, None)
    r = opt.update_model(fastest * 0.5, None, fallback=True)
    assert not r.feasible and r.binding == ("latency",)
    assert r.estimated_latency_s == pytest.approx(fastest)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            opt.update_model(bad, None)


def test_optimizer_checks_profiles(pipeline, tmp_path: Path) -> None:
    path, model, mm, bm, _ = pipeline
    work = tmp_path / "trained"
    shutil.copytree(path, work)
    data = json.loads((work / "latency_profile.json").read_text())
    data["num_threads"] = torch.get_num_threads() + 3
    (work / "latency_profile.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="thread"):
        ScalingOptimizer(str(work), SIZE, bm, mm, "cpu")
    data["device"] = "cpu:some other chip"
    data["num_threads"] = torch.get_num_threads()
    (work / "latency_profile.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="other chip"):
        ScalingOptimizer(str(work), SIZE, bm, mm, "cpu")
    data["fingerprint"] = "0" * 64
    (work / "latency_profile.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match="another model"):
        ScalingOptimizer(str(work), SIZE, bm, mm, "cpu")
    (work / "latency_profile.json").unlink()
    with pytest.raises(StoreError, match="LatencyEstimator"):
        ScalingOptimizer(str(work), SIZE, bm, mm, "cpu")
    with pytest.raises(StoreError, match="input"):
        ScalingOptimizer(str(path), (1, 3, 64, 64), bm, mm, "cpu")


def test_runtime_follows_the_budget(pipeline) -> None:
    opt = _optimizer(pipeline)
    sizes = [opt.problem.frame_memory + sum(m[k] for m in opt.problem.memories) for k in range(len(SPARSITIES))]
    budgets = [Budget(None, sizes[0] * 1.01), Budget(None, sizes[0] * 1.02), Budget(None, sizes[-1] * 1.01)]
    current = {"i": 0}
    runtime = OnDeviceRuntime(opt, lambda: budgets[current["i"]], poll_interval_s=0.01, threshold=0.05)
    assert runtime.step() is not None  # first budget: optimize
    assert set(opt.switcher.sparsities) == {0.0}
    current["i"] = 1
    assert runtime.step() is None  # moved 1%: below the threshold
    current["i"] = 2
    event = runtime.step()
    assert event is not None and event.result is not None and event.result.model_bytes <= budgets[2].max_memory_bytes
    assert max(opt.switcher.sparsities) == 0.8
    # serving continues while the loop swaps in the background
    current["i"] = 0
    x = torch.rand(1, 3, 32, 32)
    with runtime:
        for i in range(30):
            current["i"] = 0 if (i // 5) % 2 == 0 else 2
            assert runtime.infer(x).shape == (1, 10)
    assert len(runtime.events) >= 3


def test_memory_budget_source() -> None:
    budget = memory_budget_source(0.5)()
    assert budget.max_memory_bytes > 0 and budget.max_latency_s is None
    with pytest.raises(ValueError):
        memory_budget_source(0.0)


def test_cli_serves(pipeline, capsys: pytest.CaptureFixture) -> None:
    path = pipeline[0]
    code = cli_main(["--blocks", str(path), "--model", "zoo:FunctionalNet", "--duration", "0.5",
                     "--max-memory-mb", "0.1", "--threads", str(torch.get_num_threads())])
    assert code == 0
    assert "served" in capsys.readouterr().out


def test_accuracy_models(pipeline) -> None:
    path, model, mm, bm, _ = pipeline

    from legodnn import ModelProfile

    profile = ModelProfile.load(path)
    table = profile.table()
    teacher = profile.teacher_metric
    for kind in ("additive", "multiplicative"):
        opt = ScalingOptimizer(str(path), SIZE, bm, mm, "cpu", accuracy_model=kind)
        r = opt.update_model(None, None)
        drops = [max(0.0, table[n][s].metric_drop) for n, s in zip(bm.block_names, r.sparsities)]
        if kind == "additive":
            expected = teacher - sum(drops)
        else:
            expected = teacher * math.prod(1 - d / teacher for d in drops)
        assert r.estimated_metric == pytest.approx(expected, abs=1e-6)
        assert r.sparsities == tuple(0.0 for _ in bm.block_names)  # no budget: the teacher, never noise
    with pytest.raises(ValueError, match="accuracy_model"):
        ScalingOptimizer(str(path), SIZE, bm, mm, "cpu", accuracy_model="magic")


def _conv_stage(c_in: int, c_mid: int, c_out: int) -> torch.nn.Sequential:
    conv = torch.nn.Conv2d
    return torch.nn.Sequential(conv(c_in, c_mid, 3, padding=1), torch.nn.ReLU(), conv(c_mid, c_out, 3, padding=1))


class _SharedTower(torch.nn.Module):
    """A tower run once per pyramid level, as a detector head's is: a block called 3x a forward.

    The data-dependent branch keeps fx from tracing the whole model, so the stem and the
    tower are traced as parts of their own (as torchvision's detectors are).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.tower = _conv_stage(3, 8, 8), _conv_stage(8, 16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        levels = [f, torch.nn.functional.avg_pool2d(f, 2), torch.nn.functional.avg_pool2d(f, 4)]
        out = torch.cat([self.tower(level).mean((2, 3)) for level in levels], 1)
        return out if float(out.abs().sum()) >= 0 else -out


def test_latency_sums_the_calls_of_a_block_run_several_times(tmp_path: Path, monkeypatch) -> None:
    from legodnn.online import latency as latency_module

    model, mm = _SharedTower().eval(), CommonModelManager()
    bm = AutoBlockManager([0.0, 0.5], model, mm, SIZE, 1.0, verbose=False)
    bm.extract_all_blocks(str(tmp_path / "blocks"))

    def one_second_per_call(self, x):  # a stopwatch whose every call takes exactly 1 s
        out = self.block(x)
        self.log.append((self.key, 1.0))
        return out

    monkeypatch.setattr(latency_module._Stopwatch, "forward", one_second_per_call)
    profile = LatencyEstimator(bm, mm, str(tmp_path / "blocks"), 3, SIZE, "cpu", method="in_situ",
                               verbose=False).profile_all_blocks(num_compositions=0)
    per_block = {row.block: row.latency_s for row in profile.blocks}
    calls = {n: 0 for n in bm.block_names}
    hooks = [bm.get_block(n).register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
             for n in bm.block_names]
    try:
        with torch.no_grad():
            bm.compose({n: bm.get_block(n) for n in bm.block_names})(torch.rand(SIZE))
    finally:
        for h in hooks:
            h.remove()
    assert sorted(calls.values()) == [1, 3]  # the stem's block once, the tower's once per level
    shapes = bm.block_call_shapes()
    assert {n: len(v) for n, v in shapes.items()} == calls
    # FLOPs in the store count every call: the tower's sum over its three input sizes
    store = bm.open_store(str(tmp_path / "blocks"))
    for name in bm.block_names:
        block = bm.get_block(name)
        expected = sum(count_flops(block, shape, "cpu") for shape in shapes[name])
        assert store.descendants[name][0.0].flops == expected
    tower = next(n for n in bm.block_names if calls[n] == 3)
    assert store.descendants[tower][0.0].flops > count_flops(bm.get_block(tower), shapes[tower][0], "cpu")
    for name, n_calls in calls.items():
        assert per_block[name] == pytest.approx(float(n_calls)), name

    # isolated: the block is timed on the input of each of its calls (one second each here)
    monkeypatch.setattr(LatencyEstimator, "time_modules", lambda self, modules: [1.0] * len(modules))
    isolated = LatencyEstimator(bm, mm, str(tmp_path / "blocks"), 3, SIZE, "cpu", method="isolated",
                                verbose=False).profile_all_blocks(num_compositions=0)
    for row in isolated.blocks:
        assert row.latency_s == pytest.approx(float(calls[row.block])), row.block


class _OptionalStage(torch.nn.Module):
    """A stage that runs only on bright inputs, as a keypoint head runs only on detections."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.extra = _conv_stage(3, 8, 8), _conv_stage(8, 16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        if float(x.amax()) > 1.5:  # data-dependent: fx traces the stages as parts
            f = self.extra(f)
        return f.mean((2, 3))


class _BrightDummy(CommonModelManager):
    def dummy_forward_to_gen_mid_data(self, model, model_input_size, device):
        return model(2 * torch.rand(model_input_size, device=device))


def test_in_situ_block_that_does_not_run_costs_nothing(tmp_path: Path) -> None:
    model, mm = _OptionalStage().eval(), _BrightDummy()
    bm = AutoBlockManager([0.0, 0.5], model, mm, SIZE, 1.0, verbose=False)
    assert {s.part for s in bm.blocks} == {"stem", "extra"}  # both stages ran in the dummy forward
    bm.extract_all_blocks(str(tmp_path / "blocks"))
    # the estimator's own input lies in [0, 1): the extra stage never runs while it times
    profile = LatencyEstimator(bm, mm, str(tmp_path / "blocks"), 3, SIZE, "cpu", method="in_situ",
                               verbose=False).profile_all_blocks(num_compositions=0)
    extra = {b.name for b in bm.blocks if b.part == "extra"}
    times = {(row.block, row.sparsity): row.latency_s for row in profile.blocks}
    assert all(t == 0.0 for (name, _), t in times.items() if name in extra)
    assert all(t > 0.0 for (name, _), t in times.items() if name not in extra)
