"""Anomaly detection data: the MVTec AD layout and the one-class protocol on classification data."""

from cv_tasks.anomaly_detection.datasets.loaders import mvtec_dataloaders
from cv_tasks.anomaly_detection.datasets.mvtec import IMAGE_SUFFIXES, MVTecAD, list_images
from cv_tasks.anomaly_detection.datasets.one_class import (
    OneClassDataset,
    digits_one_class_dataloaders,
    imagefolder_one_class_dataloaders,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "MVTecAD",
    "OneClassDataset",
    "digits_one_class_dataloaders",
    "imagefolder_one_class_dataloaders",
    "list_images",
    "mvtec_dataloaders",
]
