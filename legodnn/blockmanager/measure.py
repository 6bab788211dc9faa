"""Parameters, bytes and FLOPs of a module, counted the same way everywhere."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_bytes", "count_flops"]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_bytes(module: nn.Module) -> int:
    """Bytes of all parameters and buffers: what storing or loading the module costs."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def count_flops(module: nn.Module, input_shape: Tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """FLOPs (2 x multiply-adds of convs and matmuls) of one forward on ``input_shape``.

    Counted on the meta device (the counts depend on shapes only, and a large block at
    full resolution then costs nothing to run); a module that cannot run there (an op
    that reads values) is run on ``device``.
    """
    was_training = module.training
    module.eval()
    try:
        try:
            return _count(module, input_shape, "meta")
        except Exception:
            return _count(module, input_shape, device)
    finally:
        module.train(was_training)


def _count(module: nn.Module, input_shape: Tuple[int, ...], device: torch.device | str) -> int:
    x = torch.zeros(input_shape, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        if str(device) == "meta":
            tensors = {k: torch.empty_like(v, device="meta") for k, v in
                       [*module.named_parameters(), *module.named_buffers()]}
            functional_call(module, tensors, (x,), strict=False)
        else:
            module(x)
    return int(counter.get_total_flops())
