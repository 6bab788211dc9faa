"""Action-recognition models; importing this registers them."""

from cv_tasks.action_recognition.models.c3d import C3DTiny, c3d_tiny

__all__ = ["C3DTiny", "c3d_tiny"]
