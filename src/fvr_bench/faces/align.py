"""Where a face is (:class:`Geometry`) and the ArcFace 5-point alignment onto 112².

ArcFace alignment: 5 points → least-squares similarity transform onto the standard
112×112 ArcFace template (``arcface_src``; equal to TreB1eN's
``get_reference_facial_points(default_square=True)``) → ``cv2.warpAffine`` (bilinear,
black border).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

# Standard ArcFace 5-point template for 112×112 crops (insightface ``arcface_src``): left
# eye, right eye, nose tip, left and right mouth corners, (x, y) in pixels. TreB1eN's
# ``get_reference_facial_points(default_square=True)`` gives the same points (the 96×112
# reference shifted by 8 px in x).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class Geometry:
    """Where a face is in a frame, in pixels: ``box`` ``(x0, y0, x1, y1)``, optional
    ``points`` ``(K, 2)`` (MTCNN's 5 points, or the MediaPipe mesh in pixels)."""

    box: tuple[float, float, float, float]
    points: np.ndarray | None = None
    score: float | None = None

    @property
    def key(self) -> tuple:
        """Hashable identity (memo key part) of this geometry."""
        pts = None
        if self.points is not None:
            pts = hashlib.sha1(np.ascontiguousarray(self.points, dtype=np.float64).data).hexdigest()
        return (tuple(round(float(v), 4) for v in self.box), pts)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection)
    mapping ``src`` ``(K, 2)`` onto ``dst``: the 2×3 matrix for ``cv2.warpAffine``
    (Umeyama 1991; equals TreB1eN's non-reflective similarity for 5 points)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1.0
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / s.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def align_arcface(image: np.ndarray, points5: np.ndarray, size: int = 112) -> np.ndarray:
    """8-bit RGB ``(H, W, 3)`` + 5 points → aligned ``(size, size, 3)`` uint8 crop."""
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    matrix = similarity_transform(points5, template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def largest_box(boxes: list[tuple[float, float, float, float]]) -> int:
    """Index of the largest ``(x0, y0, x1, y1)`` box."""
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    return int(np.argmax(areas))
