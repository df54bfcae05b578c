"""dlib face analysis: detection, 68 landmarks and 128-D identity descriptors.

Detector: HOG (``dlib.get_frontal_face_detector()``, no file) or MMOD CNN
(``mmod_human_face_detector.dat``), upsampling ``0``, ``1``, … or ``"auto"`` (0, and 1
only when nothing is found — upsampling a 512² frame costs 4×); the largest box is kept.
Landmarks: ``shape_predictor_68`` inside the box. Identity: ``shape_predictor_5`` +
``face_recognition_model_v1`` (dlib's own 150² chip alignment, padding 0.25, no jitter), a
128-D descriptor. Runs on the CPU; every result is memoised per frame (:data:`MEMO`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fvr_bench import weights as weight_registry
from fvr_bench.errors import ConfigError
from fvr_bench.faces.align import Geometry, largest_box
from fvr_bench.faces.frames import Frame
from fvr_bench.faces.memo import MEMO
from fvr_bench.faces.shared import SharedBackend, shared


class DlibFaces(SharedBackend):
    """dlib detection, 68 landmarks and 128-D identity descriptors (models load lazily)."""

    _lazy = ("_detector", "_sp68", "_sp5", "_rec")

    def __init__(self, detector: str = "hog", upsample: int | str = "auto") -> None:
        if detector not in ("hog", "mmod"):
            raise ConfigError(f"dlib detector must be 'hog' or 'mmod', got {detector!r}")
        if upsample != "auto" and (isinstance(upsample, bool) or not isinstance(upsample, int) or upsample < 0):
            raise ConfigError(f"dlib upsample must be an integer >= 0 or 'auto', got {upsample!r}")
        self.detector_name = detector
        self.upsample = upsample
        self._detector = None
        self._sp68 = None
        self._sp5 = None
        self._rec = None

    def settings(self) -> dict[str, Any]:
        return {"detector": self.detector_name, "upsample": self.upsample}

    @staticmethod
    def _dlib():
        try:
            import dlib
        except ImportError as error:  # pragma: no cover - dlib is a declared backend extra
            raise ConfigError("dlib face metrics need dlib: pip install 'fvr_bench[backends]' (dlib-bin)") from error
        return dlib

    def required_weights(self, landmarks: bool = False, identity: bool = False) -> list[str]:
        names = ["dlib_mmod_face_detector"] if self.detector_name == "mmod" else []
        if landmarks:
            names.append("dlib_shape_predictor_68")
        if identity:
            names += ["dlib_shape_predictor_5", "dlib_face_recognition_resnet"]
        return names

    # -- detection -------------------------------------------------------------------

    def _run_detector(self, image: np.ndarray, upsample: int) -> list[tuple[float, float, float, float]]:
        dlib = self._dlib()
        if self._detector is None:
            if self.detector_name == "hog":
                self._detector = dlib.get_frontal_face_detector()
            else:
                self._detector = dlib.cnn_face_detection_model_v1(str(weight_registry.locate("dlib_mmod_face_detector")))
        found = self._detector(image, upsample)
        rects = [d.rect for d in found] if self.detector_name == "mmod" else list(found)
        return [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]

    def detect(self, frame: Frame) -> Geometry | None:
        """The largest face box of a frame, or None (memoised)."""

        def compute() -> Geometry | None:
            levels = [0, 1] if self.upsample == "auto" else [int(self.upsample)]
            for level in levels:
                boxes = self._run_detector(frame.image, level)
                if boxes:
                    return Geometry(box=tuple(float(v) for v in boxes[largest_box(boxes)]))
            return None

        key = (self.detector_name, self.upsample, frame.digest)
        return MEMO.get_or_compute("dlib.detect", key, compute)

    @staticmethod
    def _rect(geometry: Geometry):
        dlib = DlibFaces._dlib()
        x0, y0, x1, y1 = (int(round(v)) for v in geometry.box)
        return dlib.rectangle(x0, y0, x1, y1)

    # -- landmarks and identity ------------------------------------------------------

    def landmarks68(self, frame: Frame, geometry: Geometry) -> np.ndarray:
        """68 landmarks ``(68, 2)`` in pixels (x, y), predicted inside ``geometry.box``."""

        def compute() -> np.ndarray:
            if self._sp68 is None:
                self._sp68 = self._dlib().shape_predictor(str(weight_registry.locate("dlib_shape_predictor_68")))
            shape = self._sp68(frame.image, self._rect(geometry))
            return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

        return MEMO.get_or_compute("dlib.landmarks68", (frame.digest, geometry.key), compute)

    def descriptor(self, frame: Frame, geometry: Geometry) -> np.ndarray:
        """dlib's 128-D face descriptor ``(128,)`` (5-point chip alignment in the box)."""

        def compute() -> np.ndarray:
            dlib = self._dlib()
            if self._sp5 is None:
                self._sp5 = dlib.shape_predictor(str(weight_registry.locate("dlib_shape_predictor_5")))
                self._rec = dlib.face_recognition_model_v1(str(weight_registry.locate("dlib_face_recognition_resnet")))
            shape = self._sp5(frame.image, self._rect(geometry))
            return np.array(self._rec.compute_face_descriptor(frame.image, shape), dtype=np.float64)

        return MEMO.get_or_compute("dlib.descriptor", (frame.digest, geometry.key), compute)


def shared_dlib(detector: str = "hog", upsample: int | str = "auto") -> DlibFaces:
    """The process-wide dlib backend of these settings (its models load once)."""
    DlibFaces(detector, upsample)  # validate the settings before sharing
    return shared(("dlib", detector, upsample), lambda: DlibFaces(detector, upsample))
