"""torchvision's Keypoint R-CNN (He et al., Mask R-CNN, 2017) built for legodnn.

Its root does not trace with torch.fx (it loops over a list of images and filters
detections), so legodnn traces its single-tensor parts (backbone body, FPN, box and
keypoint heads) and keeps the rest as it is. The defaults suit top-down person crops:
images arrive already normalised by the data loader (``image_mean`` 0, ``image_std``
1), are not resized (``min_size`` = ``max_size`` = 256) and only the best few
detections per crop are kept. For whole images pass ``min_size=800, max_size=1333``.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from cv_tasks.pose_estimation.models._weights import load_checkpoint
from cv_tasks.registry import register_model

__all__ = ["keypoint_rcnn_resnet_fpn"]


@register_model(task="pose_estimation", input_size=(1, 3, 256, 192))
def keypoint_rcnn_resnet_fpn(
    num_joints: int = 17,
    depth: int = 50,
    head_width: int = 512,
    head_layers: int = 8,
    min_size: int = 256,
    max_size: int = 256,
    detections_per_img: int = 5,
    weights_path: Optional[str] = None,
    **kwargs: Any,
) -> nn.Module:
    """Keypoint R-CNN on a ResNet-``depth`` FPN (``depth=50``, 8 x 512 head: the standard one).

    Weights are random (``weights=None, weights_backbone=None``); a checkpoint of the same
    configuration loads through ``weights_path``. ``kwargs`` go to torchvision's
    ``KeypointRCNN`` (e.g. ``box_score_thresh``).
    """
    from torchvision.models.detection import KeypointRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor

    if depth not in (18, 34, 50, 101):
        raise ValueError(f"depth must be 18, 34, 50 or 101, got {depth}")
    if num_joints < 1 or head_width < 1 or head_layers < 1:
        raise ValueError("num_joints, head_width and head_layers must be positive")
    backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None, trainable_layers=5)
    kwargs.setdefault("image_mean", [0.0, 0.0, 0.0])
    kwargs.setdefault("image_std", [1.0, 1.0, 1.0])
    model = KeypointRCNN(
        backbone,
        num_classes=2,
        min_size=min_size,
        max_size=max_size,
        box_detections_per_img=detections_per_img,
        keypoint_head=KeypointRCNNHeads(backbone.out_channels, [head_width] * head_layers),
        keypoint_predictor=KeypointRCNNPredictor(head_width, num_joints),
        **kwargs,
    )
    return model if weights_path is None else load_checkpoint(model, weights_path)
