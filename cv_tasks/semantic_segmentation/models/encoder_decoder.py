"""A tiny U-Net-like encoder-decoder, the segmentation model of the test zoo.

It has what block extraction must handle for dense prediction: strided-conv
downsampling, ``ConvTranspose2d`` upsampling, and skip connections that
concatenate encoder features into the decoder (so one encoder tensor feeds two
places). Output: per-pixel class logits ``(N, num_classes, H, W)``; H and W must be
multiples of 4.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.registry import register_model

__all__ = ["ConvBNReLU", "UpBlock", "TinyEncoderDecoder", "tiny_encoder_decoder"]


class ConvBNReLU(nn.Sequential):
    """3x3 conv + BatchNorm + ReLU, 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class UpBlock(nn.Module):
    """2x transposed-conv upsampling, concatenation with a skip tensor, 3x3 conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.fuse = ConvBNReLU(out_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.relu(self.bn(self.up(x)))
        return self.fuse(torch.cat([x, skip], 1))


class TinyEncoderDecoder(nn.Module):
    """Encoder at 1, 1/2 and 1/4 resolution; decoder back to full resolution; 1x1 head."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if num_classes < 2 or width < 1:
            raise ValueError(f"TinyEncoderDecoder needs num_classes >= 2 and width >= 1, got {num_classes}, {width}")
        self.enc1 = ConvBNReLU(3, width)
        self.enc2 = ConvBNReLU(width, 2 * width, stride=2)
        self.enc3 = nn.Sequential(
            ConvBNReLU(2 * width, 4 * width, stride=2),
            ConvBNReLU(4 * width, 4 * width),
        )
        self.dec2 = UpBlock(4 * width, 2 * width, 2 * width)
        self.dec1 = UpBlock(2 * width, width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        f1 = self.enc1(x)
        f2 = self.enc2(f1)
        f3 = self.enc3(f2)
        return self.head(self.dec1(self.dec2(f3, f2), f1))


@register_model(task="semantic_segmentation", input_size=(1, 3, 64, 64))
def tiny_encoder_decoder(num_classes: int = 10, weights_path: Optional[str] = None, *,
                         width: int = 16) -> TinyEncoderDecoder:
    """Tiny encoder-decoder with two skip connections; H and W multiples of 4."""
    model = TinyEncoderDecoder(num_classes=num_classes, width=width)
    return load_checkpoint(model, weights_path) if weights_path is not None else model
