"""Composition-aware retraining and the fitted accuracy estimate."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch
from zoo import build

from legodnn import AutoBlockManager, BlockSwitcher, CommonModelManager, LegoDNNError
from legodnn.errors import StoreError
from legodnn.offline import BlockProfiler, BlockRetrainer, CompositionRetrainer
from legodnn.offline.accuracy_fit import (
    FittedAccuracyModel,
    MeasuredComposition,
    fit_accuracy_model,
)
from legodnn.offline.composition import SandwichSampler, distillation_loss
from legodnn.online.solver import ScalingProblem, brute_force, solve

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.4, 0.8]


def _batches(n: int, seed: int, batch: int = 8):
    """A fixed list of (images, labels) batches: the same order every epoch, so resuming repeats it."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("composition")
    model = build("functional")
    mm = CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    bm.extract_all_blocks(str(root / "compressed"))
    train, val = _batches(4, 0), _batches(2, 1)
    BlockRetrainer(model, bm, mm, str(root / "compressed"), str(root / "blocks"), 1, train, val,
                   verbose=False).train_all_blocks()
    return root, model, mm, bm, train, val


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    manifest = json.loads((path / "manifest.json").read_text())
    out = {"frame": load_file(str(path / manifest["frame"]["file"]))}
    for block in manifest["blocks"]:
        for d in block["descendants"]:
            out[(block["spec"]["name"], d["sparsity"])] = load_file(str(path / d["file"]))
    return out


def test_sampler_covers_the_extremes_and_repeats() -> None:
    sampler = SandwichSampler((0.0, 0.3, 0.6, 0.8), 5, num_random=3, seed=7)
    seen_levels = set()
    for step in range(6):
        configs = sampler.sample(0, step)
        assert configs[0] == (0.8,) * 5  # the smallest, every step
        assert configs == sampler.sample(0, step)  # a function of (seed, epoch, step) alone
        assert all(any(s > 0 for s in c) for c in configs)
        seen_levels |= {c[0] for c in configs if len(set(c)) == 1}
    assert seen_levels == {0.3, 0.6, 0.8}
    assert sampler.sample(1, 0) != sampler.sample(0, 0) or sampler.sample(1, 1) != sampler.sample(0, 1)


def test_sampler_every_level_puts_each_level_in_every_step() -> None:
    sampler = SandwichSampler((0.0, 0.3, 0.6, 0.8), 4, num_random=1, seed=3, every_level=True)
    for step in range(5):
        configs = sampler.sample(2, step)
        assert configs[:3] == [(0.8,) * 4, (0.3,) * 4, (0.6,) * 4]
        assert len(configs) == 4 and any(s > 0 for s in configs[3])
    # the default cycles one level per step and always draws four compositions
    default = SandwichSampler((0.0, 0.3, 0.6, 0.8), 4, num_random=2, seed=3)
    assert [len(default.sample(0, step)) for step in range(6)] == [4] * 6
    assert sum(c == (0.3,) * 4 for step in range(6) for c in default.sample(0, step)) >= 2


def test_distillation_loss_is_zero_only_at_the_teacher() -> None:
    logits = torch.randn(4, 10)
    assert float(distillation_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits + torch.randn(4, 10), logits)) > 0
    maps = {"a": torch.randn(2, 3, 4, 4), "b": [torch.randn(2, 5)]}
    assert float(distillation_loss(maps, maps)) == 0.0
    with pytest.raises(TypeError, match="floating-point"):
        distillation_loss([torch.arange(3)], [torch.arange(3)])


def test_stage_changes_only_descendants(setup, tmp_path: Path) -> None:
    root, model, mm, bm, train, val = setup
    before = _weights(root / "blocks")
    teacher_state = {k: v.clone() for k, v in model.state_dict().items()}
    history = CompositionRetrainer(model, bm, mm, str(root / "blocks"), str(tmp_path / "out"), 2, train, val,
                                   verbose=False, lr=1e-2).train_all_compositions()
    after = _weights(tmp_path / "out")
    assert len(history.train) == len(history.val) == 2
    assert all(torch.equal(v, after["frame"][k]) for k, v in before["frame"].items())
    changed = 0
    for key, tensors in before.items():
        if key == "frame":
            continue
        same = all(torch.equal(v, after[key][k]) for k, v in tensors.items())
        if key[1] == 0.0:
            assert same, f"the teacher's block {key[0]} changed"
        else:
            changed += not same
    if history.best_epoch:
        assert changed > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher_state.items())
    assert all(p.requires_grad for p in model.parameters())
    # sparsity 0 composes to exactly the teacher
    sw = BlockSwitcher(str(tmp_path / "out"), build("functional", seed=5))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(sw.model(x), model(x))


