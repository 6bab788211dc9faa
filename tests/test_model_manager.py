"""CommonModelManager: each measurement is checked against a number computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from legodnn.model_manager import AbstractModelManager, CommonModelManager


@pytest.fixture
def manager() -> CommonModelManager:
    return CommonModelManager()


def test_abstract_manager_declares_the_six_methods() -> None:
    assert AbstractModelManager.__abstractmethods__ == {
        "forward_to_gen_mid_data",
        "dummy_forward_to_gen_mid_data",
        "get_model_acc",
        "get_model_size",
        "get_model_flops_and_param",
        "get_model_latency",
    }
    with pytest.raises(TypeError):
        AbstractModelManager()  # type: ignore[abstract]


def test_accuracy_equals_hand_count(manager: CommonModelManager) -> None:
    # nn.Identity: the inputs are the logits, so the prediction is each row's argmax.
    logits = torch.tensor(
        [[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.7, 0.2, 0.1], [0.0, 1.0, 0.0]]
    )
    targets = torch.tensor([0, 1, 1, 2, 1])  # predictions 0, 1, 2, 0, 1 -> 3 of 5 right
    loader = DataLoader(TensorDataset(logits, targets), batch_size=2)  # uneven last batch
    assert manager.get_model_acc(nn.Identity(), loader, "cpu") == pytest.approx(3 / 5)


def test_accuracy_on_empty_loader_raises(manager: CommonModelManager) -> None:
    empty = DataLoader(TensorDataset(torch.empty(0, 3), torch.empty(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="no samples"):
        manager.get_model_acc(nn.Identity(), empty, "cpu")


def test_accuracy_restores_training_mode(manager: CommonModelManager) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    loader = [(torch.rand(4, 3), torch.zeros(4, dtype=torch.long))]
    manager.get_model_acc(model, loader, "cpu")
    assert model.training and model[1].training


def test_size_counts_parameters_and_buffers(manager: CommonModelManager) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    # conv weight 4*3*3*3 + bias 4; BN weight, bias, running mean, running var 4 each:
    # 128 float32 values; plus BN's num_batches_tracked, one int64.
    assert manager.get_model_size(model) == 128 * 4 + 1 * 8
    assert manager.get_model_size(model.half()) == 128 * 2 + 1 * 8


def test_size_counts_shared_weights_once(manager: CommonModelManager) -> None:
    linear = nn.Linear(5, 5, bias=False)
    assert manager.get_model_size(nn.Sequential(linear, linear)) == 25 * 4


class _MyConv2d(nn.Conv2d):
    """A user subclass: FLOP counting must not depend on exact module types."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 1.0


@pytest.mark.parametrize(
    ("module", "input_size", "macs"),
    [
        # Conv: MACs = output elements x (in_channels / groups) x kernel volume.
        (nn.Conv2d(3, 8, 3, padding=1), (1, 3, 16, 16), (8 * 16 * 16) * (3 * 3 * 3)),
        (nn.Conv2d(3, 8, 3, stride=2), (2, 3, 15, 15), (2 * 8 * 7 * 7) * (3 * 3 * 3)),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 16, 16), (8 * 16 * 16) * (1 * 3 * 3)),
        (_MyConv2d(3, 8, 3, padding=1), (1, 3, 16, 16), (8 * 16 * 16) * (3 * 3 * 3)),
        (nn.Conv3d(2, 4, 3, padding=1), (1, 2, 4, 8, 8), (4 * 4 * 8 * 8) * (2 * 3 * 3 * 3)),
        # Linear: MACs = batch x in_features x out_features.
        (nn.Linear(20, 7), (4, 20), 4 * 20 * 7),
    ],
    ids=["conv2d", "conv2d-stride", "conv2d-depthwise", "conv2d-subclass", "conv3d", "linear"],
)
def test_flops_are_twice_the_multiply_adds(
    manager: CommonModelManager, module: nn.Module, input_size: tuple[int, ...], macs: int
) -> None:
    flops, params = manager.get_model_flops_and_param(module, input_size)
    assert flops == 2 * macs
    assert params == sum(p.numel() for p in module.parameters())


def test_flops_leave_model_untouched(manager: CommonModelManager) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    manager.get_model_flops_and_param(model, (2, 3, 8, 8))
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_forward_to_gen_mid_data_feeds_the_batch_without_grad(manager: CommonModelManager) -> None:
    seen: list[torch.Tensor] = []
    model = nn.Linear(3, 2)
    model.register_forward_hook(lambda m, inputs, output: seen.append(output))
    data = torch.rand(4, 3)
    manager.forward_to_gen_mid_data(model, (data, torch.zeros(4)), "cpu")
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], model(data).detach())
    assert not seen[0].requires_grad


def test_dummy_forward_uses_model_input_size(manager: CommonModelManager) -> None:
    shapes: list[torch.Size] = []
    model = nn.Conv2d(3, 4, 1)
    model.register_forward_pre_hook(lambda m, inputs: shapes.append(inputs[0].shape))
    manager.dummy_forward_to_gen_mid_data(model, (2, 3, 5, 7), "cpu")
    assert shapes == [torch.Size((2, 3, 5, 7))]


def test_latency_is_positive_seconds(manager: CommonModelManager) -> None:
    latency = manager.get_model_latency(nn.Conv2d(3, 4, 3), 3, (1, 3, 8, 8), "cpu", warmup_num=1)
    assert 0.0 < latency < 1.0 and math.isfinite(latency)


def test_latency_rejects_no_samples(manager: CommonModelManager) -> None:
    with pytest.raises(ValueError, match="sample_num"):
        manager.get_model_latency(nn.Identity(), 0, (1, 3), "cpu")
