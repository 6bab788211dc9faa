"""AutoBlockManager and BlockSwitcher over the model zoo x sparsities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from zoo import MODELS, RATIOS, build, flat_outputs

from legodnn import AutoBlockManager, BlockSwitcher
from legodnn.blockmanager.measure import count_bytes, count_flops, count_params
from legodnn.blockmanager.store import BlockStore

SPARSITIES = [0.0, 0.3, 0.6, 0.8]
FAST = [n for n in MODELS if n not in ("tv_resnet50", "frcnn_mobilenet_v3")]
SLOW = ["tv_resnet50", "frcnn_mobilenet_v3"]
ALL = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS]


class Extracted:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.model = build(name)
        self.input_size = MODELS[name][1]
        self.manager = AutoBlockManager(
            SPARSITIES, self.model, None, self.input_size, RATIOS.get(name, 0.125), verbose=False
        )
        self.blocks_dir = root / name
        self.manager.extract_all_blocks(str(self.blocks_dir))
        torch.manual_seed(123)
        self.x = torch.rand((2,) + self.input_size[1:])
        with torch.no_grad():
            self.reference = flat_outputs(self.model(self.x))

    def composed(self, sparsity: float) -> nn.Module:
        blocks = {s.name: self.manager.get_descendant(s.name, sparsity) for s in self.manager.blocks}
        return self.manager.compose(blocks)


@pytest.fixture(scope="module", params=ALL)
def ex(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Extracted:
    return Extracted(request.param, tmp_path_factory.mktemp("blocks"))


def _run(model: nn.Module, x: torch.Tensor) -> list:
    with torch.no_grad():
        return flat_outputs(model(x))


def test_blocks_found(ex: Extracted) -> None:
    m = ex.manager
    assert len(m.blocks) >= 1
    assert all(s.num_convs <= m.max_convs_larger_block for s in m.blocks)
    names = [s.name for s in m.blocks]
    assert len(set(names)) == len(names)
    # blocks are disjoint
    seen: set = set()
    for s in m.blocks:
        key = {(s.part, n) for n in s.nodes}
        assert not key & seen
        seen |= key


@pytest.mark.parametrize(
    "name, minimum",
    [("cifar_resnet18", 0.9), ("cifar_vgg16", 0.9), ("cifar_mobilenetv2", 0.9), ("tv_resnet18", 0.9),
     ("tv_mobilenet_v2", 0.9)],
)
def test_coverage(name: str, minimum: float) -> None:
    m = AutoBlockManager(SPARSITIES, build(name), None, MODELS[name][1], verbose=False)
    assert m.coverage >= minimum


@pytest.mark.slow
def test_coverage_torchvision_vgg16_bn() -> None:
    import torchvision

    m = AutoBlockManager(SPARSITIES, torchvision.models.vgg16_bn(num_classes=10).eval(), None, (1, 3, 32, 32),
                         verbose=False)
    assert m.coverage >= 0.9


def test_sparsity_zero_is_exact(ex: Extracted) -> None:
    out = _run(ex.manager.compose(), ex.x)
    assert len(out) == len(ex.reference)
    assert all(torch.equal(a, b) for a, b in zip(out, ex.reference))
    out0 = _run(ex.composed(0.0), ex.x)
    assert all(torch.equal(a, b) for a, b in zip(out0, ex.reference))


@pytest.mark.parametrize("sparsity", SPARSITIES[1:])
def test_descendants_run_and_shrink(ex: Extracted, sparsity: float) -> None:
    m = ex.manager
    out = _run(ex.composed(sparsity), ex.x)
    if ex.name != "frcnn_mobilenet_v3":  # detections vary in number
        assert [o.shape for o in out] == [r.shape for r in ex.reference]
    assert all(torch.isfinite(o).all() for o in out)
    for spec in m.blocks:
        block = m.get_descendant(spec.name, sparsity)
        y = block(torch.rand(spec.input_shape))
        assert tuple(y.shape) == spec.output_shape
        assert count_params(block) < count_params(m.get_block(spec.name))


def test_params_fall_as_sparsity_rises(ex: Extracted) -> None:
    m = ex.manager
    for spec in m.blocks:
        params = [count_params(m.get_descendant(spec.name, s)) for s in SPARSITIES]
        assert params == sorted(params, reverse=True) and params[0] > params[-1], (spec.name, params)


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_gradient_reaches_every_parameter(ex: Extracted, sparsity: float) -> None:
    for spec in ex.manager.blocks:
        block = ex.manager.get_descendant(spec.name, sparsity).train()
        batch = (2,) + tuple(spec.input_shape[1:])
        block(torch.rand(batch)).square().mean().backward()
        for pname, p in block.named_parameters():
            assert p.grad is not None, f"{spec.name}.{pname} got no gradient"
            assert torch.isfinite(p.grad).all()


def test_manifest_numbers_are_real(ex: Extracted) -> None:
    store = BlockStore(ex.blocks_dir)
    assert store.fingerprint == ex.manager.fingerprint
    assert store.block_sparsity == SPARSITIES
    for spec in ex.manager.blocks:
        for s in SPARSITIES:
            d = store.descendant(spec.name, s)
            block = ex.manager.get_descendant(spec.name, s)
            assert d.params == count_params(block)
            assert d.bytes == count_bytes(block)
            assert d.flops == count_flops(block, spec.input_shape)


def test_switcher_matches_and_swaps_back(ex: Extracted) -> None:
    fresh = MODELS[ex.name][0]()  # random weights: everything must come from the store
    switcher = BlockSwitcher(str(ex.blocks_dir), fresh.eval())
    first = _run(switcher.model, ex.x)
    assert all(torch.equal(a, b) for a, b in zip(first, ex.reference))
    n = len(ex.manager.blocks)
    for s in SPARSITIES[1:]:
        result = switcher.switch([s] * n)
        assert set(result.changed) == set(ex.manager.block_names)
        loaded = _run(switcher.model, ex.x)
        built = _run(ex.composed(s), ex.x)  # save then load gives the identical model
        assert all(torch.equal(a, b) for a, b in zip(loaded, built))
    result = switcher.switch([0.0] * n)
    back = _run(switcher.model, ex.x)
    assert all(torch.equal(a, b) for a, b in zip(back, ex.reference))
    # one block out and back in, from the cache
    mixed = [0.0] * n
    mixed[-1] = 0.6
    r1 = switcher.switch(mixed)
    assert r1.changed == (ex.manager.block_names[-1],) and r1.bytes_loaded == 0
    r2 = switcher.switch([0.0] * n)
    assert r2.changed == (ex.manager.block_names[-1],)
    assert all(torch.equal(a, b) for a, b in zip(_run(switcher.model, ex.x), ex.reference))


def test_store_loads_without_pickle(ex: Extracted) -> None:
    manifest = json.loads((ex.blocks_dir / "manifest.json").read_text())
    files = {d["file"] for b in manifest["blocks"] for d in b["descendants"]} | {manifest["frame"]["file"]}
    assert all(f.endswith(".safetensors") for f in files)
    assert {p.name for p in ex.blocks_dir.iterdir()} == files | {"manifest.json"}


# ---------------------------------------------------------------- GroupNorm

# channels a GroupNorm(num_groups, 16) keeps at SPARSITIES: each group loses the same number, keeps >= 1
GN_KEPT = {4: [16, 12, 8, 4], 8: [16, 16, 8, 8], 16: [16, 16, 16, 16]}


def _group_norm_net(num_groups: int) -> nn.Sequential:
    """conv -> GroupNorm -> ReLU -> conv between a stem and a classifier; GN affine made non-trivial."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(num_groups, 16), nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )
    nn.init.normal_(net[3].weight)
    nn.init.normal_(net[3].bias)
    return net.eval()


