"""torchvision's Keypoint R-CNN (He et al., Mask R-CNN, 2017) built for legodnn.

Its root does not trace with torch.fx (it loops over a list of images and filters
detections), so legodnn traces its single-tensor parts (backbone body, FPN, box and
keypoint heads) and keeps the rest as it is. The defaults suit top-down person crops:
images arrive already normalised by the data loader (``image_mean`` 0, ``image_std``
1), are not resized (``min_size`` = ``max_size`` = 256) and the best few detections
per crop are kept whatever their score (``box_score_thresh`` 0). For whole images pass
``min_size=800, max_size=1333, box_score_thresh=0.05``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.pose_estimation.models.backbone import ResNetTrunk
from cv_tasks.registry import register_model

__all__ = ["keypoint_rcnn_resnet_fpn"]


@register_model(task="pose_estimation", input_size=(1, 3, 256, 192))
def keypoint_rcnn_resnet_fpn(
    num_joints: int = 17,
    depth: int = 50,
    head_width: int = 512,
    head_layers: int = 8,
    base_width: int | None = None,
    fpn_width: int = 256,
    box_head_width: int = 1024,
    min_size: int = 256,
    max_size: int = 256,
    detections_per_img: int = 5,
    weights_path: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Keypoint R-CNN on a ResNet-``depth`` FPN (``base_width`` set: a narrow ResNet-18/34); the defaults (ResNet-50, 256-channel FPN, 1024-wide
    box head, 8 x 512 keypoint head) are torchvision's ``keypointrcnn_resnet50_fpn``.

    Weights are random (``weights=None, weights_backbone=None``); a checkpoint of the same
    configuration loads through ``weights_path``. ``kwargs`` go to torchvision's
    ``KeypointRCNN`` (e.g. ``box_score_thresh``).
    """
    import torchvision
    from torchvision.models.detection import KeypointRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if depth not in (18, 34, 50, 101):
        raise ValueError(f"depth must be 18, 34, 50 or 101, got {depth}")
    if min(num_joints, head_width, head_layers, fpn_width, box_head_width) < 1:
        raise ValueError("num_joints and every width / layer count must be positive")
    # plain BatchNorm, as torchvision's own builder uses without pretrained weights: FrozenBatchNorm2d
    # would trace into tensor constants that channel pruning cannot follow
    if base_width is None:
        resnet: nn.Module = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=nn.BatchNorm2d)
        c5 = resnet.fc.in_features
    else:  # a narrow trunk for CPU tests (ResNet-18/34 layout, ``base_width`` channels in stage 1)
        resnet = ResNetTrunk(depth, base_width)
        c5 = resnet.out_channels
    backbone = BackboneWithFPN(resnet, {f"layer{i}": str(i - 1) for i in range(1, 5)},
                               [c5 // 8, c5 // 4, c5 // 2, c5], fpn_width, extra_blocks=LastLevelMaxPool())
    kwargs.setdefault("box_score_thresh", 0.0)  # a crop holds one person: keep its best boxes
    kwargs.setdefault("image_mean", [0.0, 0.0, 0.0])
    kwargs.setdefault("image_std", [1.0, 1.0, 1.0])
    model = KeypointRCNN(
        backbone,
        min_size=min_size,
        max_size=max_size,
        box_detections_per_img=detections_per_img,
        box_head=TwoMLPHead(fpn_width * 7 * 7, box_head_width),
        box_predictor=FastRCNNPredictor(box_head_width, 2),
        keypoint_head=KeypointRCNNHeads(backbone.out_channels, [head_width] * head_layers),
        keypoint_predictor=KeypointRCNNPredictor(head_width, num_joints),
        **kwargs,
    )
    return model if weights_path is None else load_checkpoint(model, weights_path)
