"""A convolutional autoencoder whose forward returns its own anomaly map.

Reconstruction-based anomaly detection (the family of GPND, which the original LegoDNN
used): trained on normal images only, the autoencoder reconstructs what it has seen and
fails on what it has not. The scoring head is inside the model, so every legodnn stage
(profiling, the hot-swapped model) sees the score directly:

* ``forward(x)`` returns the anomaly map ``mean_c (x - x_hat)^2``, shape ``(B, 1, H, W)``;
* the image score is the map's mean over pixels (``scoring.image_scores``);
* the training loss is ``forward(x).mean()``, the reconstruction MSE on normal images.

``reconstruct(x)`` gives ``x_hat`` itself, for looking at the reconstructions.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from cv_tasks.anomaly_detection.models.input_checks import check_images
from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.registry import register_model

# fx records the check as one call on the input (it patches this module's globals while tracing)
torch.fx.wrap("check_images")

__all__ = ["ConvAutoencoder", "conv_autoencoder"]


def _down(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv, stride 2 (halves H and W), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _same(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv, stride 1, BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _up(cin: int, cout: int) -> nn.Sequential:
    """4x4 transposed conv, stride 2 (doubles H and W), BatchNorm, ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ConvAutoencoder(nn.Module):
    """Encoder of ``depth`` stride-2 stages to a ``latent_channels`` bottleneck, mirrored decoder.

    Inputs are images in [0, 1] (the sigmoid output matches that range) whose height and
    width are multiples of ``2 ** depth``. Stage ``i`` has ``width * 2 ** i`` channels.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, depth: int = 3, latent_channels: int = 16) -> None:
        super().__init__()
        if in_channels < 1 or width < 1 or depth < 1 or latent_channels < 1:
            raise ValueError(
                f"in_channels, width, depth and latent_channels must be >= 1, got {in_channels}, {width}, "
                f"{depth}, {latent_channels}"
            )
        self.depth = depth
        widths = [width * 2**i for i in range(depth)]
        enc = [_same(in_channels, widths[0])]
        cin = widths[0]
        for w in widths:
            enc += [_down(cin, w), _same(w, w)]
            cin = w
        enc.append(nn.Conv2d(cin, latent_channels, 1))  # the bottleneck: linear, few channels
        self.encoder = nn.Sequential(*enc)
        dec = [_same(latent_channels, cin)]
        for w in reversed(widths):
            dec += [_up(cin, w), _same(w, w)]
            cin = w
        dec += [nn.Conv2d(cin, in_channels, 3, 1, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)

    def reconstruct(self, x: Tensor) -> Tensor:
        """``x_hat``, the reconstruction of ``x``."""
        return self.decoder(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        """Anomaly map ``(B, 1, H, W)``: the squared reconstruction error averaged over channels."""
        x = check_images(x, 2**self.depth, False, "ConvAutoencoder")
        return (x - self.reconstruct(x)).pow(2).mean(1, keepdim=True)


@register_model(task="anomaly_detection", input_size=(1, 3, 64, 64))
def conv_autoencoder(
    in_channels: int = 3,
    width: int = 32,
    depth: int = 3,
    latent_channels: int = 16,
    weights_path: Optional[str] = None,
) -> ConvAutoencoder:
    """Convolutional autoencoder (32-64-128 channels, 16-channel bottleneck by default); its output
    is the anomaly map. ``weights_path`` loads a checkpoint (state dict or safetensors)."""
    model = ConvAutoencoder(in_channels, width, depth, latent_channels)
    if weights_path is not None:
        load_checkpoint(model, weights_path)
    return model
