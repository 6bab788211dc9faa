"""Which frames of a video make a clip: TSN segments or a uniform run of frames.

Training draws a random offset (data augmentation); testing is deterministic: the centre
of each segment, or ``num_clips`` runs spread evenly over the video (the usual multi-clip
test, whose clip scores are averaged per video).
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

__all__ = ["segment_indices", "uniform_indices"]


def _check(num_frames: int, clip_len: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")


def segment_indices(
    num_frames: int,
    num_segments: int,
    *,
    train: bool,
    clip: int = 0,
    num_clips: int = 1,
    rng: Optional[np.random.Generator] = None,
) -> List[int]:
    """One frame per equal segment (TSN): random within the segment in training, else its centre.

    At test time clip ``clip`` of ``num_clips`` takes the frame at offset
    ``(clip + 0.5) / num_clips`` of each segment (``num_clips=1``: the centre). A video with
    fewer frames than segments repeats frames.
    """
    _check(num_frames, num_segments)
    length = num_frames / num_segments
    starts = np.arange(num_segments) * length
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        offsets = rng.random(num_segments) * length
    else:
        if not 0 <= clip < num_clips:
            raise ValueError(f"clip must be in [0, num_clips={num_clips}), got {clip}")
        offsets = np.full(num_segments, (clip + 0.5) / num_clips * length)
    return np.minimum((starts + offsets).astype(np.int64), num_frames - 1).tolist()


def uniform_indices(
    num_frames: int,
    clip_len: int,
    *,
    train: bool,
    stride: int = 1,
    clip: int = 0,
    num_clips: int = 1,
    rng: Optional[np.random.Generator] = None,
) -> List[int]:
    """``clip_len`` frames ``stride`` apart (a C3D/R3D clip) starting at a random or evenly spread frame.

    Test clips start evenly between the first and the last possible start (one clip: the
    centred one). A video shorter than the clip loops.
    """
    _check(num_frames, clip_len)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    span = (clip_len - 1) * stride + 1
    room = max(num_frames - span, 0)
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        start = int(rng.integers(0, room + 1))
    else:
        if not 0 <= clip < num_clips:
            raise ValueError(f"clip must be in [0, num_clips={num_clips}), got {clip}")
        start = room // 2 if num_clips == 1 else round(clip * room / (num_clips - 1))
    return ((start + np.arange(clip_len) * stride) % num_frames).tolist()
