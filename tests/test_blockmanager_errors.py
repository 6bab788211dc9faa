"""Bad input gets a clear legodnn error; switching is atomic; the cache honours its limit."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from torch import nn
from zoo import build

import legodnn.blockmanager.auto_block_manager as abm_module
from legodnn import (
    AutoBlockManager,
    BlockSwitcher,
    CommonModelManager,
    CorruptedStoreError,
    FingerprintMismatchError,
    InvalidSparsityError,
    LegoDNNError,
    NoBlocksError,
    StoreError,
    TraceError,
)

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.3, 0.6, 0.8]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "blocks"
    AutoBlockManager(SPARSITIES, build("cifar_resnet18"), CommonModelManager(), SIZE, verbose=False).extract_all_blocks(
        str(path)
    )
    return path


@pytest.mark.parametrize("bad", [[0.0, 1.0], [-0.1], [float("nan")], ["x"], [0.5, 1.5]])
def test_sparsity_out_of_range(bad: list) -> None:
    with pytest.raises(InvalidSparsityError, match=r"\[0, 1\)|list of numbers"):
        AutoBlockManager(bad, build("functional"), None, SIZE, verbose=False)


def test_zero_sparsity_is_added() -> None:
    m = AutoBlockManager([0.5], build("functional"), None, SIZE, verbose=False)
    assert m.block_sparsity == [0.0, 0.5]


@pytest.mark.parametrize(
    "model",
    [nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)), nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())],
    ids=["no-layers", "nothing-internal"],
)
def test_no_prunable_layers(model: nn.Module) -> None:
    with pytest.raises(NoBlocksError, match="no block"):
        AutoBlockManager(SPARSITIES, model, None, SIZE, verbose=False)


def test_input_size_that_does_not_fit() -> None:
    with pytest.raises(LegoDNNError, match="model_input_size"):
        AutoBlockManager(SPARSITIES, build("cifar_resnet18"), None, (1, 1, 32, 32), verbose=False)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # data-dependent control flow
            x = self.conv(x)
        return self.conv2(x)


def test_untraceable_model() -> None:
    with pytest.raises(TraceError, match="torch.fx"):
        AutoBlockManager(SPARSITIES, Untraceable(), None, SIZE, verbose=False)


def test_fingerprint_mismatch(store: Path) -> None:
    from cv_tasks import get_model

    with pytest.raises(FingerprintMismatchError, match="different model"):
        BlockSwitcher(str(store), get_model("cifar_resnet18", num_classes=100))
    with pytest.raises(FingerprintMismatchError):
        BlockSwitcher(str(store), get_model("cifar_resnet34"))


def test_wrong_number_of_sparsities(store: Path) -> None:
    sw = BlockSwitcher(str(store), build("cifar_resnet18"))
    n = len(sw.block_names)
    with pytest.raises(InvalidSparsityError, match=f"for {n} blocks"):
        sw.switch([0.3] * (n - 1))
    with pytest.raises(InvalidSparsityError, match="not in the blocks directory"):
        sw.switch([0.5] * n)
    with pytest.raises(InvalidSparsityError, match="unknown block"):
        sw.switch({"nope": 0.3})


def test_dict_switch_changes_only_named_blocks(store: Path) -> None:
    sw = BlockSwitcher(str(store), build("cifar_resnet18"))
    r = sw.switch({"block_2": 0.6})
    assert r.changed == ("block_2",)
    assert sw.sparsities[2] == 0.6 and sum(sw.sparsities) == pytest.approx(0.6)


def _copy_store(store: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(store, dst)
    return dst


def test_missing_weights_file(store: Path, tmp_path: Path) -> None:
    path = _copy_store(store, tmp_path)
    (path / "block_1_s0p3.safetensors").unlink()
    sw = BlockSwitcher(str(path), build("cifar_resnet18"))
    cfg = [0.0] * len(sw.block_names)
    cfg[1] = 0.3
    with pytest.raises(CorruptedStoreError, match="missing"):
        sw.switch(cfg)
    (path / "frame.safetensors").unlink()
    with pytest.raises(CorruptedStoreError, match="missing"):
        BlockSwitcher(str(path), build("cifar_resnet18"))


def test_corrupted_weights_file(store: Path, tmp_path: Path) -> None:
    path = _copy_store(store, tmp_path)
    f = path / "block_0_s0.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptedStoreError, match="hash"):
        BlockSwitcher(str(path), build("cifar_resnet18"))


def test_tampered_manifest_architecture(store: Path, tmp_path: Path) -> None:
    path = _copy_store(store, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    d = manifest["blocks"][0]["descendants"][1]
    layer = next(iter(d["kept"]))
    d["kept"][layer] = d["kept"][layer][:-1]  # one filter fewer than the weights hold
    (path / "manifest.json").write_text(json.dumps(manifest))
    sw = BlockSwitcher(str(path), build("cifar_resnet18"))
    cfg = [0.0] * len(sw.block_names)
    cfg[0] = d["sparsity"]
    with pytest.raises(CorruptedStoreError):
        sw.switch(cfg)


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        BlockSwitcher(str(tmp_path / "nowhere"), build("cifar_resnet18"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "block_0_s0.safetensors").write_bytes(b"")
    with pytest.raises(StoreError, match="interrupted"):
        BlockSwitcher(str(tmp_path / "half"), build("cifar_resnet18"))


def test_interrupted_extraction_leaves_old_store_intact(store: Path, tmp_path: Path, monkeypatch) -> None:
    path = _copy_store(store, tmp_path)
    before = (path / "manifest.json").read_text()
    calls = {"n": 0}
    real = abm_module.count_flops

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(abm_module, "count_flops", dying)
    manager = AutoBlockManager([0.0, 0.5], build("cifar_resnet18"), None, SIZE, verbose=False)
    with pytest.raises(KeyboardInterrupt):
        manager.extract_all_blocks(str(path))
    assert (path / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary left behind
    monkeypatch.setattr(abm_module, "count_flops", real)
    manager.extract_all_blocks(str(path))  # a second run replaces the store whole
    assert json.loads((path / "manifest.json").read_text())["block_sparsity"] == [0.0, 0.5]
    assert not list(path.glob("*_s0p3.safetensors"))


def test_switch_is_atomic_for_concurrent_inference(store: Path) -> None:
    sw = BlockSwitcher(str(store), build("cifar_resnet18"))
    n = len(sw.block_names)
    x = torch.rand(1, *SIZE[1:])
    expected = {}
    for s in (0.0, 0.8):
        sw.switch([s] * n)
        with torch.no_grad():
            expected[s] = sw.model(x)
    stop = threading.Event()
    outputs: list = []

    def serve() -> None:
        with torch.no_grad():
            while not stop.is_set():
                outputs.append(sw.model(x))

    worker = threading.Thread(target=serve)
    worker.start()
    try:
        for i in range(60):
            sw.switch([0.8 if i % 2 == 0 else 0.0] * n)
    finally:
        stop.set()
        worker.join()
    assert outputs
    for out in outputs:
        assert torch.equal(out, expected[0.0]) or torch.equal(out, expected[0.8])


def test_cache_limit(store: Path) -> None:
    n = 8
    small = BlockSwitcher(str(store), build("cifar_resnet18"), cache_bytes=0)
    assert len(small.block_names) == n
    cfg = [0.0] * n
    cfg[4] = 0.6
    assert small.switch(cfg).bytes_loaded > 0
    small.switch([0.0] * n)
    again = small.switch(cfg)
    assert again.from_disk == ("block_4",) and again.bytes_loaded > 0  # evicted: read again
    big = BlockSwitcher(str(store), build("cifar_resnet18"))
    big.switch(cfg)
    big.switch([0.0] * n)
    assert big.switch(cfg).bytes_loaded == 0


class _RepBranch(nn.Module):
    """A RepVGG-style block in its training form: a 3x3 and a 1x1 conv summed with the input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dense, self.point = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)

    def reparameterize(self) -> None:  # what timm's MobileOne/RepVGG blocks offer
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.dense(x) + self.point(x) + x)


class _BrokenRepNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stage = nn.Sequential(*[_RepBranch(16) for _ in range(4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the dummy forward ran")


def test_mostly_unfused_model_is_refused_before_tracing() -> None:
    """Most conv parameters in unfused re-parameterisable blocks: the refusal comes before
    the trace and the block search (which would take tens of seconds on timm mobileone_s0)."""
    with pytest.raises(LegoDNNError, match=r"_RepBranch modules .* training form.*\d+% of the conv.*Fuse them first"):
        AutoBlockManager([0.0, 0.5], _BrokenRepNet(), CommonModelManager(), SIZE, verbose=False)
