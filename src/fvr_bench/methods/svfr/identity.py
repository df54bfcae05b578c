"""SVFR's identity tokens: 5 face points → 112² crop → ArcFace layer4 map → 49 tokens.

SVFR conditions its UNet's cross-attention on ``(1, 49, 1024)`` ID tokens: the reference
frame (at inference the last frame of the first-pass output) is aligned on its 5 face
points, cropped to 112², run through the frozen Glint360K iresnet100
(:mod:`.iresnet`), and its layer4 map ``(1, 512, 7, 7)`` is projected by
:class:`IDTokenProjection` (``id_linear`` in the release).

Two crops (:data:`ID_CROPS`, option ``method.restore.id_crop``):

* ``svfr_official`` — what the released ``infer.py`` does: similarity transform of the
  5 points onto :data:`SVFR_TEMPLATE_256` ``· H / 256``, ``cv2.warpAffine`` to the frame
  size (bicubic), then rows ``0:224`` and columns ``16:240`` of the warped frame resized
  to 112². At H = 256 that window is exactly the ArcFace 112 crop at 2×; at H = 512 (the
  SVFR resolution) it is the top-left quadrant of the aligned face (eyes and forehead,
  no mouth) — an apparent bug of the official code, kept because it is what the released
  ``id_linear`` weights were trained and run with.
* ``aligned_112`` — the geometrically correct ArcFace crop
  (:func:`fvr_bench.faces.align.align_arcface`, bilinear).

The face detector differs from the release (a YOLOv5-face 5-point model there); here it
is MTCNN by default, or any ``detect(image_uint8) -> (5, 2) points | None`` callable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.faces.align import (
    ARCFACE_TEMPLATE_112,
    align_arcface,
    similarity_transform,
)
from fvr_bench.faces.frames import frames_of
from fvr_bench.faces.mtcnn import MTCNNDetector, shared_mtcnn
from fvr_bench.methods.svfr.iresnet import INPUT_SIZE, IResNet
from fvr_bench.state_dicts import load_state, read_state

ID_CROPS = ("svfr_official", "aligned_112")
ID_CROP_OPTION = "method.restore.id_crop"

# ``mean_face_lm5p_256`` of SVFR's dataset.py: the ArcFace 112 template at 2× with x
# shifted by 16 px, i.e. the 112 crop at 2× sits in rows 0:224, columns 16:240 of 256².
SVFR_TEMPLATE_256 = ARCFACE_TEMPLATE_112 * 2.0 + np.array([16.0, 0.0])
SVFR_TEMPLATE_SIZE = 256
# the window the official code cuts from the warped frame, whatever its size
SVFR_WINDOW_ROWS = (0, 224)
SVFR_WINDOW_COLS = (16, 240)

NO_FACE = "no face detected in the reference frame"

Detect = Callable[[np.ndarray], "np.ndarray | None"]


class IDTokenProjection(nn.Module):
    """SVFR's ``IDProjConvModel`` (``id_linear``): 1×1 conv (no bias) then LayerNorm per token.

    ``(N, in_channels, 7, 7)`` → ``(N, 49, out_channels)``. Attribute names follow the
    release (``project1024``, ``final_norm``) whatever ``out_channels`` is, so its
    ``id_linear`` file loads strictly.
    """

    def __init__(self, in_channels: int = 512, out_channels: int = 1024) -> None:
        super().__init__()
        self.project1024 = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.final_norm = nn.LayerNorm(out_channels)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, h, w)`` → ``(N, h·w, C_out)`` tokens (row-major over the map)."""
        tokens = self.project1024(feature_map).flatten(2).transpose(1, 2)
        return self.final_norm(tokens)


# --------------------------------------------------------------------------- ID crops


def check_id_crop(mode: str) -> str:
    """``mode`` if it is one of :data:`ID_CROPS`, else a :class:`ConfigError`."""
    if mode not in ID_CROPS:
        raise ConfigError(f"{ID_CROP_OPTION}={mode!r} is not an ID crop; choose one of {', '.join(ID_CROPS)}")
    return mode


