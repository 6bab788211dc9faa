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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


# ------------------------------------------------------------ custom layers, registered


class ChannelScale(nn.Module):
    """A learnt per-channel scale whose forward branches on values: torch.fx cannot trace
    it, so it must be a registered leaf ("channelwise": channel k out is channel k in)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.scale < 0).any():  # data-dependent control flow
            return x * self.scale.abs()
        return x * self.scale


class RowScale(nn.Module):
    """Per-channel scale stored as (1, C, 1, 1): the default slicer (leading dim) does not
    fit it, so it comes with its own."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(1, channels, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def slice_row_scale(m: RowScale, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
    from legodnn.blockmanager import slice_channels

    m.scale = slice_channels(m.scale, keep_out, dim=1)


class FunctionalConv(nn.Module):
    """A conv written with F.conv2d on its own weight (no nn.Conv2d): registered as
    "conv", its filters become prunable."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


def slice_functional_conv(m: FunctionalConv, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
    from legodnn.blockmanager import slice_channels

    m.weight = slice_channels(slice_channels(m.weight, keep_out, 0), keep_in, 1)
    m.bias = slice_channels(m.bias, keep_out)


class CustomNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = FunctionalConv(8, 16)
        self.s = ChannelScale(16)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.r = RowScale(16)
        self.d = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = torch.relu(self.s(self.b(x)))
        x = torch.relu(self.r(self.c(x)))
        x = torch.relu(self.d(x))
        return self.head(x.mean((2, 3)))


def _custom_registry():
    from legodnn.blockmanager import LayerRegistry

    layers = LayerRegistry()
    layers.register(ChannelScale, "channelwise")
    layers.register(RowScale, "channelwise", slice_row_scale)
    layers.register(FunctionalConv, "conv", slice_functional_conv)
    return layers


def test_unregistered_custom_layer_does_not_trace() -> None:
    from legodnn import LegoDNNError

    with pytest.raises(LegoDNNError, match="control flow"):
        AutoBlockManager(SPARSITIES, CustomNet().eval(), None, (1, 3, 8, 8), 1.0, verbose=False)


def test_registered_custom_layers_are_pruned_with_their_channels() -> None:
    layers = _custom_registry()
    model = CustomNet().eval()
    bm = AutoBlockManager(SPARSITIES, model, None, (1, 3, 8, 8), 1.0, verbose=False, layers=layers)
    assert bm.total_convs == 4  # FunctionalConv counts as a conv
    (spec,) = bm.blocks
    teacher = bm.get_block(spec.name)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(bm.get_descendant(spec.name, 0.0)(x), model(x))
    for s in SPARSITIES[1:]:
        plan = bm.pruning_plan(spec.name, s)
        assert {"a", "b", "c"} <= set(plan)  # FunctionalConv's filters are pruned
        block = bm.get_descendant(spec.name, s)
        kb, kc = torch.tensor(plan["b"]), torch.tensor(plan["c"])
        assert torch.equal(block.b.weight, teacher.b.weight.detach()[kb][:, torch.tensor(plan["a"])])
        assert torch.equal(block.s.scale, teacher.s.scale.detach()[kb])  # follows b's filters
        assert torch.equal(block.r.scale, teacher.r.scale.detach()[:, kc])  # follows c's filters
        assert block.s.scale.data_ptr() != teacher.s.scale.data_ptr()
        with torch.no_grad():
            y = block(x)
        assert y.shape == (2, 4) and torch.isfinite(y).all()
        # the kept channels compute what the teacher computes with the removed ones zeroed
        mask = torch.zeros(1, 8, 1, 1)
        mask[:, plan["a"]] = 1
        with torch.no_grad():
            full = teacher.s(teacher.b(torch.relu(teacher.a(x)) * mask))
            part = block.s(block.b(torch.relu(block.a(x))))
        assert torch.allclose(part, full[:, kb], atol=1e-5)


def test_default_registry_reaches_the_switcher(tmp_path: Path) -> None:
    """Registered in default_layers, custom layers work through extraction and a
    BlockSwitcher built from the model code alone (as on a device)."""
    from legodnn.blockmanager import default_layers, register_leaf

    entries = [(ChannelScale, "channelwise", None), (RowScale, "channelwise", slice_row_scale),
               (FunctionalConv, "conv", slice_functional_conv)]
    try:
        for cls, rule, slicer in entries:
            assert register_leaf(cls, rule, slicer) is cls
            register_leaf(cls, rule, slicer)  # idempotent
        roundtrip(CustomNet(), (1, 3, 8, 8), tmp_path, fresh=CustomNet())
    finally:
        for cls, _, _ in entries:
            default_layers.unregister(cls)
    assert len(default_layers) == 0


def test_registry_rules() -> None:
    from legodnn import ArgumentTypeError, InvalidArgumentError
    from legodnn.blockmanager import LayerRegistry

    layers = LayerRegistry()
    layers.register(RowScale, "channelwise", slice_row_scale)
    layers.register(RowScale, "channelwise", slice_row_scale)  # the same again: nothing changes
    assert len(layers) == 1 and RowScale in layers
    with pytest.raises(InvalidArgumentError, match="already registered"):
        layers.register(RowScale, "opaque")
    layers.register(RowScale, "opaque", replace=True)
    assert layers.lookup(RowScale(4)).channel_rule == "opaque"
    with pytest.raises(InvalidArgumentError, match="channel_rule must be one of"):
        layers.register(ChannelScale, "elementwise")
    with pytest.raises(InvalidArgumentError, match="needs slicer"):
        layers.register(FunctionalConv, "conv")
    with pytest.raises(ArgumentTypeError):
        layers.register(ChannelScale(4), "channelwise")
    with pytest.raises(ArgumentTypeError, match="LayerRegistry"):
        AutoBlockManager(SPARSITIES, CustomNet(), None, (1, 3, 8, 8), layers={ChannelScale: "channelwise"})

    class SubScale(ChannelScale):
        pass

    layers.register(ChannelScale, "channelwise")
    assert layers.lookup(SubScale(4)).cls is ChannelScale  # subclasses inherit
    copy = layers.copy()
    copy.unregister(ChannelScale)
    assert ChannelScale in layers and ChannelScale not in copy


def test_conv_subclass_registered_opaque_is_kept_whole() -> None:
    from legodnn.blockmanager import LayerRegistry

    layers = LayerRegistry()
    layers.register(GainConv2d, "opaque")
    bm = AutoBlockManager(SPARSITIES, _gain_net(), None, (1, 3, 12, 12), 1.0, verbose=False, layers=layers)
    plan = bm.pruning_plan(bm.block_names[0], 0.5)
    assert "2" not in plan and "4" not in plan and "0" not in plan  # their channels are frozen
    assert bm.total_convs == 2


def test_conv_rule_importance_must_match_filters() -> None:
    from legodnn import InvalidArgumentError
    from legodnn.blockmanager import LayerRegistry

    layers = LayerRegistry()
    layers.register(FunctionalConv, "conv", slice_functional_conv, importance=lambda m: torch.ones(3))
    layers.register(ChannelScale, "channelwise")
    layers.register(RowScale, "channelwise", slice_row_scale)
    with pytest.raises(InvalidArgumentError, match="3 filter importances but has 16 output channels"):
        AutoBlockManager(SPARSITIES, CustomNet(), None, (1, 3, 8, 8), 1.0, verbose=False, layers=layers)


# ------------------------------------------------------------------ several model inputs


class TwoInputNet(nn.Module):
    """An RGB + depth model: one stem per input, fused by concat; forward takes two tensors."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rgb = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.depth = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 5)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.rgb(rgb), self.depth(depth)], 1)
        return self.head(self.body(x).mean((2, 3)))


