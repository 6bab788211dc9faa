"""Semantic-segmentation models; importing this registers them."""

from cv_tasks.semantic_segmentation.models.encoder_decoder import (
    TinyEncoderDecoder,
    tiny_encoder_decoder,
)

__all__ = ["TinyEncoderDecoder", "tiny_encoder_decoder"]