def to_signed_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` RGB → float32 ``(1, 3, H, W)`` in [-1, 1] (``(x/255 - 0.5) / 0.5``,
    torchvision ``ToTensor`` + ``Normalize(0.5, 0.5)`` as the release)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32) / 255.0
    return ((x - 0.5) / 0.5).unsqueeze(0)


def svfr_official_crop(image: np.ndarray, points5: np.ndarray) -> torch.Tensor:
    """The release's ID crop (see the module docstring): ``(1, 3, 112, 112)`` in [-1, 1].

    The official ``warpAffine`` passes ``(height, width)`` as the output size, which is
    ``(W, H)`` only for square frames (SVFR's 512²); here the warp keeps the frame's
    ``(W, H)``. The template scale is ``H / 256`` as there.
    """
    height, width = image.shape[:2]
    template = SVFR_TEMPLATE_256 * (height / SVFR_TEMPLATE_SIZE)
    matrix = similarity_transform(points5, template)
    warped = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_CUBIC)
    x = to_signed_tensor(warped)
    window = x[:, :, SVFR_WINDOW_ROWS[0]:SVFR_WINDOW_ROWS[1], SVFR_WINDOW_COLS[0]:SVFR_WINDOW_COLS[1]]
    return F.interpolate(window, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


def aligned_112_crop(image: np.ndarray, points5: np.ndarray) -> torch.Tensor:
    """The ArcFace-aligned 112² crop (bilinear): ``(1, 3, 112, 112)`` in [-1, 1]."""
    return to_signed_tensor(align_arcface(image, points5, INPUT_SIZE))


def id_crop(image: np.ndarray, points5: np.ndarray, mode: str) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` RGB frame + its 5 face points ``(5, 2)`` (x, y in pixels; eyes,
    nose, mouth corners) → the ArcFace input ``(1, 3, 112, 112)`` float32 in [-1, 1]."""
    check_id_crop(mode)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"id_crop needs a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    points5 = np.asarray(points5, dtype=np.float64).reshape(5, 2)
    crop = svfr_official_crop if mode == "svfr_official" else aligned_112_crop
    return crop(image, points5)


# --------------------------------------------------------------------------- tokens


class ReferenceIdentity(nn.Module):
    """Reference frame → SVFR ID tokens: detect 5 points, :func:`id_crop`, frozen ArcFace,
    trainable :class:`IDTokenProjection`.

    ``detector``: None → the shared MTCNN (largest face, run on the frame's device), or a
    callable ``detect(image_uint8 (H, W, 3) RGB) -> (5, 2) points | None``.
    The ArcFace stays frozen and in eval mode (as in SVFR, where only ``id_linear`` trains).
    """

    def __init__(self, arcface: IResNet, projection: IDTokenProjection, id_crop: str = "svfr_official",
                 detector: Detect | MTCNNDetector | None = None) -> None:
        super().__init__()
        self.arcface = arcface.eval().requires_grad_(False)
        self.projection = projection
        self.id_crop = check_id_crop(id_crop)
        self.detector = detector  # None: the shared MTCNN, resolved on first use

    def train(self, mode: bool = True) -> ReferenceIdentity:
        super().train(mode)
        self.arcface.eval()  # frozen BN statistics, whatever the mode of the rest
        return self

    @property
    def detector_name(self) -> str:
        if self.detector is None or isinstance(self.detector, MTCNNDetector):
            return "mtcnn"
        return getattr(self.detector, "__name__", type(self.detector).__name__)

    def detect(self, frame: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """``(3, H, W)`` in [0, 1] → (uint8 ``(H, W, 3)`` RGB frame, ``(5, 2)`` points of
        the largest face or None)."""
        found = frames_of(frame.unsqueeze(0))[0]
        if self.detector is None or isinstance(self.detector, MTCNNDetector):
            mtcnn = self.detector if self.detector is not None else shared_mtcnn()
            geometry = mtcnn.detect_many([found], frame.device)[0]
            points = None if geometry is None else geometry.points
        else:
            points = self.detector(found.image)
        return found.image, None if points is None else np.asarray(points, dtype=np.float64).reshape(5, 2)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """ArcFace crops ``(N, 3, 112, 112)`` in [-1, 1] → ID tokens ``(N, 49, D)`` in the
        projection's dtype (the ArcFace runs without gradients in its own dtype/device)."""
        weight = self.projection.project1024.weight
        arcface_param = next(self.arcface.parameters())
        with torch.no_grad():
            _, layer4_map = self.arcface(crops.to(device=arcface_param.device, dtype=arcface_param.dtype))
        return self.projection(layer4_map.to(device=weight.device, dtype=weight.dtype))

    def tokens(self, frame: torch.Tensor) -> tuple[torch.Tensor | None, str]:
        """Reference frame ``(3, H, W)`` in [0, 1] → (ID tokens ``(1, 49, D)`` or None, a
        sentence saying how they were made or why there are none)."""
        image, points = self.detect(frame)
        if points is None:
            return None, NO_FACE
        crop = id_crop(image, points, self.id_crop)
        return self(crop), f"id tokens from {self.detector_name} 5 points, crop {self.id_crop}"


# --------------------------------------------------------------------------- weights


BN_COUNTER = "num_batches_tracked"


def with_bn_counters(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with BatchNorm's ``num_batches_tracked`` counters added (as 0) when the file
    has none at all, as ``torch`` itself does for such (pre-0.4.1 style) files; the counters
    are unused at inference. A file with only some of them stays a misfit."""
    if any(key.endswith(BN_COUNTER) for key in state):
        return state
    counters = {key: torch.zeros((), dtype=torch.long) for key in net.state_dict() if key.endswith(BN_COUNTER)}
    return {**state, **counters}


def load_official_identity(arcface: nn.Module, projection: nn.Module, arcface_path: str | Path,
                           projection_path: str | Path) -> None:
    """Load the released ``insightface_glint360k.pth`` into ``arcface`` and ``id_linear``
    into ``projection``, strictly. A missing file raises :class:`WeightsMissingError` (the
    release would silently keep a random ArcFace); a misfit raises ``ConfigError``."""
    for net, path, what in ((arcface, arcface_path, "SVFR ArcFace (insightface_glint360k.pth)"),
                            (projection, projection_path, "SVFR ID projection (id_linear)")):
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsMissingError(f"{what} weights not found: {path}")
        load_state(net, with_bn_counters(net, read_state(path)), f"{what} {path}")
