"""Keypoint layouts of the two supported formats: names, left-right pairs, OKS sigmas.

A horizontal flip turns a left wrist into a right wrist, so augmentation needs the
pairs; COCO's keypoint AP needs the per-joint OKS sigmas. Both live here, as data.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COCO_LAYOUT", "MPII_HEAD_JOINTS", "MPII_LAYOUT", "KeypointLayout", "get_layout"]


@dataclass(frozen=True)
class KeypointLayout:
    """The joints of one annotation format.

    ``flip_pairs`` lists (left, right) joint indices swapped by a horizontal flip;
    ``sigmas`` are COCO's per-joint OKS constants (None where the format has none:
    MPII keypoint AP then uses a uniform 0.05, documented in the metric).
    """

    name: str
    joints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...] | None = None

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def flip_permutation(self) -> tuple[int, ...]:
        """Index map: joint ``i`` of a flipped person is joint ``perm[i]`` of the original."""
        perm = list(range(self.num_joints))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return tuple(perm)


COCO_LAYOUT = KeypointLayout(
    name="coco",
    joints=("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
            "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
            "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    # COCO keypoint evaluation constants (cocodataset.org/#keypoints-eval), as in pycocotools
    sigmas=(0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
            0.107, 0.107, 0.087, 0.087, 0.089, 0.089),
)

MPII_LAYOUT = KeypointLayout(
    name="mpii",
    joints=("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
            "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
            "right_shoulder", "left_shoulder", "left_elbow", "left_wrist"),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
)

#: MPII joints used for the head-size fallback of PCKh (upper neck, head top)
MPII_HEAD_JOINTS = (8, 9)


def get_layout(name: str) -> KeypointLayout:
    """``"coco"`` or ``"mpii"``; raises ``ValueError`` naming the choices."""
    layouts = {"coco": COCO_LAYOUT, "mpii": MPII_LAYOUT}
    if name not in layouts:
        raise ValueError(f"unknown keypoint layout {name!r}; choose one of {sorted(layouts)}")
    return layouts[name]