TWO_SHAPES = ((1, 3, 16, 16), (1, 1, 16, 16))


def test_two_input_model_blocks_take_one_tensor() -> None:
    model = TwoInputNet().eval()
    bm = AutoBlockManager(SPARSITIES, model, None, TWO_SHAPES, 0.34, verbose=False)
    assert bm.model_input_size == TWO_SHAPES
    assert [(s.entry, s.input_shape) for s in bm.blocks[:2]] == [("rgb", TWO_SHAPES[0]), ("depth", TWO_SHAPES[1])]
    assert bm.coverage == 1.0
    x = _example(TWO_SHAPES)
    reference = _outputs(model, x)
    assert torch.equal(_outputs(bm.compose(), x)[0], reference[0])
    assert torch.equal(_outputs(bm.compose({s.name: bm.get_descendant(s.name, 0.0) for s in bm.blocks}), x)[0],
                       reference[0])
    for s in SPARSITIES[1:]:
        out = _outputs(bm.compose({b.name: bm.get_descendant(b.name, s) for b in bm.blocks}), x)[0]
        assert out.shape == reference[0].shape and torch.isfinite(out).all()
    for spec in bm.blocks:
        assert count_params(bm.get_descendant(spec.name, 0.8)) < count_params(bm.get_block(spec.name))


