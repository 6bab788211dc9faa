"""``--data``: the images retraining and profiling read, named in one word or one path.

``digits`` is scikit-learn's handwritten digits as 32x32 RGB (what the demos use when
CIFAR-10 is not on disk: no download, no files), ``cifar10:ROOT`` reads CIFAR-10 from
``ROOT/cifar-10-batches-py``, and any other value is an ImageFolder path: ``PATH/train``
and ``PATH/test`` (or ``PATH/val``), one sub-folder per class, resized to the store's
input size. The loaders are cv_tasks'; a data set that is not there is a
:class:`~legodnn.cli.args.UsageError` that says where it was looked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

from .args import UsageError

__all__ = ["load_data"]

Loaders = Tuple[Any, Any]


def _imagefolder(root: Path, image_size: int, common: dict) -> Loaders:
    from cv_tasks.image_classification.datasets import imagefolder_dataloaders

    test = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or test is None:
        raise UsageError(
            f"--data {str(root)!r}: an ImageFolder path needs train/ and test/ (or val/) sub-folders, each with one "
            "folder of images per class; or use --data digits, or --data cifar10:ROOT")
    return imagefolder_dataloaders(root / "train", test, image_size, **common)


def load_data(spec: str, input_size: Sequence[int], batch_size: int, subset: Optional[int], seed: int = 0
              ) -> Loaders:
    """(train, test) loaders for ``spec``; ``input_size`` is the store's (N, C, H, W)."""
    from cv_tasks.image_classification.datasets import DatasetNotFoundError

    common = dict(batch_size=batch_size, train_subset=subset, test_subset=subset, seed=seed)
    try:
        if spec == "digits":
            from cv_tasks.image_classification.datasets import digits_dataloaders

            return digits_dataloaders(**common)
        if spec.startswith("cifar10:"):
            from cv_tasks.image_classification.datasets import cifar10_dataloaders

            return cifar10_dataloaders(spec.partition(":")[2], **common)
        root = Path(spec).expanduser()
        if not root.is_dir():
            raise UsageError(
                f"--data {spec!r} is not 'digits', 'cifar10:ROOT' or an existing folder; e.g. --data digits")
        return _imagefolder(root, int(input_size[-1]), common)
    except DatasetNotFoundError as exc:
        raise UsageError(f"--data {spec!r}: {exc}") from exc
    except ImportError as exc:
        raise UsageError(f"--data {spec!r} needs a package that is not installed ({exc}); "
                         "pip install 'legodnn[demo]'") from exc