def test_composition_training_lowers_the_loss(setup, tmp_path: Path) -> None:
    root, model, mm, bm, train, val = setup
    history = CompositionRetrainer(model, bm, mm, str(root / "blocks"), str(tmp_path / "out"), 3, train, train,
                                   verbose=False, lr=3e-3).train_all_compositions()
    assert history.val[-1] < history.val[0] or history.best_epoch > 0
    assert history.train[-1] < history.train[0]


def test_feature_distillation_trains_and_validates_on_features(setup, tmp_path: Path) -> None:
    """``feature_weight`` adds the blocks' feature error to the loss that trains and to the
    held-out loss that picks the epoch (it raised a KeyError in validation before)."""
    root, model, mm, bm, train, val = setup
    losses = {}
    for weight in (0.0, 1.0):
        history = CompositionRetrainer(model, bm, mm, str(root / "blocks"), str(tmp_path / f"fw{weight}"), 1, train,
                                       val, verbose=False, lr=1e-12, feature_weight=weight).train_all_compositions()
        losses[weight] = history.val[0]
    assert math.isfinite(losses[1.0]) and losses[1.0] > losses[0.0]


def test_resume_gives_the_same_weights(setup, tmp_path: Path) -> None:
    root, model, mm, bm, train, val = setup
    straight = tmp_path / "straight"
    CompositionRetrainer(model, bm, mm, str(root / "blocks"), str(straight), 2, train, val, verbose=False,
                         lr=1e-2).train_all_compositions()

    class Interrupt(Exception):
        pass

    class Failing(list):
        """The training batches, failing half-way through the second epoch."""

        passes = 0

        def __iter__(self):
            Failing.passes += 1
            for i, b in enumerate(list.__iter__(self)):
                if Failing.passes == 2 and i == 2:
                    raise Interrupt
                yield b

    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        CompositionRetrainer(model, bm, mm, str(root / "blocks"), str(resumed), 2, Failing(train), val,
                             verbose=False, lr=1e-2).train_all_compositions()
    assert not (resumed / "manifest.json").exists()
    assert json.loads((resumed / "training" / "composition" / "state.json").read_text())["epochs_done"] == 1
    CompositionRetrainer(model, bm, mm, str(root / "blocks"), str(resumed), 2, train, val, verbose=False,
                         lr=1e-2).train_all_compositions()
    a, b = _weights(straight), _weights(resumed)
    for key in a:
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    # other options must not resume from this state
    with pytest.raises(LegoDNNError, match="other blocks, weights or options"):
        CompositionRetrainer(model, bm, mm, str(root / "blocks"), str(resumed), 3, train, val, verbose=False,
                             lr=1e-2).train_all_compositions()


def test_nan_stops_with_a_message(setup, tmp_path: Path) -> None:
    root, model, mm, bm, train, val = setup
    bad = [(torch.full_like(x, float("nan")), y) for x, y in train]
    with pytest.raises(LegoDNNError, match="distillation loss became nan"):
        CompositionRetrainer(model, bm, mm, str(root / "blocks"), str(tmp_path / "o"), 1, bad, val,
                             verbose=False).train_all_compositions()


def test_bad_options(setup, tmp_path: Path) -> None:
    root, model, mm, bm, train, val = setup
    for kwargs, match in (({"max_epoch": 1.5}, "whole number"), ({"max_epoch": 0}, "whole number"),
                          ({"max_epoch": 1, "lr": -1.0}, "lr"), ({"max_epoch": 1, "batchnorm": "x"}, "batchnorm")):
        with pytest.raises(LegoDNNError, match=match):
            CompositionRetrainer(model, bm, mm, str(root / "blocks"), str(tmp_path / "o"), train_loader=train,
                                 val_loader=val, verbose=False, **kwargs)
    with pytest.raises(LegoDNNError, match="is the source"):
        CompositionRetrainer(model, bm, mm, str(root / "blocks"), str(root / "blocks"), 1, train, val)
    with pytest.raises(LegoDNNError, match="composition_epochs"):
        BlockRetrainer(model, bm, mm, str(root / "compressed"), str(tmp_path / "t"), 1, train, val,
                       composition_epochs=-1)


