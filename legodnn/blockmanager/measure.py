"""Parameters, bytes and FLOPs of a module, counted the same way everywhere."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_bytes", "count_flops"]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_bytes(module: nn.Module) -> int:
    """Bytes of all parameters and buffers: what storing or loading the module costs."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def count_flops(module: nn.Module, input_shape: Tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """FLOPs (2 x multiply-adds of convs and matmuls) of one forward on ``input_shape``."""
    was_training = module.training
    module.eval()
    try:
        x = torch.zeros(input_shape, device=device)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(x)
        return int(counter.get_total_flops())
    finally:
        module.train(was_training)
