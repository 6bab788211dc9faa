"""CPU-sized variants of every registered segmenter, shared by the demo and the bench.

Same designs as the registered defaults with fewer channels and layers, so a teacher
trains and goes through the pipeline in CPU minutes.
"""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["BLOCK_SIZE_RATIO", "CPU_VARIANTS"]

CPU_VARIANTS: Dict[str, Dict[str, Any]] = {
    "tiny_encoder_decoder": {"width": 16},
    "fcn_resnet50": {"width": 16, "layers": (1, 2, 2, 1)},
    "deeplabv3_resnet50": {"width": 16, "layers": (1, 2, 2, 1)},
    "deeplabv3_mobilenet_v3_large": {"width_mult": 0.5},
    "lraspp_mobilenet_v3_large": {"width_mult": 0.5},
}

#: the ASPP head is 6 parallel convs: with few backbone layers, 1/8 of the convs per block
#: is too few to hold it
BLOCK_SIZE_RATIO: Dict[str, float] = {"deeplabv3_resnet50": 0.25}
