"""Segmentation data: Pascal VOC and COCO-mask layouts from disk, joint transforms, batching.

Importing this needs torch and numpy only; PIL reads files and pycocotools decodes COCO
masks when they are used.
"""

from cv_tasks.semantic_segmentation.datasets.coco import COCOSegmentation
from cv_tasks.semantic_segmentation.datasets.errors import (
    DatasetNotFoundError,
    SegmentationDataError,
)
from cv_tasks.semantic_segmentation.datasets.io import (
    read_image,
    read_label_map,
    voc_palette,
    write_label_png,
)
from cv_tasks.semantic_segmentation.datasets.loaders import (
    coco_dataloaders,
    segmentation_collate,
    segmentation_dataloaders,
    voc_dataloaders,
)
from cv_tasks.semantic_segmentation.datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    segmentation_transforms,
)
from cv_tasks.semantic_segmentation.datasets.voc import VOC_CLASSES, VOCSegmentation, check_mask

__all__ = [
    "COCOSegmentation",
    "Compose",
    "DatasetNotFoundError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "SegmentationDataError",
    "VOCSegmentation",
    "VOC_CLASSES",
    "check_mask",
    "coco_dataloaders",
    "read_image",
    "read_label_map",
    "segmentation_collate",
    "segmentation_dataloaders",
    "segmentation_transforms",
    "voc_dataloaders",
    "voc_palette",
    "write_label_png",
]
