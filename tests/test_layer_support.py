"""Layers beyond plain torch.nn: conv subclasses with extra per-filter tensors,
non-persistent buffers, custom layers registered by the user, several model inputs.

Each model goes the whole way: AutoBlockManager -> extract_all_blocks -> BlockSwitcher
switched to every sparsity, with sparsity 0 bit-exact and every descendant finite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo import flat_outputs

from legodnn import AutoBlockManager, BlockSwitcher
from legodnn.blockmanager.measure import count_params

SPARSITIES = [0.0, 0.3, 0.6, 0.8]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small inputs gain nothing from a second thread, and lose much when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _outputs(model: nn.Module, x: Any) -> list:
    with torch.no_grad():
        return flat_outputs(model(*x) if isinstance(x, tuple) else model(x))


def roundtrip(model: nn.Module, input_size: Any, tmp_path: Path, ratio: float = 1.0, fresh: nn.Module = None,
              **manager_kw: Any) -> AutoBlockManager:
    """Extract ``model`` and switch a BlockSwitcher on a fresh copy to every sparsity.

    Checks sparsity 0 (manager and switcher) is bit-exact, every other sparsity gives
    finite outputs of the original shapes, identical to the descendants the manager
    builds, and all-0.8 has fewer block parameters.
    """
    model.eval()
    bm = AutoBlockManager(SPARSITIES, model, None, input_size, ratio, verbose=False, **manager_kw)
    bm.extract_all_blocks(str(tmp_path / "blocks"))
    torch.manual_seed(1)
    x = _example(input_size)
    reference = _outputs(model, x)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(bm.compose(), x), reference))
    switcher = BlockSwitcher(str(tmp_path / "blocks"), (fresh if fresh is not None else model).eval(),
                             model_manager=manager_kw.get("model_manager"))
    n = len(bm.blocks)
    for s in SPARSITIES[1:] + [0.0]:
        switcher.switch([s] * n)
        out = _outputs(switcher.model, x)
        assert [o.shape for o in out] == [r.shape for r in reference]
        assert all(torch.isfinite(o).all() for o in out), s
        built = _outputs(bm.compose({b.name: bm.get_descendant(b.name, s) for b in bm.blocks}), x)
        assert all(torch.equal(a, b) for a, b in zip(out, built)), s  # stored and loaded = built here
        if s == 0.0:
            assert all(torch.equal(a, b) for a, b in zip(out, reference))
    for spec in bm.blocks:
        assert count_params(bm.get_descendant(spec.name, 0.8)) < count_params(bm.get_block(spec.name))
    return bm


def _example(input_size: Any) -> Any:
    if isinstance(input_size[0], Sequence):
        return tuple(torch.rand((2,) + tuple(s[1:])) for s in input_size)
    return torch.rand((2,) + tuple(input_size[1:]))


def _timm(name: str, **kw: Any) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).eval()


# ----------------------------------------------------- per-filter tensors of conv subclasses


class GainConv2d(nn.Conv2d):
    """A conv with a learnable per-filter gain and a per-filter buffer, as timm's
    ScaledStdConv2d has; both must be sliced with the filters."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)
        self.register_buffer("offset", torch.randn(self.out_channels) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.gain
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups) \
            + self.offset.view(1, -1, 1, 1)


def _gain_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        GainConv2d(8, 16, 3, padding=1), nn.ReLU(),
        GainConv2d(16, 16, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(16, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def test_conv_subclass_with_gain_is_sliced_consistently(tmp_path: Path) -> None:
    model = _gain_net()
    bm = roundtrip(model, (1, 3, 12, 12), tmp_path, fresh=_gain_net())
    (spec,) = bm.blocks
    teacher = bm.get_block(spec.name)
    for s in SPARSITIES[1:]:
        plan = bm.pruning_plan(spec.name, s)
        block = bm.get_descendant(spec.name, s)
        for layer in ("2", "4"):
            keep = torch.tensor(plan[layer])
            old, new = teacher.get_submodule(layer), block.get_submodule(layer)
            assert new.out_channels == len(keep) == new.gain.shape[0] == new.offset.shape[0]
            assert torch.equal(new.gain, old.gain.detach()[keep]) and torch.equal(new.offset, old.offset[keep])
            assert isinstance(new.gain, nn.Parameter) and new.gain.data_ptr() != old.gain.data_ptr()
        # the pruned layer computes the teacher's kept filters on the kept inputs: the
        # teacher's layer "2" with the removed input channels zeroed, restricted to its kept filters
        x = torch.rand(spec.input_shape)
        mask = torch.zeros(1, 8, 1, 1)
        mask[:, plan.get("0", list(range(8)))] = 1
        with torch.no_grad():
            full = teacher.get_submodule("2")(F.relu(teacher.get_submodule("0")(x)) * mask)
            part = block.get_submodule("2")(F.relu(block.get_submodule("0")(x)))
        assert torch.allclose(part, full[:, torch.tensor(plan["2"])], atol=1e-5)


def test_timm_nf_resnet26_scaled_std_conv(tmp_path: Path) -> None:
    """NF-ResNet's ScaledStdConv2d: the per-filter gain goes with the filters (it crashed
    in count_flops with 'weight should contain 45 elements not 64')."""
    model = _timm("nf_resnet26", num_classes=10)
    bm = roundtrip(model, (1, 3, 64, 64), tmp_path, ratio=0.125, fresh=_timm("nf_resnet26", num_classes=10))
    assert bm.coverage >= 0.8


# ----------------------------------------------------------------- non-persistent buffers


class PositionBias(nn.Module):
    """A learnt bias per position, gathered through an index table kept as a
    non-persistent buffer (as LeViT's ``attention_bias_idxs``): never stored, so the
    switcher's shape-only build must keep its values."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(size * size) * 0.1)
        idx = torch.arange(size * size).flip(0)  # not the identity: a wrong table shows
        self.register_buffer("idx", idx, persistent=False)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias[self.idx].view(1, 1, self.size, self.size)


class BufferNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.pos = PositionBias(8)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.d = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = self.pos(torch.relu(self.b(x)))
        x = torch.relu(self.d(torch.relu(self.c(x))))
        return self.head(x.mean((2, 3)))


def test_non_persistent_buffer_in_a_block(tmp_path: Path) -> None:
    bm = roundtrip(BufferNet(), (1, 3, 8, 8), tmp_path, fresh=BufferNet())
    (spec,) = bm.blocks
    block = bm.get_block(spec.name)
    assert any(name.endswith("idx") for name, _ in block.named_buffers())  # the table sits in the block
    assert not any(k.endswith("idx") for k in block.state_dict())  # and is not stored


@pytest.mark.parametrize("name, kw", [("levit_128s", {"img_size": 64}),
                                      pytest.param("tresnet_m", {}, marks=pytest.mark.slow)])
def test_timm_models_with_non_persistent_buffers(name: str, kw: dict, tmp_path: Path) -> None:
    """LeViT (attention bias index tables) and TResNet crashed in the switcher with
    'Cannot copy out of meta tensor' before non-persistent buffers kept their values."""
    model = _timm(name, num_classes=10, **kw)
    roundtrip(model, (1, 3, 64, 64), tmp_path, ratio=0.125, fresh=_timm(name, num_classes=10, **kw))
