"""Frames as every face tool sees them: 8-bit RGB with a content digest (the memo key).

Frames enter as ``(N, 3, H, W)`` float tensors in [0, 1] and are converted to 8-bit RGB
exactly as :func:`fvr_bench.video.as_uint8` writes them (``floor(255·x + 0.5)``): every
face tool works on 8-bit images, and the score of an in-memory clip then equals the
score of its saved PNGs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


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
