"""Semantic segmentation: FCN / DeepLabV3 / LR-ASPP and a tiny encoder-decoder, Pascal VOC
and COCO-mask data, mean IoU, and the task's model manager.

Importing this registers the models only (torch alone); data sets, the metric and the
model manager live in their modules (``datasets``, ``metrics``, ``model_manager``) and
are imported by whoever uses them.
"""
