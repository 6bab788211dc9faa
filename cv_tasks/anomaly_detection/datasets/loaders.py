"""Train and test loaders for one MVTec-AD-layout category."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

from torch.utils.data import DataLoader

from cv_tasks.anomaly_detection.datasets.mvtec import MVTecAD
from cv_tasks.image_classification.datasets.loaders import make_dataloaders

__all__ = ["mvtec_dataloaders"]


def mvtec_dataloaders(
    root: Union[str, Path],
    category: Optional[str] = None,
    image_size: int = 64,
    batch_size: int = 16,
    num_workers: int = 0,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
    seed: int = 0,
) -> Tuple[DataLoader, DataLoader]:
    """(train, test) loaders: ``train/good`` shuffled; every test image with its label and mask.

    Batches are ``(images, labels, masks)``; the default collate stacks them.
    """
    train = MVTecAD(root, category, "train", image_size)
    test = MVTecAD(root, category, "test", image_size)
    return make_dataloaders(train, test, batch_size, num_workers, train_subset, test_subset, seed)