def test_block_retrainer_runs_the_stage(setup, tmp_path: Path) -> None:
    root, model, mm, bm, train, val = setup
    r = BlockRetrainer(model, bm, mm, str(root / "compressed"), str(tmp_path / "t"), 1, train, val,
                       verbose=False, composition_epochs=1)
    r.train_all_blocks()
    assert r.composition_history is not None and len(r.composition_history.val) == 1
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["trained"]["composition_epochs"] == 1
    assert (tmp_path / "t" / "training" / "composition" / "state.json").is_file()


# -- the fitted accuracy estimate ---------------------------------------------------------


def _synthetic(seed: int, curvature: float, max_drop: float = 0.8):
    """Compositions whose metric follows the estimate's own family: 0.9 at the teacher, at
    least 0.1 (chance) however deep the pruning, compounding by ``curvature``."""
    rng = random.Random(seed)
    names = [f"block_{i}" for i in range(6)]
    levels = [0.0, 0.3, 0.6, 0.8]
    true = {}
    for n in names:
        a = rng.uniform(0.01, 0.03)
        true[(n, 0.3)], true[(n, 0.6)] = a, a * rng.uniform(2, 3)
        true[(n, 0.8)] = true[(n, 0.6)] * rng.uniform(1.5, 2.5)

    def metric(cfg):
        z = sum(true[(n, s)] for n, s in zip(names, cfg) if s > 0)
        return 0.9 - max_drop * -math.expm1(-(z + curvature * z * z) / max_drop)

    singles = {(n, s): 0.9 - metric(tuple(s if m == n else 0.0 for m in names)) for n in names for s in levels if s}
    return names, levels, metric, singles, rng


def test_fit_recovers_a_known_interaction() -> None:
    names, levels, metric, singles, rng = _synthetic(1, curvature=4.0)
    configs = [tuple(rng.choice(levels) for _ in names) for _ in range(30)]
    fitted = fit_accuracy_model("accuracy", 0.9, names, levels, singles,
                                [MeasuredComposition(c, metric(c)) for c in configs])
    assert fitted.curvature == pytest.approx(4.0, rel=0.05)
    assert fitted.max_drop == pytest.approx(0.8, rel=0.05)
    assert fitted.heldout_max_abs_error < 2e-3
    for cfg in itertools.islice(itertools.product(levels, repeat=len(names)), 0, None, 97):
        assert fitted.estimate(cfg) == pytest.approx(metric(cfg), abs=1e-3)
    # the summed single drops miss the interaction where everything is pruned
    deepest = (0.8,) * len(names)
    summed = 0.9 - sum(singles[(n, 0.8)] for n in names)
    assert summed - metric(deepest) > 10 * abs(fitted.estimate(deepest) - metric(deepest))
    # terms: zero at sparsity 0, non-negative, non-decreasing
    for row in fitted.terms:
        assert row[0] == 0.0 and all(b >= a >= 0 for a, b in zip(row, row[1:]))


def test_fit_weighs_single_drops_as_asked() -> None:
    names, levels, metric, singles, rng = _synthetic(3, curvature=2.0)
    configs = [tuple(rng.choice(levels) for _ in names) for _ in range(30)]
    measured = [MeasuredComposition(c, metric(c)) for c in configs]
    # single drops that lie (all 0): the less they weigh, the closer the fit stays to the compositions
    liars = {k: 0.0 for k in singles}
    errors = []
    for weight in (1.0, 0.01):
        fitted = fit_accuracy_model("accuracy", 0.9, names, levels, liars, measured, folds=0, single_weight=weight)
        errors.append(max(abs(fitted.estimate(c) - metric(c)) for c in configs))
    assert errors[1] < errors[0]
    for bad in (0, -1.0, float("nan"), "1"):
        with pytest.raises(LegoDNNError, match="single_weight"):
            fit_accuracy_model("accuracy", 0.9, names, levels, singles, measured, single_weight=bad)


