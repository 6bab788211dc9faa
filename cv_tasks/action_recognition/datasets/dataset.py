"""A map-style data set of video clips: decode, sample, transform.

Each item is ``(clip, label, video_index)`` with ``clip`` of shape ``(3, T, H, W)``. At
test time a video yields ``num_clips`` items (the multi-clip test); ``video_index`` lets
the metric average their scores per video. Frame counts are read once per video and
kept on the instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from cv_tasks.action_recognition.datasets.sampling import segment_indices, uniform_indices
from cv_tasks.action_recognition.datasets.splits import VideoSample
from cv_tasks.action_recognition.datasets.transforms import ClipTransform
from cv_tasks.action_recognition.datasets.video_io import count_frames, read_frames

__all__ = ["ClipSampler", "VideoClipDataset"]


@dataclass(frozen=True)
class ClipSampler:
    """How a clip is drawn: ``"segments"`` (TSN, one frame per segment, for 2D models) or
    ``"uniform"`` (``frames`` consecutive frames ``stride`` apart, for 3D models)."""

    frames: int = 8
    mode: str = "segments"
    stride: int = 1
    num_clips: int = 1  # clips per video at test time

    def __post_init__(self) -> None:
        if self.mode not in ("segments", "uniform"):
            raise ValueError(f"mode must be 'segments' or 'uniform', got {self.mode!r}")
        if self.frames < 1 or self.stride < 1 or self.num_clips < 1:
            raise ValueError(f"frames, stride and num_clips must be >= 1, got {self.frames}, "
                             f"{self.stride}, {self.num_clips}")

    def indices(
        self, num_frames: int, train: bool, clip: int, rng: Optional[np.random.Generator] = None
    ) -> List[int]:
        """Frame indices of clip ``clip`` of a ``num_frames``-frame video (``rng``: training offsets)."""
        if self.mode == "segments":
            return segment_indices(num_frames, self.frames, train=train, clip=clip,
                                   num_clips=self.num_clips, rng=rng)
        return uniform_indices(num_frames, self.frames, train=train, stride=self.stride, clip=clip,
                               num_clips=self.num_clips, rng=rng)


class VideoClipDataset(Dataset):
    """Clips of ``samples``; training draws one random clip per video, testing ``num_clips`` fixed ones.

    ``transform`` defaults to ``ClipTransform(train=train)``; random choices use torch's
    generator, so ``torch.manual_seed`` makes a run repeatable.

    Unreadable or zero-length videos raise ``VideoDecodeError`` naming the file when their
    item is loaded; :meth:`check` finds them all up front.
    """

    def __init__(
        self,
        samples: Sequence[VideoSample],
        classes: Sequence[str],
        sampler: Optional[ClipSampler] = None,
        transform: Optional[ClipTransform] = None,
        train: bool = False,
    ) -> None:
        if not samples:
            raise ValueError("samples is empty; the split lists no video")
        bad = [s for s in samples if not 0 <= s.label < len(classes)]
        if bad:
            raise ValueError(f"{bad[0].path} has label {bad[0].label}, outside the {len(classes)} classes")
        self.samples = list(samples)
        self.classes = list(classes)
        self.sampler = sampler if sampler is not None else ClipSampler()
        self.train = train
        self.transform = transform if transform is not None else ClipTransform(train=train)
        self.clips_per_video = 1 if train else self.sampler.num_clips
        self._frame_counts: Dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.samples) * self.clips_per_video

    def num_frames(self, video: int) -> int:
        """Frame count of video ``video`` (decoded once, then remembered)."""
        if video not in self._frame_counts:
            self._frame_counts[video] = count_frames(self.samples[video].path)
        return self._frame_counts[video]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        video, clip = divmod(index, self.clips_per_video)
        sample = self.samples[video]
        rng = None  # test clips are fixed; training offsets come from torch's generator, which
        if self.train:  # DataLoader seeds per worker and torch.manual_seed fixes
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        frames = read_frames(sample.path, self.sampler.indices(self.num_frames(video), self.train, clip, rng))
        return self.transform(frames), sample.label, video

    def check(self) -> None:
        """Open every video and count its frames; raises ``VideoDecodeError`` at the first bad one."""
        for video in range(len(self.samples)):
            self.num_frames(video)
