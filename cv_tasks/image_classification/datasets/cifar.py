"""CIFAR-10 and CIFAR-100 from their standard on-disk Python format, read without unpickling code.

The files are those of ``cifar-10-python.tar.gz`` and ``cifar-100-python.tar.gz``
(https://www.cs.toronto.edu/~kriz/cifar.html), extracted under a root directory::

    <root>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    <root>/cifar-100-python/train, test, meta

They are pickles; :mod:`safe_pickle` reads them, so a tampered file cannot run code.
``download=True`` fetches and extracts the archive with torchvision's downloader (the
only use of torchvision here, imported then).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cv_tasks.image_classification.datasets.errors import DatasetNotFoundError
from cv_tasks.image_classification.datasets.loaders import make_dataloaders
from cv_tasks.image_classification.datasets.safe_pickle import load_pickle
from cv_tasks.image_classification.datasets.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
)

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "cifar10_dataloaders",
    "cifar100_dataloaders",
    "cifar_transforms",
]

PathLike = Union[str, Path]
Transform = Callable[[Tensor], Tensor]

# Per-channel mean and standard deviation of the training images, in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class _Layout:
    """Where one CIFAR variant's files are and what their dicts hold."""

    title: str
    folder: str
    archive: str
    url: str
    md5: str
    train_files: Tuple[str, ...]
    test_files: Tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str


_CIFAR10 = _Layout(
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
)
_CIFAR100 = _Layout(
    title="CIFAR-100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
)


def _str_keys(d: Any, path: Path) -> Dict[str, Any]:
    """The dict with its keys as ``str``: Python 3 pickles of CIFAR have ``bytes`` keys."""
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a {type(d).__name__}, not the dict of a CIFAR batch; extract the data again")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _CifarBase(Dataset):
    """A CIFAR split in memory as uint8 ``(N, 3, 32, 32)``; items are ``(image, label)``.

    ``transform`` gets each image as a float tensor ``(3, 32, 32)`` in [0, 1] (so
    torchvision's tensor transforms work too); ``target_transform`` gets the label.
    """

    layout: _Layout

    def __init__(
        self,
        root: PathLike,
        train: bool = True,
        transform: Optional[Transform] = None,
        target_transform: Optional[Callable[[int], Any]] = None,
        download: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        folder = self._folder()
        if folder is None and download:
            self.download(self.root)
            folder = self._folder()
        if folder is None:
            raise DatasetNotFoundError(self._missing_message())
        self.folder = folder
        images: List[np.ndarray] = []
        targets: List[int] = []
        for name in self.layout.train_files if train else self.layout.test_files:
            data, labels = self._read_batch(folder / name)
            images.append(data)
            targets.extend(labels)
        self.data = torch.from_numpy(np.concatenate(images)).view(-1, 3, 32, 32)
        self.targets = targets
        meta = _str_keys(load_pickle(folder / self.layout.meta_file), folder / self.layout.meta_file)
        self.classes = [_text(c) for c in meta.get(self.layout.names_key, [])]

    # -- files --------------------------------------------------------------
    def _folder(self) -> Optional[Path]:
        """The folder holding every file: ``root/<folder>``, or ``root`` itself if it is that folder."""
        needed = (*self.layout.train_files, *self.layout.test_files, self.layout.meta_file)
        for candidate in (self.root / self.layout.folder, self.root):
            if all((candidate / f).is_file() for f in needed):
                return candidate
        return None

    def _missing_message(self) -> str:
        lay = self.layout
        folder = self.root / lay.folder
        needed = (*lay.train_files, *lay.test_files, lay.meta_file)
        missing = [f for f in needed if not (folder / f).is_file()]
        what = "is missing" if len(missing) == len(needed) else f"lacks {', '.join(missing)}"
        return (
            f"{lay.title} not found: {folder} {what}. Put {lay.archive}'s extracted folder {lay.folder} "
            f"(files {', '.join(needed)}) in {self.root}; get the archive from {lay.url}, "
            "or pass download=True where the network allows"
        )

    @classmethod
    def download(cls, root: PathLike) -> None:
        """Download and extract the archive into ``root`` (needs torchvision and the network)."""
        try:
            from torchvision.datasets.utils import download_and_extract_archive
        except ImportError as exc:
            raise ImportError(
                f"downloading {cls.layout.title} needs torchvision (pip install 'legodnn[tasks]'); or put "
                f"{cls.layout.archive}'s extracted folder {cls.layout.folder} in {root} yourself"
            ) from exc
        download_and_extract_archive(cls.layout.url, str(root), filename=cls.layout.archive, md5=cls.layout.md5)

    def _read_batch(self, path: Path) -> Tuple[np.ndarray, List[int]]:
        batch = _str_keys(load_pickle(path), path)
        key = self.layout.label_key
        if "data" not in batch or key not in batch:
            raise ValueError(
                f"{path} has keys {sorted(batch)}, not 'data' and {key!r}: it is not a {self.layout.title} batch "
                f"(is it the other CIFAR?); extract {self.layout.archive} again"
            )
        data = np.asarray(batch["data"])
        labels = [int(v) for v in batch[key]]
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
            raise ValueError(
                f"{path}: 'data' is {data.dtype} {data.shape} with {len(labels)} labels; a {self.layout.title} batch "
                "holds uint8 (N, 3072) and N labels. Extract the data set again"
            )
        return data, labels

    # -- Dataset ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        image = self.data[index].float().div_(255)
        target: Any = self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"{type(self).__name__}({str(self.folder)!r}, {split}, {len(self)} images, {len(self.classes)} classes)"


class CIFAR10(_CifarBase):
    """CIFAR-10: 50,000 training and 10,000 test images of 10 classes, 32x32 RGB."""

    layout = _CIFAR10


class CIFAR100(_CifarBase):
    """CIFAR-100: 50,000 training and 10,000 test images of 100 classes (the fine labels), 32x32 RGB."""

    layout = _CIFAR100


def cifar_transforms(mean: Tuple[float, ...], std: Tuple[float, ...], train: bool) -> Transform:
    """The standard CIFAR pipeline: random 32x32 crop of the 4-pixel padded image and a
    horizontal flip for training, then normalisation by the training set's mean and std."""
    normalize = Normalize(mean, std)
    if not train:
        return normalize
    return Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), normalize])


