"""Models people bring from torchvision and timm, as a new user would: random weights,
small inputs, sparsities [0, .3, .6, .8] at ratio 0.125.

Each named model either passes every check (sparsity 0 is the model bit for bit, a
random composition of descendants runs and gives finite outputs of the right shapes,
all-0.8 has fewer parameters) with at least its recorded conv coverage and parameter
cut, or is refused with the legodnn error recorded for it. The floors are today's
values rounded down: a drop is a regression, a rise means the floor can go up. The non-slow part
stays under about a minute on one busy core; the rest is marked slow.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, NamedTuple, Optional

import pytest
import torch
from torch import nn
from zoo import _randomize_bn, flat_outputs

from legodnn import AutoBlockManager, LegoDNNError
from legodnn.blockmanager.measure import count_params

SPARSITIES = [0.0, 0.3, 0.6, 0.8]


class Entry(NamedTuple):
    build: Callable[[], nn.Module]
    size: int  # input height = width
    coverage: float  # the least share of conv parameters inside blocks
    cut: float  # the least share of the model's parameters that all-0.8 removes
    slow: bool = False
    refused: Optional[type] = None  # the error it is refused with, if it is
    ratio: float = 0.125  # compress_layer_max_ratio


def tv(name: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(num_classes=10, **kw)

    return build


def tm(name: str, fused: bool = False, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm")
        model = timm.create_model(name, pretrained=False, num_classes=10, **kw)
        if fused:  # re-parameterisable branches fused into one conv each, as deployed
            from timm.utils.model import reparameterize_model
            model = reparameterize_model(model.eval())
        return model

    return build


ZOO: Dict[str, Entry] = {
    # torchvision
    "tv_resnet18": Entry(tv("resnet18"), 64, 0.98, 0.77),
    "tv_mobilenet_v3_small": Entry(tv("mobilenet_v3_small"), 64, 0.99, 0.85),
    "tv_shufflenet_v2_x0_5": Entry(tv("shufflenet_v2_x0_5"), 64, 0.99, 0.66),
    "tv_squeezenet1_1": Entry(tv("squeezenet1_1"), 64, 0.99, 0.78),
    "tv_efficientnet_b0": Entry(tv("efficientnet_b0"), 64, 0.99, 0.84, slow=True),
    "tv_regnet_x_400mf": Entry(tv("regnet_x_400mf"), 64, 0.99, 0.75, slow=True),
    "tv_regnet_y_400mf": Entry(tv("regnet_y_400mf"), 64, 0.99, 0.76, slow=True),
    "tv_mnasnet0_5": Entry(tv("mnasnet0_5"), 64, 0.99, 0.83),
    # channels-last sections (permute, LayerNorm and Linear on (N, H, W, C)); transformers
    "tv_convnext_tiny": Entry(tv("convnext_tiny"), 64, 0.99, 0.73),
    "tv_swin_t": Entry(tv("swin_t"), 64, 0.99, 0.47, slow=True),  # 0.18 while the frame kept the attention weights
    "tv_swin_v2_t": Entry(tv("swin_v2_t"), 64, 0.99, 0.47, slow=True),
    "tv_maxvit_t": Entry(tv("maxvit_t"), 224, 0.99, 0.60, slow=True),
    "tv_vit_b_16": Entry(tv("vit_b_16", image_size=64), 64, 0.0, 0.51, slow=True),  # its one conv is in the frame
    # timm
    "tm_resnet18d": Entry(tm("resnet18d"), 64, 0.98, 0.77),
    "tm_mobilenetv3_large_100": Entry(tm("mobilenetv3_large_100"), 64, 0.99, 0.81),
    "tm_efficientnet_b0": Entry(tm("efficientnet_b0"), 64, 0.99, 0.84),
    "tm_regnetx_002": Entry(tm("regnetx_002"), 64, 0.99, 0.73),
    "tm_dla34": Entry(tm("dla34"), 64, 0.97, 0.75),
    "tm_nf_resnet26": Entry(tm("nf_resnet26"), 64, 0.8, 0.69),  # ScaledStdConv2d with gains
    "tm_convnext_atto": Entry(tm("convnext_atto"), 64, 0.99, 0.70),  # conv MLPs
    # one-shot aggregation: an OSA module holds 9 convs, more than 0.125 x 41 = 5 allows, and is
    # pruned only whole: a larger block (up to twice the limit)
    "tm_ese_vovnet19b_dw": Entry(tm("ese_vovnet19b_dw"), 64, 0.95, 0.70),
    "tm_ese_vovnet19b_dw_r25": Entry(tm("ese_vovnet19b_dw"), 64, 0.99, 0.73, ratio=0.25),
    "tm_levit_128s": Entry(tm("levit_128s", img_size=64), 64, 0.99, 0.00),  # non-persistent buffers
    "tm_resnet26d": Entry(tm("resnet26d"), 64, 0.8, 0.70, slow=True),
    "tm_mobilenetv3_small_100": Entry(tm("mobilenetv3_small_100"), 64, 0.99, 0.85),
    "tm_ghostnet_100": Entry(tm("ghostnet_100"), 64, 0.99, 0.89, slow=True),  # concat, then a slice
    "tm_cspresnet50": Entry(tm("cspresnet50"), 64, 0.99, 0.82, slow=True),
    "tm_rexnet_100": Entry(tm("rexnet_100"), 64, 0.99, 0.76),
    "tm_dpn68": Entry(tm("dpn68"), 64, 0.99, 0.74, slow=True),
    "tm_tresnet_m": Entry(tm("tresnet_m"), 64, 0.99, 0.85, slow=True),
    "tm_hrnet_w18_small": Entry(tm("hrnet_w18_small"), 64, 0.43, 0.33),  # multi-resolution fusion
    # channel split + concat (Res2Net), radix split attention (ResNeSt: a bottleneck holds 5-6
    # convs, more than 0.125 x 27 allows; at 0.25 every one is a block)
    "tm_res2net50_26w_4s": Entry(tm("res2net50_26w_4s"), 64, 0.99, 0.73, slow=True),
    "tm_resnest14d": Entry(tm("resnest14d"), 64, 0.90, 0.70, slow=True),
    "tm_resnest14d_r25": Entry(tm("resnest14d"), 64, 0.99, 0.81, slow=True, ratio=0.25),
    # re-parameterisable branches: refused in the training form, pruned once fused
    "tm_repvgg_a2": Entry(tm("repvgg_a2"), 64, 0.0, 0.0, slow=True, refused=LegoDNNError),
    "tm_repvgg_a2_fused": Entry(tm("repvgg_a2", fused=True), 64, 0.99, 0.82, slow=True),
    # MobileVitBlock's forward branches on its input's size: traced for that size (meta device)
    "tm_mobilevit_xxs": Entry(tm("mobilevit_xxs"), 64, 0.95, 0.55, slow=True),
    "tm_convnext_tiny": Entry(tm("convnext_tiny"), 64, 0.99, 0.73, slow=True),
    "tm_swin_tiny": Entry(tm("swin_tiny_patch4_window7_224", img_size=64, window_size=2), 64, 0.99, 0.49, slow=True),
    "tm_vit_tiny": Entry(tm("vit_tiny_patch16_224", img_size=64), 64, 0.0, 0.50, slow=True),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(model: nn.Module, x: torch.Tensor) -> list:
    with torch.no_grad():
        return flat_outputs(model(x))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if e.slow else n for n, e in ZOO.items()])
def test_zoo_model(name: str) -> None:
    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.build().eval()
    _randomize_bn(model)
    input_size = (1, 3, entry.size, entry.size)
    if entry.refused is not None:
        with pytest.raises(entry.refused) as info:
            AutoBlockManager(SPARSITIES, model, None, input_size, entry.ratio, verbose=False)
        assert isinstance(info.value, LegoDNNError) and len(str(info.value)) > 40  # says what and why
        return
    bm = AutoBlockManager(SPARSITIES, model, None, input_size, entry.ratio, verbose=False)
    assert bm.coverage >= entry.coverage, f"{name}: coverage {bm.coverage:.3f} < {entry.coverage}"
    torch.manual_seed(1)
    x = torch.rand((2,) + input_size[1:])
    reference = _run(model, x)
    exact = _run(bm.compose({s.name: bm.get_descendant(s.name, 0.0) for s in bm.blocks}), x)
    assert len(exact) == len(reference) and all(torch.equal(a, b) for a, b in zip(exact, reference))
    rng = random.Random(name)
    mixed = _run(bm.compose({s.name: bm.get_descendant(s.name, rng.choice(SPARSITIES)) for s in bm.blocks}), x)
    assert [o.shape for o in mixed] == [r.shape for r in reference]
    assert all(torch.isfinite(o).all() for o in mixed)
    smallest = bm.compose({s.name: bm.get_descendant(s.name, 0.8) for s in bm.blocks})
    cut = 1 - count_params(smallest) / count_params(model)
    assert cut > 0 and cut >= entry.cut, f"{name}: all-0.8 removes {cut:.3f} of the parameters < {entry.cut}"
