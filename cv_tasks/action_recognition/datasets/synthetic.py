"""A tiny synthetic action data set, written as real video files in the UCF101 or HMDB51 layout.

Each video shows one shape moving across a plain background; the class is the direction
of motion, so a single frame cannot tell the classes apart and a model has to use time.
Videos are MJPEG ``.avi`` files written with ``cv2.VideoWriter``, so they go through the
same decoder and split-file readers as the real data sets. Deterministic for a seed.
Mirror flips swap left and right, so train on it with ``flip=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np

__all__ = ["DIRECTIONS", "SyntheticVideos", "write_synthetic_videos"]

#: class name -> (dx, dy) per frame, in the order of the class index
DIRECTIONS: Tuple[Tuple[str, Tuple[int, int]], ...] = (
    ("MoveRight", (1, 0)), ("MoveLeft", (-1, 0)), ("MoveDown", (0, 1)), ("MoveUp", (0, -1)),
    ("MoveDownRight", (1, 1)), ("MoveUpLeft", (-1, -1)), ("MoveDownLeft", (-1, 1)), ("MoveUpRight", (1, -1)),
)


@dataclass(frozen=True)
class SyntheticVideos:
    """What :func:`write_synthetic_videos` wrote."""

    root: Path
    layout: str
    classes: List[str]
    num_train: int
    num_test: int


def _frames(rng: np.random.Generator, direction: Tuple[int, int], frames: int, size: Tuple[int, int]) -> List[np.ndarray]:
    import cv2

    w, h = size
    radius = int(rng.integers(max(2, min(w, h) // 10), max(3, min(w, h) // 6)))
    # cross about 60-80 % of the frame over the video: big steps make the motion easy to see
    speed = max(1, round(float(rng.uniform(0.6, 0.8)) * (min(w, h) - 2 * radius) / (frames - 1)))
    travel = speed * (frames - 1)
    dx, dy = direction

    def start(extent: int, d: int) -> int:
        lo = radius + (travel if d < 0 else 0)
        hi = extent - radius - (travel if d > 0 else 0)
        return int(rng.integers(lo, max(lo + 1, hi)))

    x0, y0 = start(w, dx), start(h, dy)
    background = rng.integers(0, 90, 3)
    colour = tuple(int(c) for c in rng.integers(140, 256, 3))
    circle = bool(rng.integers(0, 2))
    out = []
    for t in range(frames):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = background
        cx, cy = x0 + dx * speed * t, y0 + dy * speed * t
        if circle:
            cv2.circle(img, (cx, cy), radius, colour, -1)
        else:
            cv2.rectangle(img, (cx - radius, cy - radius), (cx + radius, cy + radius), colour, -1)
        out.append(img)
    return out


def write_synthetic_videos(
    root: Union[str, Path],
    *,
    num_classes: int = 4,
    train_per_class: int = 6,
    test_per_class: int = 2,
    frames: int = 16,
    size: Tuple[int, int] = (64, 48),
    layout: str = "ucf101",
    seed: int = 0,
) -> SyntheticVideos:
    """Write ``num_classes`` (<= 8) motion classes as ``.avi`` files plus split 1's files under ``root``.

    ``layout="ucf101"``: ``root/UCF-101/<Class>/v_<Class>_gNN_c01.avi`` and
    ``root/ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt``; ``layout="hmdb51"``:
    ``root/hmdb51/<class>/<name>.avi`` and ``root/testTrainMulti_7030_splits/<class>_test_split1.txt``.
    ``size`` is (width, height).
    """
    import cv2

    if not 1 <= num_classes <= len(DIRECTIONS):
        raise ValueError(f"num_classes must be in 1..{len(DIRECTIONS)}, got {num_classes}")
    if layout not in ("ucf101", "hmdb51"):
        raise ValueError(f"layout must be 'ucf101' or 'hmdb51', got {layout!r}")
    if train_per_class < 1 or test_per_class < 1 or frames < 2 or min(size) < 16:
        raise ValueError("need train_per_class, test_per_class >= 1, frames >= 2 and a size of at least 16x16")
    root = Path(root)
    videos = root / ("UCF-101" if layout == "ucf101" else "hmdb51")
    splits = root / ("ucfTrainTestlist" if layout == "ucf101" else "testTrainMulti_7030_splits")
    splits.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = [name for name, _ in DIRECTIONS[:num_classes]]
    train_lines, test_lines, class_lines = [], [], []
    for label, (name, direction) in enumerate(DIRECTIONS[:num_classes]):
        (videos / name).mkdir(parents=True, exist_ok=True)
        hmdb_lines = []
        for i in range(train_per_class + test_per_class):
            file = f"v_{name}_g{i + 1:02d}_c01.avi"
            writer = cv2.VideoWriter(str(videos / name / file), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, size)
            if not writer.isOpened():
                raise RuntimeError("OpenCV cannot write MJPEG .avi files here; install opencv-python-headless")
            for frame in _frames(rng, direction, frames, size):
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
            is_test = i >= train_per_class
            if is_test:
                test_lines.append(f"{name}/{file}")
            else:
                train_lines.append(f"{name}/{file} {label + 1}")
            hmdb_lines.append(f"{file} {2 if is_test else 1}")
        class_lines.append(f"{label + 1} {name}")
        if layout == "hmdb51":
            (splits / f"{name}_test_split1.txt").write_text("\n".join(hmdb_lines) + "\n")
    if layout == "ucf101":
        (splits / "classInd.txt").write_text("\n".join(class_lines) + "\n")
        (splits / "trainlist01.txt").write_text("\n".join(train_lines) + "\n")
        (splits / "testlist01.txt").write_text("\n".join(test_lines) + "\n")
    return SyntheticVideos(root, layout, classes, len(train_lines), len(test_lines))
