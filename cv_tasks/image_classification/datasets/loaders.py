"""Train and test ``DataLoader``s from two data sets, optionally on random subsets."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["make_dataloaders", "random_subset"]


def random_subset(dataset: Dataset, size: Optional[int], seed: int = 0) -> Dataset:
    """``size`` samples of ``dataset`` drawn without replacement (all of it for ``None``)."""
    n = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= n:
        return dataset
    if size < 1:
        raise ValueError(f"a subset needs at least one sample, got {size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]
    return Subset(dataset, sorted(order.tolist()))


def make_dataloaders(
    train_set: Dataset,
    test_set: Dataset,
    batch_size: int,
    num_workers: int = 0,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
    seed: int = 0,
    pin_memory: bool = False,
) -> Tuple[DataLoader, DataLoader]:
    """(train, test) loaders: the train loader shuffles (reproducibly, from ``seed``).

    ``train_subset`` / ``test_subset`` keep that many random samples (``seed`` picks them),
    for quick runs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    common = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                  persistent_workers=num_workers > 0)
    train = DataLoader(
        random_subset(train_set, train_subset, seed),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        **common,
    )
    test = DataLoader(random_subset(test_set, test_subset, seed + 1), shuffle=False, **common)
    return train, test
