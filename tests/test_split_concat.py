"""Channel splits, slices and concats: torch.split/chunk/tensor_split, x[:, a:b], views that
split the channel dim into factors (channel shuffle, ResNeSt's radices) and merge it back.

Small hand-written blocks in the styles of Res2Net (split, hierarchical adds, concat),
gated units (chunk into halves multiplied together), GhostNet (concat, then a slice of
the first channels) and uneven splits. Each is pruned at every sparsity: sparsity 0 is
bit-exact, every descendant runs with the block's output shape, no piece is emptied,
and the split sizes follow the kept channels. The timm models go through the store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_layer_support import _timm, roundtrip
from torch import fx, nn

from legodnn import AutoBlockManager
from legodnn.blockmanager.channels import analyze_channels
from legodnn.blockmanager.measure import count_params

LEVELS = [0.0, 0.3, 0.5, 0.8]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Res2Block(nn.Module):
    """conv1 -> split in 4 -> conv_i(piece_i + previous) -> concat with the last piece -> conv3."""

    def __init__(self, c: int = 32, width: int = 6, scale: int = 4) -> None:
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(c, width * scale, 1)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(width * scale, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        spo, sp = [], spx[0]
        for i, conv in enumerate(self.convs):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = F.relu(conv(sp))
            spo.append(sp)
        spo.append(spx[-1])
        return x + self.conv3(torch.cat(spo, 1))


class GatedBlock(nn.Module):
    """A gated unit: a conv with 2C filters chunked into a value and a gate."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.conv(x).chunk(2, dim=1)
        return self.proj(value * torch.sigmoid(gate))


class GhostBlock(nn.Module):
    """GhostNet's module: primary conv, cheap depthwise conv, concat, keep the first ``out`` channels."""

    def __init__(self, c: int = 16, out: int = 15) -> None:
        super().__init__()
        self.out = out
        init = (out + 1) // 2
        self.primary = nn.Conv2d(c, init, 1)
        self.cheap = nn.Conv2d(init, init, 3, padding=1, groups=init)
        self.proj = nn.Conv2d(out, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.primary(x))
        x2 = F.relu(self.cheap(x1))
        return self.proj(torch.cat([x1, x2], dim=1)[:, : self.out, :, :])


class UnevenSplit(nn.Module):
    """tensor_split into 1 + 3 + 12 channels, each piece its own conv; and a spatial split."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 16, 1)
        self.a, self.b, self.c = nn.Conv2d(1, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(12, 8, 1)
        self.spatial = nn.Conv2d(16, 16, 3, padding=1)
        self.out = nn.Conv2d(16, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q, r = torch.tensor_split(self.conv(x), [1, 4], dim=1)
        y = torch.cat([self.a(p), self.b(q), self.c(r)], 1)
        top, bottom = y.split(y.shape[2] // 2, dim=2)  # along height: every piece has all channels
        y = torch.cat([self.spatial(top), self.spatial(bottom)], 2)
        return self.out(y)


class SplitTupleUsedWhole(nn.Module):
    """The split's tuple itself goes into cat: not followed, so those channels stay whole."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 2 * c, 1)
        self.out = nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat(self.conv(x).chunk(2, 1)[::-1], 1))


def _manager(model: nn.Module, size=(1, 32, 8, 8)) -> AutoBlockManager:
    torch.manual_seed(0)
    return AutoBlockManager(LEVELS, model.eval(), None, size, 1.0, verbose=False)


def _check_all_sparsities(bm: AutoBlockManager, model: nn.Module, size) -> None:
    torch.manual_seed(1)
    x = torch.rand((2,) + tuple(size[1:]))
    with torch.no_grad():
        reference = model(x)
        exact = bm.compose({s.name: bm.get_descendant(s.name, 0.0) for s in bm.blocks})(x)
        assert torch.equal(exact, reference)
        for s in LEVELS[1:]:
            out = bm.compose({b.name: bm.get_descendant(b.name, s) for b in bm.blocks})(x)
            assert out.shape == reference.shape and torch.isfinite(out).all(), s
    for spec in bm.blocks:
        assert count_params(bm.get_descendant(spec.name, 0.8)) < count_params(bm.get_block(spec.name))


