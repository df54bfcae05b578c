"""Landmarks per frame of a video or a (restored, GT) pair: MediaPipe (478) or dlib (68).

Frames without a face follow :mod:`fvr_bench.faces.analysis`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fvr_bench.errors import ConfigError
from fvr_bench.faces.align import Geometry
from fvr_bench.faces.analysis import (
    STATUS_FALLBACK,
    STATUS_MISSING,
    STATUS_NO_FACE_GT,
    STATUS_OWN,
    FrameAnalysis,
)
from fvr_bench.faces.dlib import shared_dlib
from fvr_bench.faces.frames import Frame
from fvr_bench.faces.mediapipe import shared_mediapipe
from fvr_bench.faces.provenance import package_version, weights_identity


class LandmarkBackend:
    """Landmarks per frame in normalised coordinates ``(x/W, y/H)``: ``"mediapipe"`` (478
    points) or ``"dlib68"`` (68 points)."""

    def __init__(self, kind: str = "mediapipe", detector: str = "hog", upsample: int | str = "auto",
                 min_detection_confidence: float = 0.5) -> None:
        if kind not in ("mediapipe", "dlib68"):
            raise ConfigError(f"landmark backend must be 'mediapipe' or 'dlib68', got {kind!r}")
        self.kind = kind
        if kind == "mediapipe":
            self.impl: Any = shared_mediapipe(float(min_detection_confidence))
        else:
            self.impl = shared_dlib(detector, upsample)

    @property
    def num_points(self) -> int:
        return 478 if self.kind == "mediapipe" else 68

    def settings(self) -> dict[str, Any]:
        return {"landmarks": self.kind, "coordinates": "normalised_xy", **self.impl.settings()}

    def required_weights(self) -> list[str]:
        if self.kind == "mediapipe":
            return self.impl.required_weights()
        return self.impl.required_weights(landmarks=True)

    def weights_file(self) -> tuple[str | None, str | None]:
        name = "mediapipe_face_landmarker" if self.kind == "mediapipe" else "dlib_shape_predictor_68"
        return weights_identity(name)

    def backend_version(self) -> str:
        return package_version("mediapipe") if self.kind == "mediapipe" else package_version("dlib")

    def _own(self, frame: Frame) -> tuple[Geometry | None, np.ndarray | None]:
        if self.kind == "mediapipe":
            mesh = self.impl.mesh(frame)
            return (None, None) if mesh is None else (self.impl.geometry(frame), mesh[:, :2])
        geometry = self.impl.detect(frame)
        if geometry is None:
            return None, None
        return geometry, self.impl.landmarks68(frame, geometry) / np.array([frame.width, frame.height])

    def _fallback(self, frame: Frame, geometry: Geometry) -> np.ndarray | None:
        if self.kind == "mediapipe":
            mesh = self.impl.mesh_in_crop(frame, geometry)
            return None if mesh is None else mesh[:, :2]
        return self.impl.landmarks68(frame, geometry) / np.array([frame.width, frame.height])

    def video(self, frames: list[Frame]) -> FrameAnalysis:
        """No-reference: ``(T, K, 2)`` landmarks; frames without a face are ``missing``."""
        values = np.full((len(frames), self.num_points, 2), np.nan)
        status = []
        for i, frame in enumerate(frames):
            _, points = self._own(frame)
            status.append(STATUS_MISSING if points is None else STATUS_OWN)
            if points is not None:
                values[i] = points
        return FrameAnalysis(values, status)

    def pair(self, pred: list[Frame], gt: list[Frame]) -> tuple[FrameAnalysis, FrameAnalysis]:
        """Full-reference: GT frames first; restored frames fall back to the GT geometry."""
        pred_values = np.full((len(pred), self.num_points, 2), np.nan)
        gt_values = np.full((len(gt), self.num_points, 2), np.nan)
        pred_status, gt_status = [], []
        for i, (p, g) in enumerate(zip(pred, gt)):
            gt_geometry, gt_points = self._own(g)
            if gt_points is None:
                pred_status.append(STATUS_NO_FACE_GT)
                gt_status.append(STATUS_NO_FACE_GT)
                continue
            gt_values[i] = gt_points
            gt_status.append(STATUS_OWN)
            _, points = self._own(p)
            if points is not None:
                pred_status.append(STATUS_OWN)
            else:
                points = self._fallback(p, gt_geometry)
                pred_status.append(STATUS_FALLBACK if points is not None else STATUS_MISSING)
            if points is not None:
                pred_values[i] = points
        return FrameAnalysis(pred_values, pred_status), FrameAnalysis(gt_values, gt_status)
