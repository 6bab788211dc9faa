"""Split held-out data off a training loader, for picking the best epoch."""

from __future__ import annotations

from typing import Any, Iterable, Tuple

import torch
from torch.utils.data import DataLoader, RandomSampler, Subset

from ..errors import LegoDNNError

__all__ = ["split_holdout"]


def split_holdout(
    loader: Iterable[Any], fraction: float = 0.1, max_samples: int = 1000, seed: int = 0
) -> Tuple[Iterable[Any], Iterable[Any]]:
    """(train, held-out) loaders: a fixed random ``fraction`` of the samples (at most
    ``max_samples``) for a map-style ``DataLoader``, the last batches for a list of batches."""
    if isinstance(loader, DataLoader) and loader.batch_size is not None and hasattr(loader.dataset, "__len__"):
        n = len(loader.dataset)
        k = min(max_samples, max(1, int(n * fraction)))
        if n < 2:
            raise LegoDNNError(f"train_loader has {n} samples: too few to hold some out; pass val_loader")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        common = dict(
            batch_size=loader.batch_size,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
        )
        train = DataLoader(
            Subset(loader.dataset, order[k:]),
            shuffle=isinstance(loader.sampler, RandomSampler),
            drop_last=loader.drop_last,
            **common,
        )
        held = DataLoader(Subset(loader.dataset, order[:k]), shuffle=False, **common)
        return train, held
    if isinstance(loader, (list, tuple)):
        if len(loader) < 2:
            raise LegoDNNError("train_loader has fewer than 2 batches: too few to hold some out; pass val_loader")
        k = max(1, round(len(loader) * fraction))
        return loader[:-k], loader[-k:]
    raise LegoDNNError(
        f"cannot hold out data from a {type(loader).__name__}; pass val_loader (held-out batches) explicitly"
    )