@pytest.mark.parametrize("num_groups", sorted(GN_KEPT))  # 16 groups of 1 channel: nothing to take evenly
def test_group_norm_is_pruned_evenly(num_groups: int) -> None:
    model = _group_norm_net(num_groups)
    m = AutoBlockManager(SPARSITIES, model, None, (1, 3, 16, 16), 1.0, verbose=False)
    (spec,) = m.blocks  # the whole net is one block, the GroupNorm inside it
    teacher = m.get_block(spec.name)
    (gn_node,) = [n for n in teacher.graph.nodes if n.op == "call_module" and n.target == "3"]
    conv = gn_node.args[0].target  # the conv whose filters the GroupNorm normalises
    gn = teacher.get_submodule("3")
    assert isinstance(gn, nn.GroupNorm)
    x = torch.rand(spec.input_shape)
    with torch.no_grad():
        reference = teacher(x)
    for sparsity, kept in zip(SPARSITIES, GN_KEPT[num_groups]):
        block = m.get_descendant(spec.name, sparsity)
        keep = torch.tensor(m.pruning_plan(spec.name, sparsity).get(conv, list(range(16))))
        assert len(keep) == kept
        assert torch.bincount(keep // (16 // num_groups), minlength=num_groups).unique().tolist() == [kept // num_groups]
        new_gn = block.get_submodule("3")
        assert (new_gn.num_groups, new_gn.num_channels) == (num_groups, kept)
        assert torch.equal(new_gn.weight, gn.weight.detach()[keep]) and torch.equal(new_gn.bias, gn.bias.detach()[keep])
        assert new_gn.weight.data_ptr() != gn.weight.data_ptr()  # a copy: training it leaves the teacher alone
        with torch.no_grad():
            y = block(x)
        assert tuple(y.shape) == spec.output_shape and torch.isfinite(y).all()
        if sparsity == 0.0:
            assert torch.equal(y, reference)
    with torch.no_grad():
        assert torch.equal(m.compose({spec.name: m.get_descendant(spec.name, 0.0)})(x), model(x))


def test_unbalanced_group_norm_plan_is_refused() -> None:
    from legodnn.blockmanager.pruning import build_descendant

    m = AutoBlockManager(SPARSITIES, _group_norm_net(4), None, (1, 3, 16, 16), 1.0, verbose=False)
    block = m.get_block(m.block_names[0])
    with pytest.raises(ValueError, match="unbalances the groups"):
        build_descendant(block, {"2": list(range(2, 16))})  # two channels from the first group only


def test_fcos_group_norm_towers_are_blocks() -> None:
    """FCOS head towers (conv + GroupNorm(32) + ReLU, shared by the FPN levels) are pruned
    now; with GroupNorm frozen, conv coverage was 10% at this width (29% at width 1.0)."""
    from cv_tasks import get_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64 px detector gains nothing from a second thread
    try:
        torch.manual_seed(0)
        model = get_model("fcos_mobilenet_v3_large_fpn", num_classes=3, min_size=64, max_size=64,
                          width_mult=0.5).eval()
        m = AutoBlockManager([0.0, 0.5], model, None, (1, 3, 64, 64), verbose=False)
        assert m.coverage > 0.6
        towers = [s for s in m.blocks if s.part.startswith("head.")]
        assert len(towers) == 2
        for spec in towers:
            gns = [g for g in m.get_descendant(spec.name, 0.5).modules() if isinstance(g, nn.GroupNorm)]
            assert all(g.num_groups == 32 and g.num_channels % 32 == 0 for g in gns)
            assert sorted(g.num_channels for g in gns) == [128, 128, 128, 256]  # 256 wide; the last one feeds the output
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            reference = flat_outputs(model(x))
            exact = flat_outputs(m.compose()(x))
            pruned = m.compose({s.name: m.get_descendant(s.name, 0.5) for s in m.blocks})(x)
        assert all(torch.equal(a, b) for a, b in zip(exact, reference)) and len(exact) == len(reference)
        assert len(pruned) == 1 and {"boxes", "scores", "labels"} <= set(pruned[0])
    finally:
        torch.set_num_threads(threads)


class _ConstantScale(nn.Module):
    """A model whose forward builds a tensor constant, as FrozenBatchNorm2d's eps does."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(torch.relu(self.a(x))) * torch.tensor(0.5)
        return self.c(torch.relu(y))


def test_tracing_leaves_the_model_untouched_and_retraces_alike(tmp_path: Path) -> None:
    from legodnn import CommonModelManager

    model = _ConstantScale().eval()
    names = set(vars(model))
    bm = AutoBlockManager([0.0, 0.5], model, CommonModelManager(), (1, 3, 8, 8), 1.0, "cpu")
    assert set(vars(model)) == names  # fx's `_tensor_constant0` went to the graph only
    bm.extract_all_blocks(tmp_path / "blocks")
    again = AutoBlockManager([0.0, 0.5], model, CommonModelManager(), (1, 3, 8, 8), 1.0, "cpu")
    assert again.fingerprint == bm.fingerprint
    switcher = BlockSwitcher(tmp_path / "blocks", _ConstantScale())  # a fresh copy on the device
    switcher.switch([0.5] * len(bm.blocks))
    assert switcher.model(torch.rand(1, 3, 8, 8)).shape == (1, 4, 8, 8)


class _LayerScaleBlock(nn.Module):
    """One block ending in a layer scale: a parameter the graph reads with ``get_attr`` (as
    ConvNeXt's layer scale, or Swin's attention its qkv weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.proj = nn.Conv2d(16, 8, 1)
        self.scale = nn.Parameter(torch.rand(8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return x + self.scale * self.proj(torch.relu(self.conv(x)))


def test_the_frame_keeps_no_teacher_tensor_that_only_a_block_reads() -> None:
    from legodnn.blockmanager.partition import BLOCK_PREFIX

    model = _LayerScaleBlock().eval()
    m = AutoBlockManager(SPARSITIES, model, None, (1, 3, 8, 8), 1.0, verbose=False)
    (spec,) = m.blocks
    composed = m.compose({spec.name: m.get_descendant(spec.name, 0.8)})
    assert [n for n, _ in composed.named_parameters() if not n.startswith(BLOCK_PREFIX)] == []  # not the scale
    assert count_params(composed) < count_params(model)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(m.compose({spec.name: m.get_descendant(spec.name, 0.0)})(x), model(x))
