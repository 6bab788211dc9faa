"""BlockRetrainer and BlockProfiler on a small model and synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from zoo import build

from legodnn import AutoBlockManager, BlockSwitcher, CommonModelManager, LegoDNNError, StoreError
from legodnn.errors import FingerprintMismatchError
from legodnn.model_manager import AbstractModelManager
from legodnn.offline import BlockProfiler, BlockRetrainer, ModelProfile

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.4, 0.8]


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("offline")
    model = build("functional")
    mm = CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    bm.extract_all_blocks(str(root / "compressed"))
    train = DataLoader(_data(64, 0), batch_size=16, shuffle=True)
    test = DataLoader(_data(48, 1), batch_size=16)
    return root, model, mm, bm, train, test


@pytest.fixture(scope="module")
def trained(setup):
    root, model, mm, bm, train, test = setup
    history = BlockRetrainer(model, bm, mm, str(root / "compressed"), str(root / "trained"), 3, train,
                             verbose=False).train_all_blocks()
    return root / "trained", history


def test_retrainer_writes_a_store_with_history(setup, trained) -> None:
    root, model, mm, bm, train, test = setup
    path, history = trained
    assert set(history) == {f"{b}@{s:g}" for b in bm.block_names for s in SPARSITIES if s > 0}
    for h in history.values():
        assert len(h["train"]) == 3 and len(h["val"]) == 3
        assert all(math.isfinite(v) for v in h["train"] + h["val"])
    # distillation lowers the training loss of most descendants
    improved = sum(h["train"][-1] < h["train"][0] for h in history.values())
    assert improved >= 0.75 * len(history)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["trained"]["epochs"] == 3
    # sparsity 0 is the teacher's own block, not retrained; the others changed
    comp = json.loads((root / "compressed" / "manifest.json").read_text())
    for b_new, b_old in zip(manifest["blocks"], comp["blocks"]):
        for d_new, d_old in zip(b_new["descendants"], b_old["descendants"]):
            assert (d_new["sha256"] == d_old["sha256"]) == (d_new["sparsity"] == 0.0)
    # the best epoch by held-out loss is the one stored
    sw = BlockSwitcher(str(path), build("functional", seed=5))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(sw.model(x), model(x))


def test_retrainer_resumes(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, model, mm, bm, train, test = setup
    out = tmp_path / "trained"
    first = BlockRetrainer(model, bm, mm, str(root / "compressed"), str(out), 1, train, verbose=False).train_all_blocks()
    # a later run with more epochs continues after epoch 1 instead of starting over
    calls = {"n": 0}
    real = BlockRetrainer._epoch

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BlockRetrainer, "_epoch", counting)
    second = BlockRetrainer(model, bm, mm, str(root / "compressed"), str(out), 2, train, verbose=False).train_all_blocks()
    assert calls["n"] == 1
    for key, h in second.items():
        assert len(h["train"]) == 2 and h["train"][0] == first[key]["train"][0]


def test_interrupted_training_keeps_completed_epochs(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, model, mm, bm, train, test = setup
    out = tmp_path / "trained"
    real = BlockRetrainer._epoch

    def dying(self, students, optims, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, students, optims, epoch)

    monkeypatch.setattr(BlockRetrainer, "_epoch", dying)
    with pytest.raises(KeyboardInterrupt):
        BlockRetrainer(model, bm, mm, str(root / "compressed"), str(out), 2, train, verbose=False).train_all_blocks()
    state = json.loads((out / "training" / "state.json").read_text())
    assert state["epochs_done"] == 1
    assert not (out / "manifest.json").exists()  # not a complete store yet
    monkeypatch.setattr(BlockRetrainer, "_epoch", real)
    history = BlockRetrainer(model, bm, mm, str(root / "compressed"), str(out), 2, train,
                             verbose=False).train_all_blocks()
    assert all(len(h["train"]) == 2 for h in history.values())
    assert (out / "manifest.json").exists()


def test_nan_loss_is_an_error(setup, tmp_path: Path) -> None:
    root, model, mm, bm, train, test = setup
    nan_loss = lambda out, target: (out - target).square().mean() * float("nan")  # noqa: E731
    with pytest.raises(LegoDNNError, match="learning rate"):
        BlockRetrainer(model, bm, mm, str(root / "compressed"), str(tmp_path / "t"), 1, train, loss_fn=nan_loss,
                       verbose=False).train_all_blocks()


def test_errors_in_one_block_surface(setup, tmp_path: Path) -> None:
    root, model, mm, bm, train, test = setup

    def picky(out, target):
        if out.shape[1] == 32:
            raise RuntimeError("boom in one block")
        return torch.nn.functional.mse_loss(out, target)

    with pytest.raises(RuntimeError, match="boom in one block"):
        BlockRetrainer(model, bm, mm, str(root / "compressed"), str(tmp_path / "t"), 1, train, loss_fn=picky,
                       verbose=False).train_all_blocks()


def test_bad_inputs(setup, tmp_path: Path) -> None:
    root, model, mm, bm, train, test = setup
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(LegoDNNError, match="no batches"):
        BlockRetrainer(model, bm, mm, str(root / "compressed"), str(tmp_path / "a"), 1, empty, val_loader=[],
                       verbose=False).train_all_blocks()
    other = AutoBlockManager([0.0, 0.5], model, mm, SIZE, verbose=False)
    with pytest.raises(StoreError, match="sparsities"):
        BlockRetrainer(model, other, mm, str(root / "compressed"), str(tmp_path / "b"), 1, train, verbose=False)
    resnet = AutoBlockManager(SPARSITIES, build("cifar_resnet18"), mm, SIZE, verbose=False)
    with pytest.raises(FingerprintMismatchError):
        BlockRetrainer(model, resnet, mm, str(root / "compressed"), str(tmp_path / "c"), 1, train, verbose=False)

    class Lazy(CommonModelManager):
        def forward_to_gen_mid_data(self, model, batch_data, device):
            return torch.zeros(len(batch_data[0]), 10)  # never runs the model

    with pytest.raises(LegoDNNError, match="did not run"):
        BlockRetrainer(model, bm, Lazy(), str(root / "compressed"), str(tmp_path / "d"), 1, train,
                       verbose=False).train_all_blocks()
    with pytest.raises(StoreError, match="block_profile.json"):
        ModelProfile.load(tmp_path)


def test_profiler_matches_full_passes(setup, trained) -> None:
    root, model, mm, bm, train, test = setup
    path, _ = trained
    profile = BlockProfiler(model, bm, mm, str(path), test, SIZE, "cpu", verbose=False).profile_all_blocks()
    assert profile.teacher_metric == mm.get_model_acc(model, test, "cpu")
    assert profile.num_test_samples == 48
    table = profile.table()
    for name in bm.block_names:
        assert table[name][0.0].metric_drop == 0.0
        for s in SPARSITIES[1:]:
            full = mm.get_model_acc(bm.compose({name: bm.load_descendant(str(path), name, s)}), test, "cpu")
            assert table[name][s].metric == pytest.approx(full, abs=1e-12)
            assert table[name][s].metric_drop == pytest.approx(profile.teacher_metric - full, abs=1e-12)
            assert table[name][s].size_bytes < table[name][0.0].size_bytes
    blocks0 = sum(table[n][0.0].size_bytes for n in bm.block_names)
    assert profile.frame_size_bytes + blocks0 == profile.teacher_size_bytes
    assert ModelProfile.load(path) == profile
    header = (path / "block_profile.csv").read_text().splitlines()[0]
    assert header == "block,sparsity,accuracy_drop,accuracy,size_bytes,flops,params"


def test_profiler_without_accumulator_gives_the_same(setup, trained) -> None:
    root, model, mm, bm, train, test = setup
    path, _ = trained

    class Plain(AbstractModelManager):  # only the six original methods
        def __init__(self) -> None:
            self.inner = CommonModelManager()

        def forward_to_gen_mid_data(self, model, batch_data, device):
            return self.inner.forward_to_gen_mid_data(model, batch_data, device)

        def dummy_forward_to_gen_mid_data(self, model, model_input_size, device):
            return self.inner.dummy_forward_to_gen_mid_data(model, model_input_size, device)

        def get_model_acc(self, model, test_loader, device):
            return self.inner.get_model_acc(model, test_loader, device)

        def get_model_size(self, model):
            return self.inner.get_model_size(model)

        def get_model_flops_and_param(self, model, model_input_size):
            return self.inner.get_model_flops_and_param(model, model_input_size)

        def get_model_latency(self, model, sample_num, model_input_size, device):
            return self.inner.get_model_latency(model, sample_num, model_input_size, device)

    fast = BlockProfiler(model, bm, mm, str(path), test, SIZE, "cpu", verbose=False).profile_all_blocks()
    slow = BlockProfiler(model, bm, Plain(), str(path), test, SIZE, "cpu", verbose=False).profile_all_blocks()
    assert [b.metric for b in fast.blocks] == [b.metric for b in slow.blocks]


def test_accuracy_model_report(setup, trained) -> None:
    root, model, mm, bm, train, test = setup
    path, _ = trained
    profiler = BlockProfiler(model, bm, mm, str(path), test, SIZE, "cpu", verbose=False)
    profiler.profile_all_blocks()
    report = profiler.validate_accuracy_model(num_compositions=3, seed=1)
    assert len(report.measured) == 3
    for cfg, measured in zip(report.compositions, report.measured):
        blocks = {n: bm.load_descendant(str(path), n, s) for n, s in zip(bm.block_names, cfg) if s > 0}
        assert measured == pytest.approx(mm.get_model_acc(bm.compose(blocks), test, "cpu"), abs=1e-12)
    assert report.max_abs_error >= report.mean_abs_error >= 0
    assert (path / "accuracy_model.json").exists()
