"""Semantic-segmentation models; importing this registers them (torch only: the
torchvision-based builders import torchvision when called)."""

from cv_tasks.checkpoints import load_checkpoint
from cv_tasks.semantic_segmentation.models.encoder_decoder import (
    TinyEncoderDecoder,
    tiny_encoder_decoder,
)
from cv_tasks.semantic_segmentation.models.segmenter import LiteSegmenter, Segmenter
from cv_tasks.semantic_segmentation.models.torchvision_models import (
    deeplab_head,
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    fcn_resnet50,
    lraspp_mobilenet_v3_large,
)

__all__ = [
    "LiteSegmenter",
    "Segmenter",
    "TinyEncoderDecoder",
    "deeplab_head",
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "fcn_resnet50",
    "load_checkpoint",
    "lraspp_mobilenet_v3_large",
    "tiny_encoder_decoder",
]
