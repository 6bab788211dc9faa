"""BatchNorm statistics re-estimated in the composition a descendant will run in.

During composition-aware retraining a descendant's BatchNorm layers follow the batches
of whatever composition was sampled: beside the teacher's blocks at one step, beside
deeply pruned ones at the next. Their running statistics end as an exponential average
over the last few steps' contexts, which matches no composition in particular. Weight
sharing networks meet the same mismatch (slimmable networks, Once-for-All) and fix it
the same way: after training, run a few batches through a composition with its
BatchNorm layers collecting plain averages of the batch statistics.

Each descendant gets one set of statistics. :func:`recalibrate_batchnorm` collects them
in the compositions given, every descendant averaged over the ones it appears in; with
every whole level (the default of the retrainer) each descendant is calibrated beside
its own level, the composition the optimizer picks under a uniform budget.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .composition import SwitchableModel

__all__ = ["recalibrate_batchnorm", "recalibrate_store", "level_compositions"]

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _descendant_norms(net: SwitchableModel) -> List[_BatchNorm]:
    return [m for d in net.descendants.values() for m in d.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(
    net: SwitchableModel,
    compositions: Sequence[Sequence[float]],
    loader: Iterable[Any],
    forward: Any,
    max_batches: int = 50,
) -> int:
    """Re-estimate the running statistics of the descendants' BatchNorm layers.

    ``forward(model, batch)`` runs one batch through the composed model. For each batch
    (up to ``max_batches``) every composition runs once; the statistics of a
    BatchNorm layer become the plain mean of the batch statistics it saw. Layers of
    descendants that no composition uses keep theirs. Everything else (the frame, the
    teacher's blocks, every weight) is untouched. Returns the batches used; with none,
    nothing changes.
    """
    norms = _descendant_norms(net)
    if not norms or not compositions:
        return 0
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over the batches seen
    net.model.eval()
    for m in norms:
        m.train()
    batches = 0
    try:
        for batch in loader:
            if batches >= max_batches:
                break
            for config in compositions:
                net.select(config)
                forward(net.model, batch)
            batches += 1
    finally:
        for m, (momentum, mean, var, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.eval()
            if int(m.num_batches_tracked) == 0 or batches == 0:  # never ran: keep what it had
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)
    return batches


def level_compositions(block_manager: Any) -> List[Tuple[float, ...]]:
    """Every whole level: each block at the same sparsity, for each sparsity above 0."""
    n = len(block_manager.block_names)
    return [(s,) * n for s in block_manager.block_sparsity if s > 0]


def recalibrate_store(
    block_manager: Any,
    model_manager: Any,
    source_blocks_dir: str,
    target_blocks_dir: str,
    loader: Iterable[Any],
    compositions: Optional[Sequence[Sequence[float]]] = None,
    max_batches: int = 50,
    device: str = "cpu",
) -> int:
    """Write ``target_blocks_dir``: ``source_blocks_dir`` with the descendants' BatchNorm
    statistics re-estimated (:func:`recalibrate_batchnorm`, every whole level by default).
    Returns the batches used."""
    from .composition_retrainer import _model_output

    store = block_manager.open_store(source_blocks_dir)
    students = {(b, s): block_manager.load_descendant(store, b, s).to(device)
                for b in block_manager.block_names for s in block_manager.block_sparsity if s > 0}
    net = SwitchableModel(block_manager, students)
    try:
        batches = recalibrate_batchnorm(net, compositions or level_compositions(block_manager), loader,
                                        lambda model, batch: _model_output(model_manager, model, batch, device),
                                        max_batches)
    finally:
        net.restore()
    store.write_copy(target_blocks_dir, {k: m.state_dict() for k, m in students.items()},
                     {"batchnorm_recalibrated": batches})
    return batches
