"""Handwritten digits that need no download: scikit-learn's ``load_digits``, as 32x32 RGB.

The 1,797 images (8x8 pixels, 16 grey levels, classes 0-9, about 180 each) are the
test set of the UCI "Optical Recognition of Handwritten Digits" data and ship inside the
scikit-learn wheel. Upsampled to 32x32 (bilinear) and repeated over 3 channels, they fit
every CIFAR model unchanged: a real data set for demos and tests on a machine without
network. scikit-learn is an optional dependency (``pip install 'legodnn[demo]'``),
imported when the data is first loaded.

There is no official split: a fixed random ``test_fraction`` of each class (20% by
default) is the test set, the same for a given ``seed`` on every machine.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cv_tasks.image_classification.datasets.loaders import make_dataloaders
from cv_tasks.image_classification.datasets.transforms import Compose, Normalize, RandomCrop

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "Digits", "digits_dataloaders", "digits_transforms", "load_digits_images"]

Transform = Callable[[Tensor], Tensor]

# Mean and std of all 1,797 images after the 32x32 bilinear upsampling (the same in each channel).
DIGITS_MEAN = (0.3053,) * 3
DIGITS_STD = (0.3236,) * 3


def load_digits_images(image_size: int = 32) -> Tuple[Tensor, Tensor]:
    """All 1,797 digits as float ``(N, 3, image_size, image_size)`` in [0, 1] and int64 labels."""
    images, labels = _load(image_size)
    return images.clone(), labels.clone()


@functools.lru_cache(maxsize=2)
def _load(image_size: int) -> Tuple[Tensor, Tensor]:
    """Loaded and resized once per process (the train and test splits share it); never modified."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "the digits data set comes with scikit-learn: pip install scikit-learn (or 'legodnn[demo]')"
        ) from exc
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous(), torch.as_tensor(bunch.target, dtype=torch.long)


def _split(labels: Tensor, test_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Stratified (train, test) indices: ``test_fraction`` of every class, chosen by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    train: List[int] = []
    test: List[int] = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        k = round(len(idx) * test_fraction)
        test.extend(idx[:k])
        train.extend(idx[k:])
    return sorted(train), sorted(test)


class Digits(Dataset):
    """One split of the digits; items are ``(image, label)``, the image ``(3, 32, 32)``.

    ``transform`` gets each image as a float tensor in [0, 1].
    """

    classes = [str(i) for i in range(10)]

    def __init__(
        self,
        train: bool = True,
        transform: Optional[Transform] = None,
        target_transform: Optional[Callable[[int], Any]] = None,
        test_fraction: float = 0.2,
        seed: int = 0,
        image_size: int = 32,
    ) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        images, labels = _load(image_size)
        train_idx, test_idx = _split(labels, test_fraction, seed)
        idx = torch.tensor(train_idx if train else test_idx)
        self.train = train
        self.data = images[idx]
        self.targets = labels[idx].tolist()
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        image = self.data[index]
        target: Any = self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __repr__(self) -> str:
        return f"Digits({'train' if self.train else 'test'}, {len(self)} images, 10 classes)"


def digits_transforms(train: bool) -> Transform:
    """Random shifts of up to 4 pixels (one original pixel) for training, then normalisation.

    No flips: a mirrored digit is another shape (or no digit at all).
    """
    normalize = Normalize(DIGITS_MEAN, DIGITS_STD)
    return Compose([RandomCrop(32, padding=4), normalize]) if train else normalize


def digits_dataloaders(
    batch_size: int = 64,
    num_workers: int = 0,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Tuple[DataLoader, DataLoader]:
    """(train, test) loaders of the digits: 1,438 training and 359 test images by default."""
    train = Digits(train=True, transform=digits_transforms(train=True), test_fraction=test_fraction, seed=seed)
    test = Digits(train=False, transform=digits_transforms(train=False), test_fraction=test_fraction, seed=seed)
    return make_dataloaders(train, test, batch_size, num_workers, train_subset, test_subset, seed)