def _split_sizes(gm: fx.GraphModule, x: torch.Tensor) -> list:
    """The sizes of every tensor a split node of ``gm`` gives, from a run on ``x``."""
    sizes = []
    interp = fx.Interpreter(gm)
    real_run = interp.run_node

    def run_node(n: fx.Node):
        out = real_run(n)
        if n.op in ("call_function", "call_method") and isinstance(out, tuple) and all(
                isinstance(t, torch.Tensor) for t in out):
            sizes.append([t.shape[1] for t in out])
        return out

    interp.run_node = run_node
    with torch.no_grad():
        interp.run(x)
    return sizes


def test_res2net_split_pieces_are_pruned_and_resized() -> None:
    model = Res2Block()
    bm = _manager(model)
    _check_all_sparsities(bm, model, (1, 32, 8, 8))
    (spec,) = bm.blocks
    analysis = bm._analysis(spec.name)
    conv1 = next(g for g in analysis.groups if "conv1" in g.sources)
    assert len(conv1.parts) >= 4 and not conv1.balanced  # one part (at least) per piece
    assert sum(len(p) for p in conv1.parts) == 24  # every filter of conv1 is prunable
    for s, expect in ((0.0, [6, 6, 6, 6]), (0.5, [3, 3, 3, 3]), (0.8, [2, 2, 2, 2])):
        block = bm.get_descendant(spec.name, s)
        assert _split_sizes(block, torch.rand(1, 32, 8, 8)) == [expect], s


def test_chunk_halves_multiplied_together_stay_aligned() -> None:
    model = GatedBlock()
    bm = _manager(model, (1, 16, 8, 8))
    _check_all_sparsities(bm, model, (1, 16, 8, 8))
    (spec,) = bm.blocks
    plan = bm.pruning_plan(spec.name, 0.5)
    kept = plan["conv"]
    assert len(kept) == 16 and [k - 16 for k in kept if k >= 16] == [k for k in kept if k < 16]  # same in both halves
    block = bm.get_descendant(spec.name, 0.5)
    assert _split_sizes(block, torch.rand(1, 16, 8, 8)) == [[8, 8]]


def test_ghost_concat_then_slice_keeps_the_first_channels() -> None:
    model = GhostBlock()
    bm = _manager(model, (1, 16, 8, 8))
    _check_all_sparsities(bm, model, (1, 16, 8, 8))
    (spec,) = bm.blocks
    block = bm.get_descendant(spec.name, 0.5)
    kept = len(bm.pruning_plan(spec.name, 0.5)["primary"])
    assert kept == 4  # 8 filters, half of them go
    # the slice now ends where the kept channels of the first 15 end: 4 + (4 or 3)
    assert block.proj.in_channels in (2 * kept - 1, 2 * kept)
    with torch.no_grad():
        assert block(torch.rand(1, 16, 8, 8)).shape == (1, 16, 8, 8)


def test_uneven_pieces_are_never_emptied() -> None:
    model = UnevenSplit()
    bm = _manager(model, (1, 16, 8, 8))
    _check_all_sparsities(bm, model, (1, 16, 8, 8))
    (spec,) = bm.blocks
    for s in LEVELS:
        block = bm.get_descendant(spec.name, s)
        sizes = _split_sizes(block, torch.rand(1, 16, 8, 8))
        assert all(n >= 1 for n in sizes[0]), (s, sizes)
        assert block.a.in_channels == 1 and block.c.in_channels == 12 - int(s * 12 + 1e-9)
    assert len(sizes[0]) == 3 and sizes[0][0] == 1  # the 1-channel piece keeps its channel at 0.8


def test_split_tuple_used_whole_is_kept_whole() -> None:
    model = SplitTupleUsedWhole()
    torch.manual_seed(0)
    gm = fx.symbolic_trace(model.eval())
    from torch.fx.passes.shape_prop import ShapeProp
    ShapeProp(gm).propagate(torch.rand(1, 16, 8, 8))
    analysis = analyze_channels(gm)
    assert not any("conv" in g.sources for g in analysis.groups)  # its filters feed the tuple: frozen


def test_split_on_channels_last_dim_and_plain_index() -> None:
    """A slice that keeps every channel, and a crop of the spatial dims, change nothing."""

    class Crop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 16, 1)

        def forward(self, x):
            y = self.a(x)[:, :, 1:-1, ...]
            return self.b(y[:, :32])

    model = Crop()
    bm = _manager(model, (1, 16, 8, 8))
    _check_all_sparsities(bm, model, (1, 16, 8, 8))
    assert not bm._analysis(bm.blocks[0].name).slices  # nothing to resize