def test_two_input_shapes_are_checked_and_stores_refused_clearly(tmp_path: Path) -> None:
    """Each shape is validated; the store's manifest records one input shape, so
    extraction refuses before committing anything (once the manifest reads several
    shapes back, extraction goes through: see _check_manifest_round_trip)."""
    from legodnn import InvalidArgumentError, LegoDNNError

    with pytest.raises(InvalidArgumentError, match=r"model_input_size\[1\]"):
        AutoBlockManager(SPARSITIES, TwoInputNet(), None, ((1, 3, 16, 16), (1, 0, 16, 16)), verbose=False)
    with pytest.raises(LegoDNNError, match="missing"):
        AutoBlockManager(SPARSITIES, TwoInputNet(), None, (1, 3, 16, 16), verbose=False)  # one input only
    bm = AutoBlockManager(SPARSITIES, TwoInputNet().eval(), None, TWO_SHAPES, 0.34, verbose=False)
    with pytest.raises(LegoDNNError, match="not stored yet"):
        bm.extract_all_blocks(str(tmp_path / "blocks"))
    assert not (tmp_path / "blocks").exists()


class TwoInputManager:
    """A model manager that feeds both inputs itself (the depth map from the image size)."""

    def dummy_forward_to_gen_mid_data(self, model: nn.Module, model_input_size: Sequence[int], device: str) -> Any:
        n, _, h, w = model_input_size
        with torch.no_grad():
            return model(torch.rand(n, 3, h, w, device=device), torch.rand(n, 1, h, w, device=device))


def test_two_input_model_through_a_model_manager(tmp_path: Path) -> None:
    """A model manager that builds both inputs: the whole way, store and switcher included."""
    model = TwoInputNet()
    model.eval()
    bm = AutoBlockManager(SPARSITIES, model, TwoInputManager(), (1, 3, 16, 16), 0.34, verbose=False)
    assert len(bm.blocks) == 3
    bm.extract_all_blocks(str(tmp_path / "blocks"))
    x = _example(TWO_SHAPES)
    reference = _outputs(model, x)
    switcher = BlockSwitcher(str(tmp_path / "blocks"), TwoInputNet().eval(), model_manager=TwoInputManager())
    for s in SPARSITIES[1:] + [0.0]:
        switcher.switch([s] * 3)
        out = _outputs(switcher.model, x)
        assert out[0].shape == reference[0].shape and torch.isfinite(out[0]).all()
        built = _outputs(bm.compose({b.name: bm.get_descendant(b.name, s) for b in bm.blocks}), x)
        assert torch.equal(out[0], built[0])
    assert torch.equal(out[0], reference[0])


# ------------------------------------------------------------------ channels-last sections


