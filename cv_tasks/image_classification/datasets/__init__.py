"""Data sets for image classification: CIFAR-10/100 from disk, digits without download, your own folders.

Importing this needs torch and numpy only; torchvision (downloads, ``ImageFolder``) and
scikit-learn (digits) are imported when used.
"""

from cv_tasks.image_classification.datasets.cifar import (
    CIFAR10,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100,
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar10_dataloaders,
    cifar100_dataloaders,
    cifar_transforms,
)
from cv_tasks.image_classification.datasets.digits import (
    DIGITS_MEAN,
    DIGITS_STD,
    Digits,
    digits_dataloaders,
    digits_transforms,
    load_digits_images,
)
from cv_tasks.image_classification.datasets.errors import DatasetNotFoundError, UnsafePickleError
from cv_tasks.image_classification.datasets.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagefolder_dataloaders,
)
from cv_tasks.image_classification.datasets.loaders import make_dataloaders, random_subset
from cv_tasks.image_classification.datasets.safe_pickle import RestrictedUnpickler, load_pickle

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "DatasetNotFoundError",
    "Digits",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "cifar100_dataloaders",
    "cifar10_dataloaders",
    "cifar_transforms",
    "digits_dataloaders",
    "digits_transforms",
    "imagefolder_dataloaders",
    "load_digits_images",
    "load_pickle",
    "make_dataloaders",
    "random_subset",
]
