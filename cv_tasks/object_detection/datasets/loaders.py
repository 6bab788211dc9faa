"""Detection batches: ``(list of images, list of targets)``, since images differ in size and box count."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from cv_tasks.image_classification.datasets.loaders import random_subset

__all__ = ["detection_collate", "detection_dataloaders"]


def detection_collate(batch: Sequence[Tuple[Any, Dict[str, Any]]]) -> Tuple[List[Any], List[Dict[str, Any]]]:
    """``[(image, target), ...]`` -> ``([images], [targets])``, the form torchvision detectors take."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def detection_dataloaders(train_set: Dataset, test_set: Dataset, batch_size: int = 2, num_workers: int = 0,
                          train_subset: Optional[int] = None, test_subset: Optional[int] = None,
                          seed: int = 0) -> Tuple[DataLoader, DataLoader]:
    """(train, test) loaders with :func:`detection_collate`; the train loader shuffles reproducibly."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    common: Dict[str, Any] = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=detection_collate)
    train = DataLoader(random_subset(train_set, train_subset, seed), shuffle=True,
                       generator=torch.Generator().manual_seed(seed), **common)
    test = DataLoader(random_subset(test_set, test_subset, seed + 1), shuffle=False, **common)
    return train, test
