"""Your own images: one folder per class, read with torchvision's ``ImageFolder``.

::

    train_dir/cat/001.png   train_dir/dog/017.jpg   ...
    test_dir/cat/101.png    test_dir/dog/230.jpg    ...

torchvision (and Pillow) are optional dependencies (``pip install 'legodnn[tasks]'``),
imported when the loaders are made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

from torch.utils.data import DataLoader

from cv_tasks.image_classification.datasets.errors import DatasetNotFoundError
from cv_tasks.image_classification.datasets.loaders import make_dataloaders

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "imagefolder_dataloaders"]

PathLike = Union[str, Path]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _torchvision() -> Any:
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError("imagefolder_dataloaders needs torchvision and Pillow: pip install 'legodnn[tasks]'") from exc
    return torchvision


def _folder(torchvision: Any, root: PathLike, transform: Any, what: str) -> Any:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"{what} {path} is not a directory: put the images there, one sub-folder per class "
            f"({path}/<class name>/<image>.png)"
        )
    try:
        return torchvision.datasets.ImageFolder(str(path), transform=transform)
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(
            f"{what} {path} has no images in class sub-folders ({exc}); put them in {path}/<class name>/"
        ) from exc


def imagefolder_dataloaders(
    train_dir: PathLike,
    test_dir: PathLike,
    image_size: int,
    batch_size: int = 64,
    num_workers: int = 0,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
    seed: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tuple[DataLoader, DataLoader]:
    """(train, test) loaders of RGB images, ``image_size`` x ``image_size``, normalised by ``mean``/``std``.

    Training images get a random resized crop (60-100% of the area) and a horizontal flip;
    test images are resized to ``image_size / 0.875`` on the short side and centre-cropped
    (the usual ImageNet evaluation). Both folders must have the same class sub-folders, so
    label ``i`` means the same class in each (``loader.dataset.classes`` lists them).
    """
    tv = _torchvision()
    t = tv.transforms
    to_tensor = [t.ToTensor(), t.Normalize(list(mean), list(std))]
    train_tf = t.Compose([t.RandomResizedCrop(image_size, scale=(0.6, 1.0)), t.RandomHorizontalFlip(), *to_tensor])
    test_tf = t.Compose([t.Resize(round(image_size / 0.875)), t.CenterCrop(image_size), *to_tensor])
    train = _folder(tv, train_dir, train_tf, "train_dir")
    test = _folder(tv, test_dir, test_tf, "test_dir")
    if train.classes != test.classes:
        raise ValueError(
            f"train_dir has classes {train.classes} but test_dir has {test.classes}: give both the same class "
            "sub-folders, so each label means one class"
        )
    return make_dataloaders(train, test, batch_size, num_workers, train_subset, test_subset, seed)
