"""Teacher training: the loop learns, is quiet when asked, and saves weights safely; ResNet width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import cv_tasks
from cv_tasks.image_classification import train as train_module
from cv_tasks.image_classification.train import (
    evaluate,
    load_weights,
    save_weights,
    train_classifier,
    warmup_cosine,
)
from legodnn import CommonModelManager


def _separable(n: int, seed: int) -> TensorDataset:
    """Two classes that differ in mean brightness: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.3 + (y.float() * 2 - 1).view(-1, 1, 1, 1)
    return TensorDataset(x, y)


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def test_train_classifier_learns_and_is_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    train = DataLoader(_separable(128, 0), batch_size=16, shuffle=True)
    test = DataLoader(_separable(64, 1), batch_size=32)
    model = _small_cnn()
    before = evaluate(model, test, "cpu")
    accuracy = train_classifier(model, train, test, epochs=3, lr=0.1, device="cpu", verbose=False)
    assert accuracy == evaluate(model, test, "cpu")
    assert accuracy >= 0.95 and accuracy > before
    assert not model.training
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_train_classifier_rejects_bad_input() -> None:
    model = _small_cnn()
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(model, [], [], epochs=0)
    with pytest.raises(ValueError, match="no batches"):
        train_classifier(model, [], [], epochs=1)
    with pytest.raises(ValueError, match="no samples"):
        evaluate(model, [], "cpu")
    batches = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))] * 2
    with pytest.raises(FloatingPointError, match="learning rate"):
        train_classifier(model, batches, batches, epochs=1, lr=1e30, verbose=False)


def test_warmup_cosine_schedule() -> None:
    factors = [warmup_cosine(s, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # decreasing after the warm-up
    assert factors[-1] < 0.001
    assert warmup_cosine(0, 1) == 1.0


def test_weights_round_trip_atomically(tmp_path: Path) -> None:
    model = cv_tasks.get_model("cifar_resnet18", num_classes=10, base_width=4)
    path = save_weights(model, tmp_path / "sub" / "w.safetensors", {"model": "cifar_resnet18", "epochs": 3})
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temporary file left
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["model"] == "cifar_resnet18" and json.loads(f.metadata()["epochs"]) == 3
    fresh = cv_tasks.get_model("cifar_resnet18", num_classes=10, base_width=4)
    meta = load_weights(fresh, path)
    assert meta["model"] == "cifar_resnet18"
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="do not fit .*cifar_resnet18"):
        load_weights(cv_tasks.get_model("cifar_resnet18", num_classes=10, base_width=8), path)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_weights(fresh, tmp_path / "missing.safetensors")


@pytest.mark.parametrize("name", ["cifar_resnet18", "cifar_resnet34"])
def test_resnet_base_width(name: str) -> None:
    mm = CommonModelManager()
    wide = cv_tasks.get_model(name)
    narrow = cv_tasks.get_model(name, base_width=16)
    assert narrow.conv1.out_channels == 16 and narrow.fc.in_features == 128
    assert wide.conv1.out_channels == 64 and wide.fc.in_features == 512  # the default is unchanged
    flops_wide, params_wide = mm.get_model_flops_and_param(wide, (1, 3, 32, 32))
    flops_narrow, params_narrow = mm.get_model_flops_and_param(narrow, (1, 3, 32, 32))
    assert 14 < flops_wide / flops_narrow < 17 and 14 < params_wide / params_narrow < 17
    with pytest.raises(ValueError, match="base_width"):
        cv_tasks.get_model(name, base_width=0)


def test_command_line_trains_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits.safetensors"
    accuracy = train_module.main(["--dataset", "digits", "--base-width", "4", "--epochs", "1", "--batch-size", "32",
                                  "--train-subset", "96", "--test-subset", "64", "--out", str(out), "--quiet"])
    assert 0.0 <= accuracy <= 1.0
    assert capsys.readouterr().out == ""
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["dataset"] == "digits" and json.loads(meta["kwargs"]) == {"num_classes": 10, "base_width": 4}
    assert json.loads(meta["test_accuracy"]) == pytest.approx(accuracy)
    load_weights(cv_tasks.get_model("cifar_resnet18", num_classes=10, base_width=4), out)
    with pytest.raises(SystemExit):
        train_module.main(["--dataset", "cifar10", "--out", str(out)])  # CIFAR needs --data
    assert "--data ROOT is needed" in capsys.readouterr().err
