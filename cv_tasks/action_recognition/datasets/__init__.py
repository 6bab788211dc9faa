"""Video data for action recognition: UCF101 / HMDB51 layouts, OpenCV decoding, clip sampling.

Importing this needs torch and numpy only; OpenCV is imported when a video is read or written.
"""

from cv_tasks.action_recognition.datasets.dataset import ClipSampler, VideoClipDataset
from cv_tasks.action_recognition.datasets.errors import (
    DatasetNotFoundError,
    SplitFileError,
    VideoDecodeError,
)
from cv_tasks.action_recognition.datasets.loaders import (
    hmdb51_datasets,
    ucf101_datasets,
    video_dataloaders,
)
from cv_tasks.action_recognition.datasets.sampling import segment_indices, uniform_indices
from cv_tasks.action_recognition.datasets.splits import (
    VideoSample,
    read_hmdb51_split,
    read_ucf101_class_index,
    read_ucf101_split,
)
from cv_tasks.action_recognition.datasets.synthetic import (
    DIRECTIONS,
    SyntheticVideos,
    write_synthetic_videos,
)
from cv_tasks.action_recognition.datasets.transforms import (
    KINETICS_MEAN,
    KINETICS_STD,
    ClipTransform,
)
from cv_tasks.action_recognition.datasets.video_io import count_frames, read_frames

__all__ = [
    "ClipSampler",
    "ClipTransform",
    "DIRECTIONS",
    "DatasetNotFoundError",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "SplitFileError",
    "SyntheticVideos",
    "VideoClipDataset",
    "VideoDecodeError",
    "VideoSample",
    "count_frames",
    "hmdb51_datasets",
    "read_frames",
    "read_hmdb51_split",
    "read_ucf101_class_index",
    "read_ucf101_split",
    "segment_indices",
    "ucf101_datasets",
    "uniform_indices",
    "video_dataloaders",
    "write_synthetic_videos",
]