class ChannelsLastBlock(nn.Module):
    """A ConvNeXt block: depthwise conv, then (N, H, W, C) LayerNorm -> Linear(C, 4C) ->
    GELU -> Linear(4C, C) -> back to (N, C, H, W), a layer scale and a residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 4 * c)
        self.fc2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        return x + self.gamma * y.permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor, as torchvision's and timm's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 2, stride=2)
        self.stem_norm = LayerNorm2d(16)
        self.blocks = nn.Sequential(ChannelsLastBlock(16), ChannelsLastBlock(16))
        self.tokens = nn.Linear(16, 32)  # on (N, L, C) tokens: channels-last too
        self.head = nn.Linear(32, 5)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight)
                nn.init.normal_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem_norm(self.stem(x)))
        t = F.gelu(self.tokens(x.flatten(2).transpose(1, 2)))  # (N, HW, 32)
        return self.head(t.mean(1))


def test_channels_last_hidden_width_is_pruned(tmp_path: Path) -> None:
    """ConvNeXt-style blocks: the 4C hidden width of each MLP is pruned (both Linears
    and nothing else), the LayerNorm over the residual channels is left whole, and the
    model goes through the store and the switcher."""
    model = TinyConvNeXt()
    bm = roundtrip(model, (1, 3, 8, 8), tmp_path, ratio=0.5, fresh=TinyConvNeXt())
    plans = {s.name: bm.pruning_plan(s.name, 0.6) for s in bm.blocks}
    pruned = {layer for plan in plans.values() for layer in plan}
    assert {"blocks.0.fc1", "blocks.1.fc1"} <= pruned and not pruned & {"blocks.0.fc2", "blocks.1.fc2"}
    for spec in bm.blocks:
        block = bm.get_descendant(spec.name, 0.6)
        for i in (0, 1):
            if f"blocks.{i}.fc1" in plans[spec.name]:
                kept = len(plans[spec.name][f"blocks.{i}.fc1"])
                fc1 = block.get_submodule(f"blocks.{i}.fc1")
                fc2 = block.get_submodule(f"blocks.{i}.fc2")
                norm = block.get_submodule(f"blocks.{i}.norm")
                assert (fc1.out_features, fc2.in_features, fc2.out_features) == (kept, kept, 16) and kept < 64
                assert norm.normalized_shape == (16,) and norm.weight.shape == (16,)


def test_channels_last_layer_norm_over_pruned_channels() -> None:
    """Channels-last channels that are internal to a block (a Linear's filters) carry
    their LayerNorm along: weight and bias keep the kept channels, normalized_shape shrinks."""
    torch.manual_seed(0)
    lin1, norm, lin2 = nn.Linear(8, 24), nn.LayerNorm(24), nn.Linear(24, 8)
    nn.init.normal_(norm.weight)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.lin1, self.norm, self.lin2 = lin1, norm, lin2

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.lin2(F.relu(self.norm(self.lin1(self.conv(x).permute(0, 2, 3, 1)))))
            return y.permute(0, 3, 1, 2)

    model = Net().eval()
    bm = AutoBlockManager(SPARSITIES, model, None, (1, 3, 4, 4), 1.0, verbose=False)
    (spec,) = bm.blocks
    x = torch.rand(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(bm.get_descendant(spec.name, 0.0)(x), model(x))
    plan = bm.pruning_plan(spec.name, 0.6)
    keep = torch.tensor(plan["lin1"])
    block = bm.get_descendant(spec.name, 0.6)
    assert block.norm.normalized_shape == (10,) and torch.equal(block.norm.weight, norm.weight.detach()[keep])
    assert block.lin2.weight.shape == (8, 10) and torch.equal(block.lin2.weight, lin2.weight.detach()[:, keep])
    assert "conv" in plan and block.lin1.weight.shape[1] == len(plan["conv"])  # conv filters, read channels-last
    with torch.no_grad():
        assert block(x).shape == (2, 8, 4, 4)


def test_layer_norm_2d_and_pools_on_channels_last_stay_whole() -> None:
    """A LayerNorm subclass that permutes inside normalises dim 1: it is not taken for a
    LayerNorm over the last dim. A pool applied to a channels-last tensor mixes the
    channels with W: they are frozen."""
    from legodnn import NoBlocksError

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), LayerNorm2d(8), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 4, 1)).eval()
    bm = AutoBlockManager(SPARSITIES, net, None, (1, 3, 6, 6), 1.0, verbose=False)
    plan = bm.pruning_plan(bm.block_names[0], 0.6)
    assert "0" not in plan and "2" in plan  # the filters the LayerNorm2d normalises stay
    with torch.no_grad():
        assert bm.get_descendant(bm.block_names[0], 0.6)(torch.rand(1, 3, 6, 6)).shape == (1, 4, 6, 6)

    class PoolLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.max_pool2d(self.a(x).permute(0, 2, 3, 1), 3, 1, 1)  # pools over (W, C)
            return self.b(y.permute(0, 3, 1, 2))

    with pytest.raises(NoBlocksError):  # a's filters are all that could go, and they are frozen
        AutoBlockManager(SPARSITIES, PoolLast().eval(), None, (1, 3, 6, 6), 1.0, verbose=False)


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("convnext_tiny", 64), ("swin_t", 64)])
def test_torchvision_channels_last_models_through_the_store(name: str, size: int, tmp_path: Path) -> None:
    """torchvision ConvNeXt and Swin (refused with NoBlocksError before channels-last
    sections were followed) through extraction and the switcher."""
    torchvision = pytest.importorskip("torchvision")

    def build() -> nn.Module:
        torch.manual_seed(0)
        return getattr(torchvision.models, name)(num_classes=10).eval()

    roundtrip(build(), (1, 3, size, size), tmp_path, ratio=0.125, fresh=build())
