"""Detection data: COCO (pycocotools) and Pascal VOC (XML) loaders, box-aware transforms, collate."""

from cv_tasks.object_detection.datasets.coco import CocoDetection
from cv_tasks.object_detection.datasets.errors import AnnotationError, DatasetNotFoundError
from cv_tasks.object_detection.datasets.loaders import detection_collate, detection_dataloaders
from cv_tasks.object_detection.datasets.transforms import (
    Compose,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    detection_transforms,
)
from cv_tasks.object_detection.datasets.voc import VOC_CLASSES, VOCDetection, parse_voc_xml

__all__ = [
    "VOC_CLASSES",
    "AnnotationError",
    "CocoDetection",
    "Compose",
    "DatasetNotFoundError",
    "RandomHorizontalFlip",
    "Resize",
    "ToTensor",
    "VOCDetection",
    "detection_collate",
    "detection_dataloaders",
    "detection_transforms",
    "parse_voc_xml",
]
