"""Person crops by one affine map, so image and keypoints always move together.

A person box (centre, width, height) is cut out, scaled to the network input,
optionally rotated and mirrored, by a single 2x3 matrix. Keypoints go through the same
matrix, and its inverse takes predictions back to image coordinates; a mirror also
swaps left and right joints (``flip_joints``), which is what keeps keypoints right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["apply_affine", "box_to_center_size", "crop_affine", "flip_joints", "invert_affine", "warp_image"]


def box_to_center_size(
    box: Sequence[float], aspect: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and (width, height) of the region to crop around an ``[x, y, w, h]`` box.

    The region is widened or heightened to the input's ``aspect`` (width / height), so
    the person is not distorted, and enlarged by ``padding`` for context.
    """
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0):
        raise ValueError(f"a person box needs positive width and height, got [x, y, w, h] = {list(box)}")
    center = np.array([x + w / 2, y + h / 2], dtype=np.float64)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], dtype=np.float64) * padding


def crop_affine(
    center: Sequence[float],
    size: Sequence[float],
    output_size: tuple[int, int],
    rotation: float = 0.0,
    flip: bool = False,
) -> np.ndarray:
    """The 2x3 matrix from image pixels to crop pixels.

    ``output_size`` is (height, width). The region of ``size`` (w, h) around ``center``
    fills the crop; ``rotation`` (degrees, counter-clockwise) turns the person about
    the centre; ``flip`` mirrors the crop about its vertical centre line.
    """
    out_h, out_w = output_size
    scale = out_w / float(size[0])
    a = math.radians(rotation)
    cos, sin = math.cos(a) * scale, math.sin(a) * scale
    # rotate+scale about the centre, then put the centre at the middle of the crop
    rot = np.array([[cos, sin], [-sin, cos]], dtype=np.float64)
    mid = np.array([(out_w - 1) / 2, (out_h - 1) / 2], dtype=np.float64)
    m = np.zeros((2, 3), dtype=np.float64)
    m[:, :2] = rot
    m[:, 2] = mid - rot @ np.asarray(center, dtype=np.float64)
    if flip:  # x -> (W - 1) - x
        m[0] = -m[0]
        m[0, 2] += out_w - 1
    return m


def invert_affine(m: np.ndarray) -> np.ndarray:
    """The 2x3 matrix that undoes ``m``."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through the 2x3 matrix ``m``."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def flip_joints(values: np.ndarray, permutation: Sequence[int]) -> np.ndarray:
    """Reorder per-joint rows after a mirror, so the left wrist is again the left wrist."""
    return np.asarray(values)[list(permutation)]


def warp_image(image: np.ndarray, m: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """The crop of ``image`` (H, W, C uint8) under ``m``; outside the image is black."""
    import cv2

    out_h, out_w = output_size
    return cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