def test_fit_without_interaction_finds_none(tmp_path: Path) -> None:
    names, levels, metric, singles, rng = _synthetic(2, curvature=0.0)
    configs = [tuple(rng.choice(levels) for _ in names) for _ in range(20)]
    fitted = fit_accuracy_model("accuracy", 0.9, names, levels, singles,
                                [MeasuredComposition(c, metric(c)) for c in configs])
    assert fitted.curvature < 0.05
    fitted.save(tmp_path)
    assert FittedAccuracyModel.load(tmp_path) == fitted
    # the measured compositions are kept with the fit, in order, so it can be refitted without measuring
    assert [(m.sparsities, m.metric) for m in fitted.measured] == [(c, metric(c)) for c in configs]
    refit = fit_accuracy_model("accuracy", 0.9, names, levels, singles, list(fitted.measured))
    assert refit.terms == fitted.terms
    # a file written before they were kept still loads, with none
    path = tmp_path / "accuracy_estimate.json"
    data = json.loads(path.read_text())
    del data["measured"]
    path.write_text(json.dumps(data))
    assert FittedAccuracyModel.load(tmp_path).measured == ()
    data["measured"] = [{"sparsities": [0.3], "metric": 0.5}]  # one sparsity for six blocks
    path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="wrong length"):
        FittedAccuracyModel.load(tmp_path)


def test_optimizer_stays_exact_for_the_fitted_estimate() -> None:
    """Maximizing teacher - h(sum of terms) with h increasing is the knapsack on the terms:
    brute force over every configuration agrees with the solver on random instances."""
    for seed in range(8):
        names, levels, metric, singles, rng = _synthetic(seed, curvature=rng_curv(seed))
        configs = [tuple(rng.choice(levels) for _ in names) for _ in range(15)]
        fitted = fit_accuracy_model("accuracy", 0.9, names, levels, singles,
                                    [MeasuredComposition(c, metric(c)) for c in configs], folds=0)
        lat = [[rng.uniform(1, 2) * (1 - s) for s in levels] for _ in names]
        mem = [[rng.uniform(1, 2) * (1 - s) for s in levels] for _ in names]
        problem = ScalingProblem.from_arrays(fitted.terms, lat, mem)
        budget_l, budget_m = sum(map(max, lat)) * rng.uniform(0.3, 0.9), sum(map(max, mem)) * rng.uniform(0.3, 0.9)
        best = None
        for choice in itertools.product(range(len(levels)), repeat=len(names)):
            cfg = [levels[k] for k in choice]
            if sum(lat[b][k] for b, k in enumerate(choice)) <= budget_l and \
                    sum(mem[b][k] for b, k in enumerate(choice)) <= budget_m:
                value = fitted.estimate(cfg)
                best = value if best is None or value > best else best
        solution = solve(problem, budget_l, budget_m)
        assert solution.feasible
        chosen = [levels[k] for k in solution.choice]
        assert fitted.estimate(chosen) == pytest.approx(best, abs=1e-12)
        assert brute_force(problem, budget_l, budget_m).total_drop == pytest.approx(solution.total_drop, abs=1e-12)


def test_fit_takes_the_whole_levels_as_measured(tmp_path: Path) -> None:
    """Levels far better than the mixes (what composition-aware retraining gives): they leave
    the fit, which then describes the mixes, and are estimated by their measurement."""
    names, levels, metric, singles, rng = _synthetic(4, curvature=2.0)
    boost = {0.3: 0.02, 0.6: 0.1, 0.8: 0.3}

    def measured_metric(cfg):
        return metric(cfg) + (boost[cfg[0]] if cfg[0] and len(set(cfg)) == 1 else 0.0)

    configs = [(s,) * len(names) for s in levels[1:]] + [tuple(rng.choice(levels) for _ in names) for _ in range(25)]
    measured = [MeasuredComposition(c, measured_metric(c)) for c in configs]
    fitted = fit_accuracy_model("accuracy", 0.9, names, levels, singles, measured)
    assert dict(fitted.levels) == pytest.approx({s: measured_metric((s,) * len(names)) for s in levels[1:]})
    assert fitted.num_compositions == len(configs) and len(fitted.measured) == len(configs)
    assert fitted.heldout_max_abs_error < 2e-3  # cross-validated over the mixes, which follow the family
    for s in levels[1:]:
        assert fitted.estimate((s,) * len(names)) == pytest.approx(measured_metric((s,) * len(names)))
    mixed = (0.8,) * (len(names) - 1) + (0.6,)
    assert fitted.estimate(mixed) == pytest.approx(metric(mixed), abs=2e-3)
    # fitting the levels too (the earlier behaviour) misses both the levels and the mixes
    pooled = fit_accuracy_model("accuracy", 0.9, names, levels, singles, measured, measured_levels=False)
    assert pooled.levels == ()
    assert abs(pooled.estimate((0.8,) * len(names)) - measured_metric((0.8,) * len(names))) > 0.05
    with pytest.raises(LegoDNNError, match="measured_levels"):
        fit_accuracy_model("accuracy", 0.9, names, levels, singles, measured, measured_levels="yes")
    fitted.save(tmp_path)
    assert FittedAccuracyModel.load(tmp_path) == fitted
    path = tmp_path / "accuracy_estimate.json"
    data = json.loads(path.read_text())
    data["levels"] = [[0.5, 0.7]]  # not a sparsity of the store
    path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="measured level"):
        FittedAccuracyModel.load(tmp_path)
    del data["levels"]  # a file from before levels were measured: every composition is fitted
    path.write_text(json.dumps(data))
    assert FittedAccuracyModel.load(tmp_path).levels == ()


