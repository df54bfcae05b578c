"""Face-region crops of a clip, the images the MLLM grades.

VividFace finds the face region with a face parser before prompting Qwen2.5-VL. No
face-parsing network ships offline with this project (BiSeNet is a user-supplied file),
so the region comes from the project's offline face detectors instead:

* ``haar`` (default) — OpenCV's frontal-face Haar cascade, the detector the sample-set
  builder uses (:func:`fvr_bench.data.sample.detect_faces`);
* ``dlib`` — dlib's HOG detector through the shared face backend (slower, more robust to
  tilted heads);
* ``none`` — the frames already are face crops (VFHQ-style aligned sets): the centred
  square of each frame is used.

``count`` frames are sampled evenly over the clip; the face box of each sampled frame is
detected and ONE square box (median centre and size, ``margin`` × the face box, kept
inside the frame) crops all of them. A single box, not one per frame: the rubric grades
stability and shake, which a crop that follows the head would hide. Crops are resized to
``size``² (a multiple of 28, Qwen2.5-VL's 14-px patches merged 2×2, so the model sees the
pixels as cropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fvr_bench.data.sample import (
    CropBox,
    crop_square,
    detect_faces,
    resize_square,
    stable_square_box,
)
from fvr_bench.errors import ConfigError, DataError

DETECTORS = ("haar", "dlib", "none")
NO_FACE_POLICIES = ("skip", "full_frame")
QWEN_PIXEL_MULTIPLE = 28


@dataclass
class FaceCrops:
    """The graded images of one clip.

    images:  uint8 ``(N, size, size, 3)`` RGB face crops, in time order.
    indices: the clip frame each crop comes from.
    box:     the square crop in source pixels (None for ``detector=none``).
    region:  ``detected`` (a face box was found), ``full_frame`` (none found, the whole
             frame used as ``on_no_face=full_frame`` asks) or ``given`` (``detector=none``).
    detections: on how many of the sampled frames a face was found.
    """

    images: np.ndarray
    indices: list[int]
    box: CropBox | None
    region: str
    detections: int


def sample_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``num_frames`` (first and last
    included), without repeats when the clip is shorter than ``count``."""
    if num_frames < 1 or count < 1:
        raise ValueError(f"need at least one frame and one sample (got {num_frames}, {count})")
    if count == 1:
        return [num_frames // 2]
    return sorted({round(float(i)) for i in np.linspace(0, num_frames - 1, count)})


def centre_square(height: int, width: int) -> CropBox:
    side = min(height, width)
    return CropBox((width - side) // 2, (height - side) // 2, side)


class FaceRegionExtractor:
    """Clip → face crops for the scorer (see the module docstring).

    detector:   ``haar`` | ``dlib`` | ``none``.
    margin:     crop side = ``margin`` × the median face-box side (bounded by the frame).
    size:       output side in pixels, a multiple of 28.
    on_no_face: ``skip`` (the clip is not graded) or ``full_frame``.
    """

    def __init__(self, detector: str = "haar", margin: float = 1.3, size: int = 448, on_no_face: str = "skip") -> None:
        if detector not in DETECTORS:
            raise ConfigError(f"faces.detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
        if on_no_face not in NO_FACE_POLICIES:
            raise ConfigError(f"faces.on_no_face must be one of {', '.join(NO_FACE_POLICIES)}, got {on_no_face!r}")
        if not margin >= 1.0:
            raise ConfigError(f"faces.margin must be >= 1 (the crop holds the whole face box), got {margin}")
        if size < QWEN_PIXEL_MULTIPLE or size % QWEN_PIXEL_MULTIPLE:
            raise ConfigError(f"faces.size must be a positive multiple of {QWEN_PIXEL_MULTIPLE} (Qwen2.5-VL patches), got {size}")
        self.detector = detector
        self.margin = float(margin)
        self.size = int(size)
        self.on_no_face = on_no_face

    def settings(self) -> dict:
        return {"detector": self.detector, "margin": self.margin, "size": self.size, "on_no_face": self.on_no_face}

    def _detect(self, frames: np.ndarray) -> np.ndarray:
        """Face boxes ``[i, x, y, w, h]`` of uint8 ``(N, H, W, 3)`` frames (one row per hit)."""
        if self.detector == "haar":
            return detect_faces(frames, every=1)
        from fvr_bench.faces.dlib import DlibFaces
        from fvr_bench.faces.frames import Frame

        dlib_faces = DlibFaces(detector="hog", upsample="auto")
        rows = []
        for index, image in enumerate(frames):
            geometry = dlib_faces.detect(Frame(image))
            if geometry is not None:
                x0, y0, x1, y1 = geometry.box
                rows.append((index, round(x0), round(y0), round(x1 - x0), round(y1 - y0)))
        return np.asarray(rows, dtype=np.int64).reshape(-1, 5)

    def extract(self, video: torch.Tensor, count: int, clip_id: str = "") -> FaceCrops | None:
        """``video`` ``(T, 3, H, W)`` float in [0, 1] → :class:`FaceCrops` of ``count``
        sampled frames; None when no face is found and ``on_no_face=skip``."""
        if video.ndim != 4 or video.shape[1] != 3:
            raise DataError(f"clip {clip_id}: expected (T, 3, H, W) frames, got {tuple(video.shape)}")
        indices = sample_indices(len(video), count)
        sampled = video[indices].detach().float().clamp(0, 1).mul(255).add(0.5).floor().to(torch.uint8)
        frames = sampled.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        height, width = frames.shape[1:3]
        if self.detector == "none":
            box, region, hits = centre_square(height, width), "given", 0
        else:
            detections = self._detect(frames)
            hits = len(detections)
            if hits:
                box = stable_square_box(detections, (height, width), face_fraction=1.0 / self.margin, max_pad=0.0)
                region = "detected"
            elif self.on_no_face == "full_frame":
                box, region = centre_square(height, width), "full_frame"
            else:
                return None
        images = resize_square(np.ascontiguousarray(crop_square(frames, box)), self.size)
        return FaceCrops(images=images, indices=indices, box=box if self.detector != "none" else None,
                         region=region, detections=hits)
