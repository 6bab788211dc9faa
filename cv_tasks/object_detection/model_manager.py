"""The detection model manager: list-of-images batches, COCO or VOC mAP.

torchvision detectors take a list of 3-D images and, in eval mode, return one dict of
``boxes``/``scores``/``labels`` per image. Loader batches are ``(images, targets)`` as
made by :func:`cv_tasks.object_detection.datasets.detection_collate`. Size is inherited;
FLOPs and latency are measured on a list of ``N`` random images of ``model_input_size``
``(N, C, H, W)``, the form the detector is called with.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any, List, Sequence, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cv_tasks.object_detection.metrics import CocoMAP, VocMAP
from cv_tasks.registry import register_model_manager
from legodnn.model_manager import CommonModelManager
from legodnn.model_manager.abstract_model_manager import Device

__all__ = ["METRICS", "DetectionModelManager"]

#: metric choice -> the metric's name as reported
METRICS = {"coco": "mAP@[.5:.95]", "voc": "mAP@0.5"}


def _images(model_input_size: Sequence[int], device: Device) -> List[torch.Tensor]:
    size = tuple(int(s) for s in model_input_size)
    if len(size) != 4 or min(size) < 1:
        raise ValueError(f"a detector's model_input_size is (N, C, H, W) with positive sizes, got {size}")
    return list(torch.rand(size, device=device).unbind(0))


@register_model_manager("object_detection")
class DetectionModelManager(CommonModelManager):
    """Runs torchvision-style detectors; ``metric="coco"`` (mAP@[.5:.95]) or ``"voc"`` (mAP@0.5)."""

    def __init__(self, metric: str = "coco") -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown detection metric {metric!r}; choose one of {sorted(METRICS)}")
        self.metric = metric
        self.metric_name = METRICS[metric]

    def metric_accumulator(self) -> Union[CocoMAP, VocMAP]:
        return CocoMAP() if self.metric == "coco" else VocMAP(0.5)

    def forward_to_gen_mid_data(self, model: nn.Module, batch_data: Sequence[Any], device: Device) -> Any:
        """Run the detector in eval mode on the batch's list of images (``batch_data[0]``)."""
        images = batch_data[0]
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = [images]
        if not isinstance(images, (list, tuple, torch.Tensor)) or not len(images):
            raise ValueError("a detection batch is (images, targets) with a non-empty list of (C, H, W) images; "
                             "build the loader with collate_fn=detection_collate")
        model.to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return model([img.to(device) for img in images])
        finally:
            model.train(was_training)

    def dummy_forward_to_gen_mid_data(self, model: nn.Module, model_input_size: Sequence[int],
                                      device: Device) -> Any:
        """Run the detector in eval mode on ``N`` random images of ``model_input_size`` (N, C, H, W)."""
        return self.forward_to_gen_mid_data(model, (_images(model_input_size, device), None), device)

    def get_model_flops_and_param(self, model: nn.Module, model_input_size: Sequence[int]) -> tuple[int, int]:
        """FLOPs of one eval pass on random images (convs, linears, RoI heads; not NMS) and parameters."""
        counted = copy.deepcopy(model).eval()
        device = next(counted.parameters()).device
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            counted(_images(model_input_size, device))
        return int(counter.get_total_flops()), sum(p.numel() for p in model.parameters())

    def get_model_latency(self, model: nn.Module, sample_num: int, model_input_size: Sequence[int],
                          device: Device, *, warmup_num: int = 2) -> float:
        """Median seconds of one eval pass on a list of random images, over ``sample_num`` runs.

        Detection time depends on how many boxes survive to NMS, so the same random
        images are used in every run.
        """
        if sample_num < 1:
            raise ValueError(f"sample_num must be >= 1, got {sample_num}")
        torch_device = torch.device(device)
        model.to(torch_device)
        images = _images(model_input_size, torch_device)
        timings = []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i in range(warmup_num + sample_num):
                    if torch_device.type == "cuda":
                        torch.cuda.synchronize(torch_device)
                    start = time.perf_counter()
                    model(images)
                    if torch_device.type == "cuda":
                        torch.cuda.synchronize(torch_device)
                    if i >= warmup_num:
                        timings.append(time.perf_counter() - start)
        finally:
            model.train(was_training)
        return statistics.median(timings)

