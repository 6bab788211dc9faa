"""Input checks that survive torch.fx tracing, so a wrong image size fails with a clear message.

A shape test written inside ``forward`` would be data-dependent control flow, which fx
cannot trace; registered with ``torch.fx.wrap("check_images")`` in each model module
that calls it, the check is one opaque node on the input that passes it through, and it
runs in the traced model, every block composition and the hot-swapped model too.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_images"]


def check_images(x: Tensor, multiple: int, square: bool, model: str) -> Tensor:
    """``x`` unchanged if it is ``(B, C, H, W)`` with H and W multiples of ``multiple`` (and equal if ``square``)."""
    if x.dim() != 4:
        raise ValueError(f"{model} takes a batch of images (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % multiple or w % multiple:
        raise ValueError(f"{model} needs height and width that are multiples of {multiple}, got {h}x{w}: "
                         f"resize the images (e.g. image_size={max(multiple, (max(h, w) // multiple) * multiple)})")
    if square and h != w:
        raise ValueError(f"{model} rotates its input by 90 degrees, so images must be square, got {h}x{w}: "
                         "resize them to a square")
    return x
