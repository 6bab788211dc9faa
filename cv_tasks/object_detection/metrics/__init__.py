"""Detection metrics: COCO mAP@[.5:.95] (pycocotools) and VOC mAP@0.5 (own implementation)."""

from cv_tasks.object_detection.metrics.coco import CocoMAP, coco_map
from cv_tasks.object_detection.metrics.voc import VocMAP, average_precision, box_iou, voc_map

__all__ = ["CocoMAP", "VocMAP", "average_precision", "box_iou", "coco_map", "voc_map"]
