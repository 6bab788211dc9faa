"""Pose estimation models; importing this registers them."""

__all__: list = []
