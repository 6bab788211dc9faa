"""Capture every block's input and output from one teacher forward."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from ..blockmanager.auto_block_manager import AutoBlockManager
from ..errors import LegoDNNError

__all__ = ["capture_block_io"]


def capture_block_io(
    block_manager: AutoBlockManager, model_manager: Any, batch: Any, device: str
) -> Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]]:
    """(input, output) of each teacher block for one batch, via the model manager's forward.

    A block called more than once in a forward (a head shared across feature levels)
    yields one pair per call.
    """
    records: Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in block_manager.block_names}
    handles = []
    for name in block_manager.block_names:

        def hook(_m: torch.nn.Module, args: Tuple[Any, ...], out: Any, name: str = name) -> None:
            records[name].append((args[0].detach(), out.detach()))

        handles.append(block_manager.get_block(name).register_forward_hook(hook))
    try:
        model_manager.forward_to_gen_mid_data(block_manager.teacher, batch, device)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, r in records.items() if not r]
    if missing:
        raise LegoDNNError(
            f"blocks {missing} did not run during model_manager.forward_to_gen_mid_data: the manager must "
            "run the model it is given on the batch (check it does not build or use another model)"
        )
    return records