def _level_instance(rng: random.Random):
    """Blocks offering some of the sparsities, each maybe twice (a float and a noisier int8
    option: the same level, an extra term >= 0), measured levels above or below the fit."""
    n = rng.randint(1, 5)
    levels = [0.0, 0.3, 0.6, 0.8]
    option_levels, drops, lats, mems = [], [], [], []
    for _ in range(n):
        row = [s for s in levels if s == 0.0 or rng.random() < 0.8]
        row = row + [s for s in row if rng.random() < 0.4]
        base = {s: s * rng.uniform(0.01, 0.05) for s in levels}
        option_levels.append(row)
        drops.append([base[s] + (rng.uniform(0, 0.01) if i >= len(set(row)) else 0.0) for i, s in enumerate(row)])
        lats.append([rng.uniform(0.5, 1.5) * (1.1 - s) for s in row])
        mems.append([rng.uniform(0.5, 1.5) * (1.1 - s) for s in row])
    measured = {s: 0.9 - rng.uniform(-0.02, 0.25) * s for s in levels[1:] if rng.random() < 0.8}
    problem = ScalingProblem.from_arrays(drops, lats, mems, frame_latency=0.1, frame_memory=0.2)
    budget_l = rng.uniform(0.3, 1.0) * (0.1 + sum(map(max, lats)))
    budget_m = rng.uniform(0.3, 1.0) * (0.2 + sum(map(max, mems)))
    return problem, option_levels, measured, budget_l, budget_m


def test_level_search_is_exact() -> None:
    """Measured whole levels make the objective piecewise; brute force over every
    configuration agrees with the search on random instances, int8-like extras included."""
    from legodnn.online.level_search import solve_with_levels

    def estimate(total: float) -> float:
        return 0.9 - 0.5 * -math.expm1(-(total + 3 * total * total) / 0.5)

    rng = random.Random(0)
    checked = 0
    for _ in range(300):
        problem, option_levels, measured, budget_l, budget_m = _level_instance(rng)
        best = None
        for choice in itertools.product(*[range(len(row)) for row in option_levels]):
            lat = problem.frame_latency + sum(problem.latencies[b][k] for b, k in enumerate(choice))
            mem = problem.frame_memory + sum(problem.memories[b][k] for b, k in enumerate(choice))
            if lat > budget_l * (1 + 1e-9) or mem > budget_m * (1 + 1e-9):
                continue
            total = sum(problem.drops[b][k] for b, k in enumerate(choice))
            at = {option_levels[b][k] for b, k in enumerate(choice)}
            if len(at) == 1 and next(iter(at)) in measured:
                s = next(iter(at))
                own = sum(min(d for d, t in zip(problem.drops[b], option_levels[b]) if t == s)
                          for b in range(len(choice)))
                value = measured[s] - (total - own)
            else:
                value = estimate(total)
            best = value if best is None or value > best else best
        solution, value = solve_with_levels(problem, budget_l, budget_m, option_levels, measured, estimate)
        if best is None:
            assert not solution.feasible
            continue
        checked += 1
        assert solution.feasible
        assert solution.latency <= budget_l * (1 + 1e-9) and solution.memory <= budget_m * (1 + 1e-9)
        assert value == pytest.approx(best, abs=1e-9)
    assert checked > 150


