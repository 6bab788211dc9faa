"""The one-class protocol on a classification data set: one class is normal, the rest anomalous.

Training data holds the normal class only; test data holds every class, labelled 0
(normal) or 1 (anomalous). Items are ``(image, label)`` with images in [0, 1]. Two
sources: scikit-learn's handwritten digits (real images shipped with scikit-learn, no
download) and an ImageFolder layout of your own (``<dir>/<class>/<image>``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from torch.utils.data import DataLoader, Dataset, Subset

from cv_tasks.anomaly_detection.errors import DatasetNotFoundError, UndefinedMetricError
from cv_tasks.image_classification.datasets.loaders import make_dataloaders

__all__ = ["OneClassDataset", "digits_one_class_dataloaders", "imagefolder_one_class_dataloaders"]

PathLike = Union[str, Path]


class OneClassDataset(Dataset):
    """``(image, 0 or 1)`` items from a data set of ``(image, class)`` with a ``targets`` list.

    ``normal_only`` keeps the normal class alone (the training split).
    """

    def __init__(self, dataset: Any, normal_classes: Sequence[int], normal_only: bool = False) -> None:
        targets = getattr(dataset, "targets", None)
        if targets is None:  # read every item once; data sets with a targets list avoid loading images
            targets = [dataset[i][1] for i in range(len(dataset))]
        targets = [int(t) for t in targets]
        normal = {int(c) for c in normal_classes}
        if not normal & set(targets):
            raise ValueError(f"normal classes {sorted(normal)} do not occur in the data (classes {sorted(set(targets))})")
        self.dataset = dataset
        self.indices = [i for i, t in enumerate(targets) if not normal_only or t in normal]
        self.labels = [0 if targets[i] in normal else 1 for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        return self.dataset[self.indices[index]][0], self.labels[index]


def _check_test(test: OneClassDataset, what: str) -> None:
    if len(set(test.labels)) < 2:
        raise UndefinedMetricError(f"{what} has a single class, so AUROC is undefined: it needs normal and other classes")


def digits_one_class_dataloaders(
    normal_class: int = 3,
    batch_size: int = 64,
    image_size: int = 32,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
    seed: int = 0,
) -> Tuple[DataLoader, DataLoader]:
    """(train, test) loaders of scikit-learn's digits: ``normal_class`` normal, the other 9 digits anomalous.

    About 145 training images (the normal digit) and 359 test images (36 normal).
    """
    from cv_tasks.image_classification.datasets.digits import Digits

    if normal_class not in range(10):
        raise ValueError(f"normal_class must be a digit 0-9, got {normal_class}")
    train = OneClassDataset(Digits(train=True, seed=seed, image_size=image_size), [normal_class], normal_only=True)
    test = OneClassDataset(Digits(train=False, seed=seed, image_size=image_size), [normal_class])
    loaders = make_dataloaders(train, test, batch_size, 0, train_subset, test_subset, seed)
    subset = loaders[1].dataset  # a random Subset of `test` when test_subset is given
    labels = [test.labels[i] for i in subset.indices] if isinstance(subset, Subset) else test.labels
    if len(set(labels)) < 2:
        raise UndefinedMetricError(
            f"test_subset={test_subset} drew a single class from the digits test set, so AUROC is "
            "undefined; use a larger test_subset (36 of the 359 test digits are normal) or another seed"
        )
    return loaders


def imagefolder_one_class_dataloaders(
    train_dir: PathLike,
    test_dir: PathLike,
    normal_class: str,
    image_size: int = 64,
    batch_size: int = 32,
    seed: int = 0,
) -> Tuple[DataLoader, DataLoader]:
    """(train, test) loaders over ``<dir>/<class>/<image>`` folders; ``normal_class`` names the normal folder.

    Images are resized to ``image_size`` x ``image_size`` and kept in [0, 1]. Needs torchvision.
    """
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    folders: List[Any] = []
    for d in (train_dir, test_dir):
        path = Path(d).expanduser()
        if not path.is_dir():
            raise DatasetNotFoundError(f"{path} is not a directory: put images in {path}/<class name>/")
        try:
            folders.append(datasets.ImageFolder(str(path), transform=tf))
        except FileNotFoundError as exc:
            raise DatasetNotFoundError(f"{path} has no images in class sub-folders ({exc})") from exc
    train_set, test_set = folders
    if normal_class not in train_set.classes:
        raise ValueError(f"normal class {normal_class!r} is not a folder of {train_dir}; classes: {train_set.classes}")
    if normal_class not in test_set.classes:
        raise ValueError(f"normal class {normal_class!r} is not a folder of {test_dir}; classes: {test_set.classes}")
    train = OneClassDataset(train_set, [train_set.class_to_idx[normal_class]], normal_only=True)
    test = OneClassDataset(test_set, [test_set.class_to_idx[normal_class]])
    _check_test(test, f"the test folder {test_dir}")
    return make_dataloaders(train, test, batch_size, 0, None, None, seed)
