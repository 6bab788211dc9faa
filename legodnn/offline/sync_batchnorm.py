"""BatchNorm statistics over every rank's shard: ``sync_batchnorm=True`` of the retraining stages.

Data-parallel training (:mod:`~legodnn.offline.distributed`) averages gradients, but a
descendant's BatchNorm in training mode normalises with its own rank's batch: with N
ranks, statistics over B/N samples instead of B, so the result differs from one
process's (as DDP without ``SyncBatchNorm``). :func:`convert_batchnorm` replaces the
BatchNorm layers of the descendants by :class:`GlobalBatchNorm`, which normalises with
the mean and variance of the whole step's batch, summed over the ranks.

Why not ``torch.nn.SyncBatchNorm``: it refuses CPU tensors ("SyncBatchNorm expected
input tensor to be on GPU", torch 2.x), so it cannot run under gloo on CPUs, which is
where legodnn's distributed runs are tested. :class:`GlobalBatchNorm` works on any
device and backend: two small all-reduces per layer and forward (the sample counts and
sums, then the squared deviations from the global mean, the numerically stable order),
and their transposes in the backward pass, so the gradients are those of the whole
batch. It keeps BatchNorm's parameters, buffers and state-dict names, so checkpoints
and stores are unchanged.

In evaluation mode, and with one process, it is exactly BatchNorm. Every rank must run
the same layers in the same order, forward and backward (the stages make sure of it:
see ``BlockRetrainer``'s handling of a block that saw no data on one rank).
"""

from __future__ import annotations

from typing import Any, Iterable, List, Tuple

import torch
from torch import nn

from ..errors import LegoDNNError
from .distributed import Ranks, _dist

__all__ = ["GlobalBatchNorm", "convert_batchnorm", "count_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose backward sums the gradients over the ranks (its transpose):
    each rank's loss depends on every rank's contribution to the statistics."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:  # type: ignore[override]
        ctx.ranks = ranks
        out = tensor.detach().clone().contiguous()
        with ranks._collective("summing BatchNorm statistics over the ranks"):
            _dist().all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:  # type: ignore[override]
        out = grad.detach().clone().contiguous()
        with ctx.ranks._collective("summing BatchNorm gradients over the ranks"):
            _dist().all_reduce(out)
        return out, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of every rank's samples together.

    Built by :func:`convert_batchnorm` from an ``nn.BatchNorm1d/2d/3d``, sharing its
    parameters and buffers (an optimizer built before the conversion keeps working).
    Normalises with the biased variance and updates the running statistics with the
    unbiased one over the global count, as BatchNorm does over one batch.
    """

    def __init__(self, source: nn.modules.batchnorm._BatchNorm, ranks: Ranks) -> None:
        super().__init__(source.num_features, source.eps, source.momentum, source.affine,
                         source.track_running_stats, device="meta")
        self.ranks = ranks
        # the source's own tensors, not copies: optimizers and checkpoints refer to them
        self.weight, self.bias = source.weight, source.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(self, name, getattr(source, name))
        self.train(source.training)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise LegoDNNError(f"GlobalBatchNorm expects an input of at least 2 dimensions (N, C, ...), got "
                               f"{input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.ranks.distributed):
            return super().forward(input)  # evaluation (no collective: ranks' batches differ) or one process
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average, as BatchNorm's
                factor = 1.0 / float(self.num_batches_tracked)
        return self._global_norm(input, factor)

    def _global_norm(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        dims = [0] + list(range(2, x.dim()))
        xs = x.to(acc)
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        local_n = float(x.numel() // max(1, x.shape[1]))
        # pass 1: counts and sums -> the global mean (an empty shard contributes zeros)
        first = torch.cat([xs.sum(dims), xs.new_tensor([local_n])])
        first = _AllReduceSum.apply(first, self.ranks)
        n = float(first[-1].detach())
        if n <= 1:
            raise LegoDNNError(f"BatchNorm in training needs more than 1 value per channel over all ranks, got "
                               f"{int(n)} (input {tuple(x.shape)} on rank {self.ranks.rank})")
        mean = first[:-1] / n
        # pass 2: squared deviations from the global mean -> the global (biased) variance
        centred = xs - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), self.ranks) / n
        if self.training and self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.to(acc).view(shape) + self.bias.to(acc).view(shape)
        return out.to(x.dtype)


def _is_plain_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(
        m, (GlobalBatchNorm, nn.SyncBatchNorm)) and type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def convert_batchnorm(modules: Iterable[nn.Module], ranks: Ranks) -> int:
    """Replace, in place, the BatchNorm layers inside ``modules`` by :class:`GlobalBatchNorm`;
    returns how many were replaced.

    Nothing changes with one process (``ranks`` not distributed): its batch statistics
    are global already, and the stages stay bit for bit what they were. Layers converted
    already, ``SyncBatchNorm`` and subclasses of BatchNorm (which may override its
    forward) are left alone. A module that is itself a BatchNorm (not inside a parent)
    cannot be replaced in place and is refused.
    """
    if not ranks.distributed:
        return 0
    count = 0
    for module in modules:
        if _is_plain_batchnorm(module):
            raise LegoDNNError("sync_batchnorm=True cannot convert a descendant that is a single BatchNorm layer "
                               "(it has no parent to replace it in)")
        todo: List[Tuple[nn.Module, str, nn.Module]] = []
        for parent in module.modules():
            for name, child in parent.named_children():
                if _is_plain_batchnorm(child):
                    todo.append((parent, name, child))
        for parent, name, child in todo:
            setattr(parent, name, GlobalBatchNorm(child, ranks))  # type: ignore[arg-type]
            count += 1
    return count


def count_batchnorm(modules: Iterable[nn.Module]) -> int:
    """BatchNorm layers (converted or not) inside ``modules``; for messages and tests."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for module in modules for m in module.modules())
