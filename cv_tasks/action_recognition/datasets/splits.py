"""The UCF101 and HMDB51 split files: which video is in which split, with which label.

UCF101 (``ucfTrainTestlist/``): ``classInd.txt`` ("1 ApplyEyeMakeup"),
``trainlist0N.txt`` ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", 1-based label) and
``testlist0N.txt`` (path only; the label is the class folder's index in classInd).
HMDB51 (``testTrainMulti_7030_splits/``): one ``<class>_test_splitN.txt`` per class, each
line "<video>.avi <tag>" with tag 1 = train, 2 = test, 0 = unused in that split.
Videos live in ``<video_dir>/<class>/<video>``. Every listed video must exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

from cv_tasks.action_recognition.datasets.errors import DatasetNotFoundError, SplitFileError

__all__ = ["VideoSample", "read_hmdb51_split", "read_ucf101_class_index", "read_ucf101_split"]

PathLike = Union[str, Path]


@dataclass(frozen=True)
class VideoSample:
    """One video of a split: its file and its class index (0-based)."""

    path: Path
    label: int


def _lines(path: Path) -> List[Tuple[int, List[str]]]:
    if not path.is_file():
        raise DatasetNotFoundError(f"split file {path} not found; point split_dir at the folder that holds it")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            out.append((number, line.split()))
    return out


def _check_split(split: int) -> None:
    if split not in (1, 2, 3):
        raise ValueError(f"split must be 1, 2 or 3 (the official splits), got {split}")


def _video(video_dir: Path, relative: str, where: str) -> Path:
    path = video_dir / relative
    if not path.is_file():
        raise DatasetNotFoundError(f"{where} names the video {relative}, but {path} does not exist; "
                                   "add the video or remove the line")
    return path


def read_ucf101_class_index(split_dir: PathLike) -> List[str]:
    """Class names in label order, from ``classInd.txt`` (indices must run 1..K)."""
    path = Path(split_dir) / "classInd.txt"
    names: Dict[int, str] = {}
    for number, fields in _lines(path):
        if len(fields) != 2 or not fields[0].isdigit():
            raise SplitFileError(f"{path}:{number}: expected '<index> <ClassName>', got {' '.join(fields)!r}")
        names[int(fields[0])] = fields[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise SplitFileError(f"{path}: class indices must run 1..{len(names)} without gaps, got {sorted(names)}")
    if not names:
        raise SplitFileError(f"{path} lists no class")
    return [names[i] for i in range(1, len(names) + 1)]


def read_ucf101_split(
    video_dir: PathLike, split_dir: PathLike, split: int = 1, train: bool = True
) -> Tuple[List[VideoSample], List[str]]:
    """The videos of UCF101 split ``split`` (train or test list) and the class names."""
    _check_split(split)
    video_dir, split_dir = Path(video_dir), Path(split_dir)
    classes = read_ucf101_class_index(split_dir)
    index = {name: i for i, name in enumerate(classes)}
    path = split_dir / f"{'train' if train else 'test'}list0{split}.txt"
    samples = []
    for number, fields in _lines(path):
        where = f"{path}:{number}"
        folder = fields[0].replace("\\", "/").split("/")[0]
        if folder not in index:
            raise SplitFileError(f"{where}: class folder {folder!r} is not in classInd.txt; "
                                 "add it there or remove the line")
        label = index[folder]
        if len(fields) > 1 and (not fields[1].isdigit() or int(fields[1]) - 1 != label):
            raise SplitFileError(f"{where}: label {fields[1]} disagrees with classInd.txt, which gives "
                                 f"{folder!r} index {label + 1}")
        samples.append(VideoSample(_video(video_dir, fields[0], where), label))
    if not samples:
        raise SplitFileError(f"{path} lists no video")
    return samples, classes


_HMDB_SPLIT = re.compile(r"^(?P<cls>.+)_test_split(?P<n>[123])\.txt$")


def read_hmdb51_split(
    video_dir: PathLike, split_dir: PathLike, split: int = 1, train: bool = True
) -> Tuple[List[VideoSample], List[str]]:
    """The videos of HMDB51 split ``split`` tagged train (1) or test (2), and the class names (sorted)."""
    _check_split(split)
    video_dir, split_dir = Path(video_dir), Path(split_dir)
    files = sorted(p for p in split_dir.glob(f"*_test_split{split}.txt") if _HMDB_SPLIT.match(p.name))
    if not files:
        raise DatasetNotFoundError(f"no HMDB51 split files (<class>_test_split{split}.txt) in {split_dir}")
    classes = [_HMDB_SPLIT.match(p.name).group("cls") for p in files]  # type: ignore[union-attr]
    wanted = "1" if train else "2"
    samples = []
    for label, (cls, path) in enumerate(zip(classes, files)):
        for number, fields in _lines(path):
            where = f"{path}:{number}"
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise SplitFileError(f"{where}: expected '<video> <0|1|2>', got {' '.join(fields)!r}")
            if fields[1] == wanted:
                samples.append(VideoSample(_video(video_dir, f"{cls}/{fields[0]}", where), label))
    if not samples:
        raise SplitFileError(f"the split-{split} files in {split_dir} tag no video as {'train' if train else 'test'}")
    return samples, classes
