"""Blocks found and conv-parameter coverage per model (the README's coverage table).

    python bench/coverage.py [--ratio 0.125] [--models cifar_resnet18 tv_vgg16_bn ...]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from legodnn import AutoBlockManager


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
}


def main(argv=None) -> Dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.125, help="compress_layer_max_ratio")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'model':28s} {'parts':24s} {'convs':>5s} {'max/blk':>7s} {'blocks':>6s} {'coverage':>8s} {'find s':>7s}")
    results = {}
    for name in args.models:
        build, size = MODELS[name]
        torch.manual_seed(0)
        model = build().eval()
        start = time.perf_counter()
        m = AutoBlockManager([0.0, 0.5], model, None, size, args.ratio, verbose=False)
        seconds = time.perf_counter() - start
        parts = ",".join(p.path or "<model>" for p in m.parts)
        results[name] = dict(blocks=len(m.blocks), coverage=m.coverage, seconds=seconds, parts=parts)
        print(f"{name:28s} {parts[:24]:24s} {m.total_convs:5d} {m.max_convs_per_block:7d} {len(m.blocks):6d} "
              f"{100 * m.coverage:7.1f}% {seconds:7.2f}")
    return results


if __name__ == "__main__":
    main()