def rng_curv(seed: int) -> float:
    return (0.0, 1.0, 4.0, 10.0)[seed % 4]


def test_profiler_fits_the_estimate_and_the_optimizer_uses_it(setup, tmp_path: Path) -> None:
    import shutil

    root, model, mm, bm, train, val = setup
    work = tmp_path / "blocks"
    shutil.copytree(root / "blocks", work)
    profiler = BlockProfiler(model, bm, mm, str(work), val, SIZE, "cpu", verbose=False)
    profiler.profile_all_blocks(num_compositions=6)
    fitted = FittedAccuracyModel.load(work)
    assert fitted.num_compositions == 6
    # the whole levels come first in the profiler's compositions and are taken as measured
    assert [s for s, _ in fitted.levels] == [s for s in bm.block_sparsity if s > 0]
    # refitting from what the profile kept reproduces the fit without measuring; options change it
    from legodnn.offline.accuracy_fit import refit_accuracy_model

    assert refit_accuracy_model(work) == fitted == FittedAccuracyModel.load(work)
    pooled = refit_accuracy_model(work, measured_levels=False)
    assert pooled.levels == () and FittedAccuracyModel.load(work) == pooled
    assert pooled.weights_digest == fitted.weights_digest and pooled.measured == fitted.measured
    assert fitted.block_names == tuple(bm.block_names)
    report = profiler.validate_accuracy_model(num_compositions=3, seed=5)
    assert len(report.estimated_fitted) == 3
    assert report.estimated_fitted[0] == pytest.approx(fitted.estimate(report.compositions[0]))
    profiler.profile_all_blocks(num_compositions=0)
    assert not (work / "accuracy_estimate.json").exists()
    with pytest.raises(LegoDNNError, match="whole number"):
        profiler.profile_all_blocks(num_compositions=-1)


def test_validation_set_of_a_small_model_is_finite() -> None:
    """Two blocks at 0 and 0.5 have three compositions with a descendant: all of them, no endless draw."""
    from legodnn.offline.composition import SandwichSampler

    assert sorted(SandwichSampler((0.0, 0.5), 2).validation_set()) == [(0.0, 0.5), (0.5, 0.0), (0.5, 0.5)]
    assert SandwichSampler((0.0, 0.5), 1).validation_set() == [(0.5,)]


def test_batchnorm_recalibration_per_level(tmp_path: Path) -> None:
    """Each descendant's BatchNorm ends with the plain mean of the batch statistics it saw
    beside its own level; every other tensor, and the teacher's blocks, stay as they were."""
    from legodnn.offline.bn_calibration import (
        level_compositions,
        recalibrate_batchnorm,
        recalibrate_store,
    )
    from legodnn.offline.composition import SwitchableModel

    model = build("cifar_resnet18")
    mm = CommonModelManager()
    bm = AutoBlockManager([0.0, 0.5], model, mm, SIZE, verbose=False)
    bm.extract_all_blocks(str(tmp_path / "compressed"))
    batches = _batches(2, 3)
    students = {(b, 0.5): bm.load_descendant(str(tmp_path / "compressed"), b, 0.5) for b in bm.block_names}
    before = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in students.items()}
    teacher_before = {n: t.clone() for n, t in bm.teacher.state_dict().items()}
    net = SwitchableModel(bm, students)
    norm = next(m for m in students[(bm.block_names[-1], 0.5)].modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().mean((0, 2, 3))))
    used = recalibrate_batchnorm(net, level_compositions(bm), batches, lambda m, b: m(b[0]), max_batches=5)
    hook.remove()
    net.restore()
    assert used == 2 and len(seen) == 2
    assert torch.allclose(norm.running_mean, torch.stack(seen).mean(0), atol=1e-6)
    assert norm.momentum == 0.1 and not norm.training
    for key, m in students.items():
        for name, t in m.state_dict().items():
            if "running_" not in name and "num_batches" not in name:
                assert torch.equal(t, before[key][name]), name
    assert all(torch.equal(t, teacher_before[n]) for n, t in bm.teacher.state_dict().items())

    assert recalibrate_store(bm, mm, str(tmp_path / "compressed"), str(tmp_path / "bn"), batches) == 2
    recalibrated = bm.load_descendant(str(tmp_path / "bn"), bm.block_names[-1], 0.5)
    bn = next(m for m in recalibrated.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.allclose(bn.running_mean, norm.running_mean, atol=1e-6)
