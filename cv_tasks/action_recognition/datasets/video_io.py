"""Decoding frames with OpenCV (``cv2.VideoCapture``), the decoder the loaders use.

torchvision no longer decodes video, and OpenCV's wheels bundle FFmpeg, so AVI (Xvid,
MJPEG) and MP4 (H.264) files decode without extra installs. ``cv2`` is imported here,
when a video is read, never when ``cv_tasks`` is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from cv_tasks.action_recognition.datasets.errors import VideoDecodeError

__all__ = ["count_frames", "read_frames"]

PathLike = Union[str, Path]


def _open(path: PathLike) -> Any:
    import cv2

    if not Path(path).is_file():
        raise VideoDecodeError(f"video file {path} does not exist; check the data set's folder and split files")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoDecodeError(
            f"OpenCV cannot open the video {path} (corrupt, empty or an unsupported codec); "
            "re-encode it (e.g. ffmpeg -i in.avi -c:v mjpeg out.avi) or remove it from the split files"
        )
    return cap


def count_frames(path: PathLike) -> int:
    """Number of decodable frames; the container's count when it has one, else by decoding.

    Raises ``VideoDecodeError`` if the file cannot be opened or has no frame.
    """
    import cv2

    cap = _open(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if n <= 0:
            n = 0
            while cap.grab():
                n += 1
    finally:
        cap.release()
    if n <= 0:
        raise VideoDecodeError(f"the video {path} has no frames; remove it from the split files")
    return n


def read_frames(path: PathLike, indices: Sequence[int]) -> np.ndarray:
    """The frames at ``indices`` (any order, repeats allowed) as an RGB ``(T, H, W, 3)`` uint8 array.

    Decodes sequentially up to the largest index, grabbing without converting the frames it
    skips. Containers sometimes report more frames than they hold: an index past the last
    decodable frame gets the last frame. Raises ``VideoDecodeError`` if none decodes.
    """

    if len(indices) == 0:
        raise ValueError("indices is empty; ask for at least one frame")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
    wanted = set(int(i) for i in indices)
    frames, grabbed = _decode(path, wanted)
    if grabbed > 0 and grabbed - 1 not in frames and max(wanted) >= grabbed:
        # the container promised more frames than it holds: the indices past its end get
        # its real last frame, which the first pass skipped without converting
        frames.update(_decode(path, {grabbed - 1})[0])
    if not frames:
        raise VideoDecodeError(
            f"no frame of {path} could be decoded (zero-length or corrupt video); "
            "re-encode it or remove it from the split files"
        )
    fallback = frames[max(frames)]
    return np.stack([frames.get(int(i), fallback) for i in indices])


def _decode(path: PathLike, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode sequentially up to ``max(wanted)``: the wanted frames (RGB) and how many
    frames could be grabbed."""
    import cv2

    frames: dict[int, np.ndarray] = {}
    grabbed = 0
    cap = _open(path)
    try:
        for i in range(max(wanted) + 1):
            if not cap.grab():
                break
            grabbed = i + 1
            if i in wanted:
                ok, frame = cap.retrieve()
                if not ok:
                    break
                frames[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    return frames, grabbed
