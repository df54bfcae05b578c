"""Degradations: composable ops, the paper presets (``conf/degradation/*.yaml``), and the
lossless LQ cache.

Modules, one job each:

- :mod:`.base`    op base class, run context, seeding from (seed, clip id), range checks
- :mod:`.ops`     blur, down/up-sampling, Gaussian noise, grayscale, brightness flicker,
                  random-apply wrapper
- :mod:`.codec`   real video compression through PyAV (libx264 CRF; mpeg4 compat)
- :mod:`.masks`   GPEN-style brush-stroke masks (inpainting)
- :mod:`.compose` :class:`Compose`, the preset object Hydra instantiates
- :mod:`.cache`   :class:`LQCache`, PNG frames + JSON params, atomic writes
"""

from .base import DEGRADATION_VERSION, TASKS, DegradedClip, Op, clip_hash
from .cache import LQCache
from .codec import VideoCodec, encode_decode
from .compose import Compose, build_degradation, task_parts
from .masks import BrushStrokeMask
from .ops import (
    BrightnessFlicker,
    Downsample,
    GaussianBlur,
    GaussianNoise,
    Grayscale,
    RandomApply,
    Resize,
)

__all__ = [
    "DEGRADATION_VERSION",
    "TASKS",
    "BrightnessFlicker",
    "BrushStrokeMask",
    "Compose",
    "DegradedClip",
    "Downsample",
    "GaussianBlur",
    "GaussianNoise",
    "Grayscale",
    "LQCache",
    "Op",
    "RandomApply",
    "Resize",
    "VideoCodec",
    "build_degradation",
    "clip_hash",
    "encode_decode",
    "task_parts",
]
