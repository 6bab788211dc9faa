"""Batching for segmentation: a collate that pads, and ready-made VOC/COCO loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cv_tasks.image_classification.datasets.loaders import random_subset
from cv_tasks.semantic_segmentation.datasets.coco import COCOSegmentation
from cv_tasks.semantic_segmentation.datasets.transforms import segmentation_transforms
from cv_tasks.semantic_segmentation.datasets.voc import VOC_CLASSES, VOCSegmentation
from cv_tasks.semantic_segmentation.metrics import IGNORE_INDEX

__all__ = ["coco_dataloaders", "segmentation_collate", "segmentation_dataloaders", "voc_dataloaders"]


def segmentation_collate(batch: Sequence[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    """Stack ``(image, mask)`` pairs; pairs of different sizes are padded at the bottom
    right to the largest (image with 0, mask with the ignore label, so padding is never
    scored), which lets evaluation run at each image's own size."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images, masks = zip(*batch)
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    out_images = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    out_masks = torch.full((len(masks), h, w), IGNORE_INDEX, dtype=torch.int64)
    for i, (image, mask) in enumerate(zip(images, masks)):
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            raise ValueError(f"sample {i}: image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
        out_images[i, :, : image.shape[-2], : image.shape[-1]] = image
        out_masks[i, : mask.shape[0], : mask.shape[1]] = mask
    return out_images, out_masks


def segmentation_dataloaders(train_set: Dataset, test_set: Dataset, batch_size: int, num_workers: int = 0,
                             train_subset: Optional[int] = None, test_subset: Optional[int] = None,
                             seed: int = 0) -> Tuple[DataLoader, DataLoader]:
    """(train, test) loaders with :func:`segmentation_collate`; the train loader shuffles
    reproducibly from ``seed``, and drops a last batch of one (BatchNorm after global
    pooling, as in ASPP, cannot train on it) unless it is the only one. ``*_subset`` keep that many random samples, for quick runs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    train_set = random_subset(train_set, train_subset, seed)
    common = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=segmentation_collate,
                  persistent_workers=num_workers > 0)
    train = DataLoader(train_set, shuffle=True, generator=torch.Generator().manual_seed(seed),
                       drop_last=len(train_set) % batch_size == 1 < len(train_set),  # type: ignore[arg-type]
                       **common)
    test = DataLoader(random_subset(test_set, test_subset, seed + 1), shuffle=False, **common)
    return train, test


def voc_dataloaders(root: str | Path, batch_size: int, size: int | Sequence[int] = 128,
                    num_classes: int = len(VOC_CLASSES), **kwargs: Any) -> Tuple[DataLoader, DataLoader]:
    """Loaders of the VOC ``train`` and ``val`` splits at ``size`` (see
    :func:`segmentation_transforms`); ``kwargs`` go to :func:`segmentation_dataloaders`."""
    train = VOCSegmentation(root, "train", num_classes, segmentation_transforms(size, train=True))
    val = VOCSegmentation(root, "val", num_classes, segmentation_transforms(size, train=False))
    return segmentation_dataloaders(train, val, batch_size, **kwargs)


def coco_dataloaders(image_dir: str | Path, annotation_file: str | Path, batch_size: int,
                     size: int | Sequence[int] = 128, categories: Optional[Sequence[int]] = None,
                     test_fraction: float = 0.25, seed: int = 0, verbose: bool = False,
                     **kwargs: Any) -> Tuple[DataLoader, DataLoader, List[str]]:
    """Train/test loaders from one COCO folder, split by image (``test_fraction`` of them
    held out, chosen by ``seed``), and the class names (label order)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train = COCOSegmentation(image_dir, annotation_file, categories, segmentation_transforms(size, train=True),
                             verbose=verbose)
    test = COCOSegmentation(image_dir, annotation_file, categories, segmentation_transforms(size, train=False),
                            verbose=verbose)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, int(round(test_fraction * len(order))))
    if n_test >= len(order):
        raise ValueError(f"{len(order)} images are too few to hold out {test_fraction:.0%} and still train")
    test_ids, train_ids = sorted(order[:n_test]), sorted(order[n_test:])
    loaders = segmentation_dataloaders(torch.utils.data.Subset(train, train_ids),
                                       torch.utils.data.Subset(test, test_ids), batch_size, seed=seed, **kwargs)
    return (*loaders, train.class_names)
