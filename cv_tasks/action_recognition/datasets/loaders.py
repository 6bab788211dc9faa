"""UCF101 and HMDB51 from their standard on-disk layouts, as data sets and data loaders.

UCF101: ``root/UCF-101/<Class>/*.avi`` (or ``root/videos/``) and ``root/ucfTrainTestlist/``
(or ``root/splits/``), or both directly in ``root``. HMDB51: ``root/hmdb51/<class>/*.avi``
(or ``hmdb51_org/``, ``videos/``, ``root`` itself) and the split files in
``root/testTrainMulti_7030_splits/`` (or ``root/splits/``, ``root``). Explicit ``video_dir``
/ ``split_dir`` override the guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

from torch.utils.data import DataLoader

from cv_tasks.action_recognition.datasets.dataset import ClipSampler, VideoClipDataset
from cv_tasks.action_recognition.datasets.errors import DatasetNotFoundError
from cv_tasks.action_recognition.datasets.splits import (
    VideoSample,
    read_hmdb51_split,
    read_ucf101_split,
)
from cv_tasks.action_recognition.datasets.transforms import ClipTransform

__all__ = ["hmdb51_datasets", "ucf101_datasets", "video_dataloaders"]

PathLike = Union[str, Path]
Datasets = Tuple[VideoClipDataset, VideoClipDataset, List[str]]


def _dirs(root: PathLike, video_dir: Optional[PathLike], split_dir: Optional[PathLike],
          video_names: Tuple[str, ...], split_names: Tuple[str, ...]) -> Tuple[Path, Path]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"data set folder {root} does not exist; pass the folder that holds "
                                   "the class folders and split files")

    def pick(given: Optional[PathLike], names: Tuple[str, ...]) -> Path:
        if given is not None:
            return Path(given)
        return next((root / n for n in names if (root / n).is_dir()), root)

    return pick(video_dir, video_names), pick(split_dir, split_names)


def _build(
    read: Callable[..., Tuple[List[VideoSample], List[str]]],
    root: PathLike,
    video_dir: Optional[PathLike],
    split_dir: Optional[PathLike],
    names: Tuple[Tuple[str, ...], Tuple[str, ...]],
    split: int,
    sampler: Optional[ClipSampler],
    size: int,
    flip: bool,
) -> Datasets:
    videos, splits = _dirs(root, video_dir, split_dir, *names)
    train_samples, classes = read(videos, splits, split, train=True)
    test_samples, _ = read(videos, splits, split, train=False)
    sampler = sampler if sampler is not None else ClipSampler()
    train = VideoClipDataset(train_samples, classes, sampler, ClipTransform(size, train=True, flip=flip), train=True)
    test = VideoClipDataset(test_samples, classes, sampler, ClipTransform(size, train=False), train=False)
    return train, test, classes


def ucf101_datasets(
    root: PathLike,
    split: int = 1,
    sampler: Optional[ClipSampler] = None,
    size: int = 112,
    *,
    flip: bool = True,
    video_dir: Optional[PathLike] = None,
    split_dir: Optional[PathLike] = None,
) -> Datasets:
    """UCF101 train and test clip data sets of ``split`` (1-3) and the class names."""
    return _build(read_ucf101_split, root, video_dir, split_dir, (("UCF-101", "videos"), ("ucfTrainTestlist", "splits")),
                  split, sampler, size, flip)


def hmdb51_datasets(
    root: PathLike,
    split: int = 1,
    sampler: Optional[ClipSampler] = None,
    size: int = 112,
    *,
    flip: bool = True,
    video_dir: Optional[PathLike] = None,
    split_dir: Optional[PathLike] = None,
) -> Datasets:
    """HMDB51 train and test clip data sets of ``split`` (1-3) and the class names."""
    return _build(read_hmdb51_split, root, video_dir, split_dir,
                  (("hmdb51", "hmdb51_org", "videos"), ("testTrainMulti_7030_splits", "splits")), split, sampler, size, flip)


def video_dataloaders(
    train: VideoClipDataset, test: VideoClipDataset, batch_size: int = 8, num_workers: int = 0
) -> Tuple[DataLoader, DataLoader]:
    """Shuffled training and ordered test loaders of ``(clips, labels, video_indices)`` batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=False),
        DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers),
    )
