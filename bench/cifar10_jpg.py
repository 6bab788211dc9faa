"""All of CIFAR-10 from the JPEG archive in ``../shared/data``, held in memory as uint8 tensors.

Decoding 60,000 JPEGs takes about a minute with Pillow, so the decoded arrays are cached
next to the extracted archive (``<cache>/cifar10-{train,test}.npz``, plain arrays read
with ``allow_pickle=False``). Augmentation (4-pixel padded random crop, horizontal
flip) runs on whole batches of tensors, so a training epoch costs no image decoding.
Used by the benchmarks only: tests must not depend on ``../shared``.
"""

from __future__ import annotations

import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 (N, 3, 32, 32), ``labels`` int64 (N,)."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset_indices(self, n: Optional[int], seed: int = 0) -> Tensor:
        """Indices of a class-balanced random subset of ``n`` images (all when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return torch.arange(len(self))
        g = torch.Generator().manual_seed(seed)
        per_class = n // len(CLASSES)
        keep = []
        for c in range(len(CLASSES)):
            idx = (self.labels == c).nonzero().flatten()
            keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
        return torch.cat(keep).sort().values

    def subset(self, n: Optional[int], seed: int = 0) -> "Split":
        """A class-balanced random subset of ``n`` images."""
        return self.take(self.subset_indices(n, seed))

    def take(self, indices: Tensor) -> "Split":
        return Split(self.images[indices], self.labels[indices])

    def complement(self, indices: Tensor) -> Tensor:
        """The indices not in ``indices``, in order."""
        mask = torch.ones(len(self), dtype=torch.bool)
        mask[indices] = False
        return mask.nonzero().flatten()


def _decode(root: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for file in sorted((root / split / name).iterdir()):
            with Image.open(file) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_split(split: str, cache: Path, archive: Path = DEFAULT_ARCHIVE) -> Split:
    """The ``train`` or ``test`` split, decoded once into ``cache`` and read from there after."""
    cache = Path(cache)
    cached = cache / f"cifar10-{split}.npz"
    if not cached.is_file():
        if not (cache / split).is_dir():
            if not Path(archive).is_file():
                raise FileNotFoundError(f"no CIFAR-10 archive at {archive}; pass --archive")
            cache.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive) as tar:
                tar.extractall(cache, filter="data")
        images, labels = _decode(cache, split)
        tmp = cache / f".{cached.name}.{uuid.uuid4().hex[:8]}.npz"
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cached)
    with np.load(cached, allow_pickle=False) as data:
        return Split(torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]))


def normalize(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) to float, normalised by the CIFAR-10 mean and std."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - mean) / std


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random 32x32 crops of the 4-pixel zero-padded images and random horizontal flips."""
    n = len(images)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(32)).view(n, 1, 32, 1).expand(n, 3, 32, 40)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(32)).view(n, 1, 1, 32).expand(n, 3, 32, 32)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


class Batches:
    """An iterable of (normalised images, labels) batches with a length, like a DataLoader.

    ``train=True`` shuffles and augments, reseeded per epoch from ``seed`` so that runs
    repeat exactly; ``train=False`` yields the images in order, unchanged.
    """

    def __init__(self, split: Split, batch_size: int, train: bool, seed: int = 0) -> None:
        self.split, self.batch_size, self.train, self.seed = split, batch_size, train, seed
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        n = len(self.split)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.split.images[idx]
            if self.train:
                images = augment(images, g)
            yield normalize(images), self.split.labels[idx]
