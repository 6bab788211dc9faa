"""Blocks, conv-parameter coverage, parameter cut at all-0.8 and extraction time per model.

"max/block" is the block-size limit, "largest" the most convs in one block (above the
limit for a module that is pruned only whole, up to twice it); "linear coverage" the
share of the ``nn.Linear`` parameters inside blocks (MLP hidden widths; – where none).

    python bench/coverage.py [--ratio 0.125] [--models cifar_resnet18 tv_vgg16_bn ...] [--markdown docs/zoo.md]

Every model is built at random weights in eval mode at its standard input size; the block
manager is made with sparsities [0, .3, .6, .8] and ``extract_all_blocks`` writes its
store into a temporary directory. "find s" is the block manager alone, "extract s" the
manager plus extraction. A model refused with a legodnn error gets its message.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from legodnn import AutoBlockManager, LegoDNNError
from legodnn.blockmanager.measure import count_params

SPARSITIES = [0.0, 0.3, 0.6, 0.8]


def _tv(name: str, **kw) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(**kw)

    return build


def _cv(name: str, **kw) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from cv_tasks import get_model

        return get_model(name, **kw)

    return build


def _seg(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None)

    return build


def _tm(name: str, fused: bool = False, **kw) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        model = timm.create_model(name, pretrained=False, **kw)
        if fused:
            from timm.utils.model import reparameterize_model

            model = reparameterize_model(model.eval())
        return model

    return build


def _frcnn() -> nn.Module:
    import torchvision

    return torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=224, max_size=224
    )


MODELS: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, ...]]] = {
    "cifar_resnet18": (_cv("cifar_resnet18"), (1, 3, 32, 32)),
    "cifar_vgg16": (_cv("cifar_vgg16"), (1, 3, 32, 32)),
    "cifar_mobilenetv2": (_cv("cifar_mobilenetv2"), (1, 3, 32, 32)),
    "cifar_densenet_tiny": (_cv("cifar_densenet_tiny"), (1, 3, 32, 32)),
    "tiny_encoder_decoder": (_cv("tiny_encoder_decoder"), (1, 3, 64, 64)),
    "c3d_tiny": (_cv("c3d_tiny"), (1, 3, 8, 32, 32)),
    "tv_resnet18": (_tv("resnet18"), (1, 3, 224, 224)),
    "tv_resnet50": (_tv("resnet50"), (1, 3, 224, 224)),
    "tv_mobilenet_v2": (_tv("mobilenet_v2"), (1, 3, 224, 224)),
    "tv_vgg16_bn": (_tv("vgg16_bn"), (1, 3, 224, 224)),
    "tv_resnext50_32x4d": (_tv("resnext50_32x4d"), (1, 3, 224, 224)),
    "tv_mobilenet_v3_large": (_tv("mobilenet_v3_large"), (1, 3, 224, 224)),
    "tv_fasterrcnn_resnet50_fpn": (_frcnn, (1, 3, 224, 224)),
    # the other tasks' models at standard width (cv_tasks registry)
    "fcos_mobilenet_v3_large_fpn": (_cv("fcos_mobilenet_v3_large_fpn", num_classes=91, min_size=224, max_size=224),
                                    (1, 3, 224, 224)),
    "deeplabv3_resnet50": (_cv("deeplabv3_resnet50"), (1, 3, 224, 224)),
    "lraspp_mobilenet_v3_large": (_cv("lraspp_mobilenet_v3_large"), (1, 3, 224, 224)),
    "simple_baseline_resnet": (_cv("simple_baseline_resnet"), (1, 3, 256, 192)),
    "r3d_18": (_cv("r3d_18"), (1, 3, 8, 112, 112)),
    "r2plus1d_18": (_cv("r2plus1d_18"), (1, 3, 8, 112, 112)),
    "conv_autoencoder": (_cv("conv_autoencoder"), (1, 3, 64, 64)),
    # segmentation at full size (issue 14's extraction-time target: under 30 s each)
    "tv_fcn_resnet50": (_seg("fcn_resnet50"), (1, 3, 224, 224)),
    "tv_fcn_resnet101": (_seg("fcn_resnet101"), (1, 3, 224, 224)),
    "tv_deeplabv3_resnet101": (_seg("deeplabv3_resnet101"), (1, 3, 224, 224)),
    # channels-last and hybrid models
    "tv_convnext_tiny": (_tv("convnext_tiny"), (1, 3, 224, 224)),
    "tv_maxvit_t": (_tv("maxvit_t"), (1, 3, 224, 224)),
    "tv_swin_t": (_tv("swin_t"), (1, 3, 224, 224)),
    "tv_swin_v2_t": (_tv("swin_v2_t"), (1, 3, 224, 224)),
    "tv_vit_b_16": (_tv("vit_b_16"), (1, 3, 224, 224)),
    "tv_efficientnet_b0": (_tv("efficientnet_b0"), (1, 3, 224, 224)),
    "tv_regnet_y_400mf": (_tv("regnet_y_400mf"), (1, 3, 224, 224)),
    # timm models named in issue 14
    "tm_res2net50_26w_4s": (_tm("res2net50_26w_4s"), (1, 3, 224, 224)),
    "tm_resnest14d": (_tm("resnest14d"), (1, 3, 224, 224)),
    "tm_ghostnet_100": (_tm("ghostnet_100"), (1, 3, 224, 224)),
    "tm_repvgg_a2": (_tm("repvgg_a2"), (1, 3, 224, 224)),
    "tm_repvgg_a2_fused": (_tm("repvgg_a2", fused=True), (1, 3, 224, 224)),
    "tm_hrnet_w18_small": (_tm("hrnet_w18_small"), (1, 3, 224, 224)),
    "tm_ese_vovnet19b_dw": (_tm("ese_vovnet19b_dw"), (1, 3, 224, 224)),
    "tm_mobilevit_xxs": (_tm("mobilevit_xxs"), (1, 3, 256, 256)),
    "tm_nf_resnet26": (_tm("nf_resnet26"), (1, 3, 224, 224)),
    "tm_levit_128s": (_tm("levit_128s"), (1, 3, 224, 224)),
    "tm_tresnet_m": (_tm("tresnet_m"), (1, 3, 224, 224)),
    # other common timm CNNs (issue 14's list of families)
    "tm_resnet26d": (_tm("resnet26d"), (1, 3, 224, 224)),
    "tm_efficientnet_b0": (_tm("efficientnet_b0"), (1, 3, 224, 224)),
    "tm_mobilenetv3_large_100": (_tm("mobilenetv3_large_100"), (1, 3, 224, 224)),
    "tm_dla34": (_tm("dla34"), (1, 3, 224, 224)),
    "tm_cspresnet50": (_tm("cspresnet50"), (1, 3, 224, 224)),
    "tm_regnetx_002": (_tm("regnetx_002"), (1, 3, 224, 224)),
    "tm_rexnet_100": (_tm("rexnet_100"), (1, 3, 224, 224)),
    "tm_dpn68": (_tm("dpn68"), (1, 3, 224, 224)),
    "tm_convnext_atto": (_tm("convnext_atto"), (1, 3, 224, 224)),
    "tm_swin_tiny_patch4_window7_224": (_tm("swin_tiny_patch4_window7_224"), (1, 3, 224, 224)),
    "tm_vit_tiny_patch16_224": (_tm("vit_tiny_patch16_224"), (1, 3, 224, 224)),
}


def measure(name: str, ratio: float) -> dict:
    build, size = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    start = time.perf_counter()
    try:
        m = AutoBlockManager(SPARSITIES, model, None, size, ratio, verbose=False)
    except LegoDNNError as exc:
        return dict(refused=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
    found = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        m.extract_all_blocks(os.path.join(tmp, "blocks"))
    extracted = time.perf_counter() - start
    smallest = m.compose({s.name: m.get_descendant(s.name, 0.8) for s in m.blocks})
    cut = 1 - count_params(smallest) / count_params(model)
    inside = {id(mod) for s in m.blocks for mod in m.get_block(s.name).modules()}
    linears = [mod for mod in model.modules() if isinstance(mod, nn.Linear)]
    linear_params = sum(count_params(mod) for mod in linears)
    linear_coverage = (sum(count_params(mod) for mod in linears if id(mod) in inside) / linear_params
                       if linear_params else None)
    parts = ",".join(p.path or "<model>" for p in m.parts)
    return dict(blocks=len(m.blocks), convs=m.total_convs, max_convs=m.max_convs_per_block,
                largest=max(s.num_convs for s in m.blocks), coverage=m.coverage, linear_coverage=linear_coverage,
                cut=cut, find_seconds=found, seconds=extracted, parts=parts, size=list(size))


def markdown(results: Dict[str, dict], ratio: float, threads: int) -> List[str]:
    lines = ["| model | input | convs | max/block | largest | blocks | coverage | linear coverage | cut at all-0.8 "
             "| find s | extract s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        size = "x".join(str(d) for d in MODELS[name][1][2:])
        if "refused" in r:
            lines.append(f"| {name} | {size} | | | | refused | | | | {r['seconds']:.1f} | |")
        else:
            lin = "–" if r["linear_coverage"] is None else f"{100 * r['linear_coverage']:.1f}%"
            lines.append(f"| {name} | {size} | {r['convs']} | {r['max_convs']} | {r['largest']} | {r['blocks']} | "
                         f"{100 * r['coverage']:.1f}% | {lin} | {100 * r['cut']:.1f}% | {r['find_seconds']:.1f} | "
                         f"{r['seconds']:.1f} |")
    return lines


def main(argv=None) -> Dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.125, help="compress_layer_max_ratio")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'model':28s} {'convs':>5s} {'max/blk':>7s} {'largest':>7s} {'blocks':>6s} {'coverage':>8s} {'linear':>7s} "
          f"{'cut':>6s} "
          f"{'find s':>7s} {'extr s':>7s}")
    results = {}
    for name in args.models:
        r = results[name] = measure(name, args.ratio)
        if "refused" in r:
            print(f"{name:28s} refused: {r['refused'][:100]}", flush=True)
            continue
        print(f"{name:28s} {r['convs']:5d} {r['max_convs']:7d} {r['largest']:7d} {r['blocks']:6d} "
              f"{100 * r['coverage']:7.1f}% "
              f"{'–' if r['linear_coverage'] is None else format(100 * r['linear_coverage'], '6.1f') + '%':>7s} "
              f"{100 * r['cut']:5.1f}% {r['find_seconds']:7.1f} {r['seconds']:7.1f}", flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(markdown(results, args.ratio, args.threads)) + "\n")
    return results


if __name__ == "__main__":
    main()