def _dataloaders(
    cls: type,
    mean: Tuple[float, ...],
    std: Tuple[float, ...],
    root: PathLike,
    batch_size: int,
    num_workers: int,
    train_subset: Optional[int],
    test_subset: Optional[int],
    seed: int,
    download: bool,
) -> Tuple[DataLoader, DataLoader]:
    train = cls(root, train=True, transform=cifar_transforms(mean, std, train=True), download=download)
    test = cls(root, train=False, transform=cifar_transforms(mean, std, train=False))
    return make_dataloaders(train, test, batch_size, num_workers, train_subset, test_subset, seed)


def cifar10_dataloaders(
    root: PathLike,
    batch_size: int = 128,
    num_workers: int = 0,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
    seed: int = 0,
    download: bool = False,
) -> Tuple[DataLoader, DataLoader]:
    """(train, test) loaders of CIFAR-10 under ``root``: augmented, normalised, train shuffled.

    ``train_subset`` / ``test_subset`` keep that many random samples, for quick runs.
    """
    return _dataloaders(CIFAR10, CIFAR10_MEAN, CIFAR10_STD, root, batch_size, num_workers, train_subset,
                        test_subset, seed, download)


def cifar100_dataloaders(
    root: PathLike,
    batch_size: int = 128,
    num_workers: int = 0,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
    seed: int = 0,
    download: bool = False,
) -> Tuple[DataLoader, DataLoader]:
    """(train, test) loaders of CIFAR-100 (fine labels) under ``root``; as :func:`cifar10_dataloaders`."""
    return _dataloaders(CIFAR100, CIFAR100_MEAN, CIFAR100_STD, root, batch_size, num_workers, train_subset,
                        test_subset, seed, download)
