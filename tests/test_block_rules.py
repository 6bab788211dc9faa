"""The block-size rule's larger blocks, and modules traced for their input size.

Larger blocks: a module with more convs than ``compress_layer_max_ratio`` allows and no
single-tensor cut inside (a one-shot-aggregation module: its input and every stage go
into one concat) can only be pruned whole. It becomes one block of up to twice the
limit; where blocks within the limit prune as much (a ResNet), they are kept.

Traced for size: a forward that computes patch counts from its input's size with
``math.ceil`` and branches on them (MobileViT's block) is traced for the example's size;
the batch stays free, another spatial size is refused with a legodnn error.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from test_layer_support import roundtrip
from torch import nn

from legodnn import AutoBlockManager, LegoDNNError
from legodnn.blockmanager.measure import count_params
from legodnn.blockmanager.tracing import check_traced_size

SPARSITIES = [0.0, 0.3, 0.6, 0.8]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Osa(nn.Module):
    """One-shot aggregation: reduce, two 3x3 stages, concat [input, stage 1, stage 2], 1x1."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.reduce = cbr(cin, mid, 1)
        self.stages = nn.ModuleList([cbr(mid, mid), cbr(mid, mid)])
        self.concat = cbr(cin + 2 * mid, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, y = [x], self.reduce(x)
        for stage in self.stages:
            y = stage(y)
            outs.append(y)
        return self.concat(torch.cat(outs, 1))


class OsaNet(nn.Module):
    """9 convs: at ratio 0.125 a block may hold 2, an OSA module holds 4."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16, 3, 2)
        self.osa1 = Osa(16, 12, 32)
        self.osa2 = Osa(32, 16, 48)
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.osa2(F.max_pool2d(self.osa1(self.stem(x)), 2))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PatchMix(nn.Module):
    """MobileViT-style: local conv, 1x1 to a width, unfold into patches with counts from
    ``math.ceil`` of the size (resizing when it does not divide), an MLP over the
    patches, fold back, 1x1 back, fuse with the input."""

    def __init__(self, c: int = 16, d: int = 24, p: int = 2) -> None:
        super().__init__()
        self.p = p
        self.local = cbr(c, c)
        self.proj_in = nn.Conv2d(c, d, 1)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.proj_out = cbr(d, c, 1)
        self.fuse = cbr(2 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut, p = x, self.p
        x = self.proj_in(self.local(x))
        B, C, H, W = x.shape
        nh, nw = math.ceil(H / p), math.ceil(W / p)
        resize = nh * p != H or nw * p != W
        if resize:
            x = F.interpolate(x, size=(nh * p, nw * p), mode="bilinear", align_corners=False)
        x = x.reshape(B, C, nh, p, nw, p).permute(0, 3, 5, 2, 4, 1).reshape(B * p * p, nh * nw, C)
        x = x + self.mlp(x)
        x = x.reshape(B, p, p, nh, nw, C).permute(0, 5, 3, 1, 4, 2).reshape(B, C, nh * p, nw * p)
        if resize:
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([shortcut, self.proj_out(x)], 1))


class PatchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16, 3, 2)
        self.mix = PatchMix()
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.mix(self.stem(x)), 1), 1))


class ValueSized(nn.Module):
    """Sizes a tensor by its values (``nonzero``): no meta kernel, so not traced for size."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(cbr(3, 8), cbr(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        n = int(math.ceil(y.shape[-1] / 2))
        return y[..., :n].sum() + (y > 0.5).nonzero().shape[0]


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _check(bm: AutoBlockManager, model: nn.Module, x: torch.Tensor) -> None:
    """Sparsity 0 is exact, a random composition runs, all-0.8 is smaller."""
    with torch.no_grad():
        reference = model(x)
        exact = bm.compose({s.name: bm.get_descendant(s.name, 0.0) for s in bm.blocks})(x)
        assert torch.equal(exact, reference)
        rng = random.Random(0)
        mixed = bm.compose({s.name: bm.get_descendant(s.name, rng.choice(SPARSITIES)) for s in bm.blocks})(x)
        assert mixed.shape == reference.shape and torch.isfinite(mixed).all()
    smallest = bm.compose({s.name: bm.get_descendant(s.name, 0.8) for s in bm.blocks})
    assert count_params(smallest) < count_params(model)


def test_osa_modules_become_larger_blocks() -> None:
    torch.manual_seed(0)
    model = OsaNet().eval()
    _randomize_bn(model)
    bm = AutoBlockManager(SPARSITIES, model, None, (1, 3, 32, 32), verbose=False)
    assert bm.max_convs_per_block == 2 and bm.max_convs_larger_block == 4
    larger = [s for s in bm.blocks if s.num_convs > bm.max_convs_per_block]
    assert len(larger) == 2 and all(s.num_convs == 4 for s in larger)  # one block per OSA module
    assert all(s.num_convs <= bm.max_convs_larger_block for s in bm.blocks)
    assert bm.coverage > 0.95
    # the stages' channels are pruned: every conv of an OSA module loses filters or inputs
    plan = bm.pruning_plan(larger[0].name, 0.5)
    assert {"osa1.reduce.0", "osa1.stages.0.0", "osa1.stages.1.0"} <= set(plan)
    _check(bm, model, torch.rand(2, 3, 32, 32))


def test_larger_blocks_are_not_used_where_blocks_within_the_limit_prune_as_much() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    bm = AutoBlockManager(SPARSITIES, model, None, (1, 3, 32, 32), verbose=False)
    assert all(s.num_convs <= bm.max_convs_per_block for s in bm.blocks)
    assert len(bm.blocks) == 8


def test_osa_net_round_trips_through_the_store(tmp_path) -> None:
    torch.manual_seed(0)
    model = OsaNet()
    _randomize_bn(model)
    bm = roundtrip(model, (1, 3, 32, 32), tmp_path, ratio=0.125)
    assert any(s.num_convs > bm.max_convs_per_block for s in bm.blocks)


def test_size_dependent_forward_is_traced_for_its_input_size(tmp_path) -> None:
    torch.manual_seed(0)
    model = PatchNet().eval()
    _randomize_bn(model)
    for size in (32, 30):  # 16 x 16 after the stem divides into 2 x 2 patches; 15 x 15 is resized
        bm = AutoBlockManager(SPARSITIES, model, None, (1, 3, size, size), 1.0, verbose=False)
        assert [p.path for p in bm.parts] == [""]  # the whole model, not its children
        assert bm.coverage == 1.0
        block = next(s for s in bm.blocks if any("mlp" in n for n in s.nodes))
        plan = bm.pruning_plan(block.name, 0.5)
        assert {"mix.local.0", "mix.mlp.0", "mix.proj_out.0"} <= set(plan)
        _check(bm, model, torch.rand(3, 3, size, size))  # another batch size runs
    bm = roundtrip(model, (1, 3, 28, 28), tmp_path)
    with pytest.raises(LegoDNNError, match=r"traced it for inputs of shape \(N, 3, 28, 28\).*got \(1, 3, 32, 32\)"):
        bm.compose()(torch.rand(1, 3, 32, 32))


def test_size_check_refuses_other_sizes_only() -> None:
    check_traced_size(torch.zeros(5, 3, 8, 8), (None, 3, 8, 8), "M")
    with pytest.raises(LegoDNNError, match="M .*takes Python decisions"):
        check_traced_size(torch.zeros(5, 3, 8, 9), (None, 3, 8, 8), "M")
    with pytest.raises(LegoDNNError):
        check_traced_size(torch.zeros(3, 8, 8), (None, 3, 8, 8), "M")


def test_forward_sized_by_values_is_not_traced_for_size() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ValueSized()).eval()
    bm = AutoBlockManager(SPARSITIES, model, None, (1, 3, 16, 16), 1.0, verbose=False)
    assert all(p.path != "" and p.path != "0" for p in bm.parts)  # its children are traced instead
    assert not any(n.op == "call_function" and n.target is check_traced_size
                   for p in bm.parts for n in p.graph_module.graph.nodes)