class ShuffleBlock(nn.Module):
    """A channel shuffle between two convs: view to (groups, C/groups), transpose, flatten back."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, 32, 1), nn.Conv2d(32, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, -1, h, w)
        return self.b(y)


def test_channel_shuffle_is_pruned_consistently() -> None:
    model = ShuffleBlock()
    bm = _manager(model, (1, 16, 8, 8))
    _check_all_sparsities(bm, model, (1, 16, 8, 8))
    kept = bm.pruning_plan(bm.blocks[0].name, 0.5)["a"]
    # channel j and 16 + j are shuffled next to each other: they go together
    assert len(kept) == 16 and [k - 16 for k in kept if k >= 16] == [k for k in kept if k < 16]


def test_radix_split_attention_is_pruned() -> None:
    """ResNeSt's split attention: a grouped conv with 2x filters, a view into radices,
    a sum over them, an attention softmax over the radix dim, a weighted sum."""
    timm = pytest.importorskip("timm")
    model = nn.Sequential(nn.Conv2d(16, 32, 1), timm.layers.SplitAttn(32, 32, radix=2), nn.Conv2d(32, 16, 1))
    bm = _manager(model, (1, 16, 8, 8))
    _check_all_sparsities(bm, model, (1, 16, 8, 8))
    groups = {tuple(g.sources): g for g in bm._analysis(bm.blocks[0].name).groups}
    assert ("1.conv", "1.fc2") in groups  # the radix conv's filters and their attention weights
    assert groups[("0",)].balanced  # the grouped conv's two input groups lose the same number
    block = bm.get_descendant(bm.blocks[0].name, 0.5)
    assert block.get_submodule("1.conv").out_channels == 32 and block.get_submodule("1.conv").groups == 2


class SelectiveKernelBlock(nn.Module):
    """SKNet's residual block: two paths stacked on a new dim 1, a shape check left
    dangling in the graph (as timm's ``_assert``), attention from their sum viewed as
    ``(B, paths, C // paths, H, W)`` with H and W read from the shape, a softmax over the
    paths and their weighted sum, then a conv back to the input's width."""

    def __init__(self, c: int = 16, mid: int = 24) -> None:
        super().__init__()
        self.paths = nn.ModuleList([nn.Conv2d(c, mid, 3, padding=1), nn.Conv2d(c, mid, 3, padding=2, dilation=2)])
        self.reduce, self.select = nn.Conv2d(mid, 8, 1), nn.Conv2d(8, 2 * mid, 1)
        self.out = nn.Conv2d(mid, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.stack([p(x) for p in self.paths], dim=1)
        torch._assert(y.shape[1] == 2, "two paths")
        a = self.select(torch.relu(self.reduce(y.sum(1).mean((2, 3), keepdim=True))))
        b, c, h, w = a.shape
        a = torch.softmax(a.view(b, 2, c // 2, h, w), dim=1)
        return x + self.out(torch.sum(y * a, dim=1))


def test_selective_kernel_block_is_one_block_pruned_through_the_stack() -> None:
    model = SelectiveKernelBlock()
    bm = _manager(model, (1, 16, 8, 8))
    _check_all_sparsities(bm, model, (1, 16, 8, 8))
    assert len(bm.blocks) == 1 and bm.coverage == 1.0  # the dangling check does not split the block
    groups = {tuple(g.sources): g for g in bm._analysis(bm.blocks[0].name).groups}
    # both paths' filters and the two halves of the attention go together
    assert ("paths.0", "paths.1", "select") in groups
    plan = bm.pruning_plan(bm.blocks[0].name, 0.5)
    assert plan["paths.0"] == plan["paths.1"] and len(plan["paths.0"]) < 24
    assert [k - 24 for k in plan["select"] if k >= 24] == [k for k in plan["select"] if k < 24] == plan["paths.0"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["res2net50_26w_4s", "ghostnet_100", "skresnet18"])
def test_timm_split_models_through_the_store(name: str, tmp_path: Path) -> None:
    model = _timm(name, num_classes=10)
    bm = roundtrip(model, (1, 3, 64, 64), tmp_path, ratio=0.125)
    assert bm.coverage > 0.9
