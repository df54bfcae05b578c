"""Pixel-domain degradation ops: blur, resize, noise, grayscale, brightness flicker, and
the random-apply wrapper.

Every op receives a list of float32 ``(H, W, 3)`` RGB frames in [0, 1] and returns the
same kind of list (see :mod:`fvr_bench.degradations.base`). Parameters are drawn once per
video unless the op runs per frame. The video codec lives in
:mod:`fvr_bench.degradations.codec`, inpainting masks in
:mod:`fvr_bench.degradations.masks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from fvr_bench.errors import ConfigError

from .base import Context, Op, as_op, as_range, check_choice, child_seed, uniform

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "bilinear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def _interpolation_choices(value: Any, owner: str) -> list[str]:
    """One interpolation name, or a list of names drawn uniformly per video (KEEP style)."""
    names = [value] if isinstance(value, str) else list(value) if value is not None else []
    if not names:
        raise ConfigError(f"{owner}: give an interpolation name or a non-empty list of names")
    for name in names:
        check_choice(name, owner, tuple(INTERPOLATIONS))
    return names


def _draw_interpolation(rng: np.random.Generator, names: list[str]) -> str:
    return names[0] if len(names) == 1 else names[int(rng.integers(len(names)))]


def _resize(frame: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    out = cv2.resize(frame, (width, height), interpolation=INTERPOLATIONS[interpolation])
    # Bicubic and Lanczos overshoot; the papers' code clips right after resizing.
    return np.clip(out, 0.0, 1.0, out=out)


# --------------------------------------------------------------------------- blur


class GaussianBlur(Op):
    """Isotropic Gaussian blur ``x ⊛ k_σ``.

    sigma:       σ in pixels, a number or a ``[low, high]`` range (uniform draw), > 0.
    kernel_size: odd kernel side; None → ``2·ceil(3σ) + 1`` (covers ±3σ). BFVR-STC fixes 11.
    The kernel is the normalised sampled Gaussian (BasicSR's ``bivariate_Gaussian`` with
    equal sigmas equals ``cv2.getGaussianKernel`` outer product); borders reflect-101 as
    ``cv2.filter2D`` does in the papers' code.
    """

    def __init__(self, sigma: Any = (0.1, 10.0), kernel_size: int | None = None, per_frame: bool | None = None):
        super().__init__(per_frame)
        self.sigma = as_range(sigma, "GaussianBlur.sigma", low=0.0, low_open=True)
        if kernel_size is not None:
            if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1 or kernel_size % 2 == 0:
                raise ConfigError(f"GaussianBlur.kernel_size: must be a positive odd integer or null, got {kernel_size!r}")
            kernel_size = int(kernel_size)
        self.kernel_size = kernel_size
        self._remember(sigma=list(self.sigma), kernel_size=kernel_size)

    def draw(self, rng: np.random.Generator, ctx: Context) -> dict[str, Any]:
        sigma = uniform(rng, self.sigma)
        size = self.kernel_size or 2 * math.ceil(3.0 * sigma) + 1
        return {"sigma": sigma, "kernel_size": int(size)}

    def apply(self, frames: list[np.ndarray], params: dict[str, Any], ctx: Context) -> list[np.ndarray]:
        kernel = cv2.getGaussianKernel(params["kernel_size"], params["sigma"], cv2.CV_64F)
        # Separable filtering: identical kernel to filter2D(outer(k, k)), ~k/2 times faster.
        return [cv2.sepFilter2D(f, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT_101) for f in frames]


# --------------------------------------------------------------------------- resize


class Downsample(Op):
    """Resize down by a factor r: ``(H, W) → (⌊H / r⌋, ⌊W / r⌋)`` (the papers' ``H // r``).

    factor:        r ≥ 1, a number or a ``[low, high]`` range (uniform, non-integer allowed).
    interpolation: nearest | linear | bicubic | area | lanczos, or a list drawn uniformly
                   per video. Output clipped to [0, 1].
    """

    def __init__(self, factor: Any = (1.0, 4.0), interpolation: Any = "bicubic", per_frame: bool | None = None):
        super().__init__(per_frame)
        self.factor = as_range(factor, "Downsample.factor", low=1.0)
        self.interpolation = _interpolation_choices(interpolation, "Downsample.interpolation")
        self._remember(factor=list(self.factor), interpolation=self.interpolation)

    def draw(self, rng: np.random.Generator, ctx: Context) -> dict[str, Any]:
        return {"factor": uniform(rng, self.factor), "interpolation": _draw_interpolation(rng, self.interpolation)}

    def apply(self, frames: list[np.ndarray], params: dict[str, Any], ctx: Context) -> list[np.ndarray]:
        r = params["factor"]
        out = []
        for frame in frames:
            height, width = frame.shape[:2]
            # `int(H // r)` exactly as KEEP and BFVR-STC compute it (floor of a float division).
            out.append(_resize(frame, max(1, int(height // r)), max(1, int(width // r)), params["interpolation"]))
        return out


class Resize(Op):
    """Resize to a fixed size, or back to the clip's input size.

    size:          None → the ground truth's ``(H, W)`` (BFVR-STC's final ``↑r`` to 512²);
                   an int → square; ``[height, width]``.
    interpolation: as for :class:`Downsample` (BFVR-STC: linear).
    """

    def __init__(self, size: Any = None, interpolation: Any = "linear", per_frame: bool | None = None):
        super().__init__(per_frame)
        if size is not None:
            if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
                size = [int(size), int(size)]
            else:
                try:
                    size = [int(s) for s in size]
                except (TypeError, ValueError):
                    raise ConfigError(f"Resize.size: expected null, an int or [height, width], got {size!r}") from None
                if len(size) != 2 or min(size) < 1:
                    raise ConfigError(f"Resize.size: expected [height, width] of positive ints, got {size!r}")
        self.size = size
        self.interpolation = _interpolation_choices(interpolation, "Resize.interpolation")
        self._remember(size=size, interpolation=self.interpolation)

    def draw(self, rng: np.random.Generator, ctx: Context) -> dict[str, Any]:
        height, width = self.size if self.size is not None else ctx.input_size
        return {"size": [int(height), int(width)], "interpolation": _draw_interpolation(rng, self.interpolation)}

    def apply(self, frames: list[np.ndarray], params: dict[str, Any], ctx: Context) -> list[np.ndarray]:
        height, width = params["size"]
        return [_resize(f, height, width, params["interpolation"]) for f in frames]


# --------------------------------------------------------------------------- noise


class GaussianNoise(Op):
    """Additive white Gaussian noise ``+ n_δ``, clipped to [0, 1].

    sigma:        δ, a number or ``[low, high]`` range (uniform draw per video), ≥ 0.
    sigma_unit:   "0-255" — δ is a standard deviation on the 8-bit scale (δ = 10 means
                  10/255; VividFace, IP-FVR, BFVR-STC's ``[0, 5]/255``), or "0-1" — δ is on
                  the [0, 1] scale of the frames.
    same_pattern: one noise field for every frame of the video, as BFVR-STC's official
                  code does (it resets NumPy's RNG state before each frame's ``randn``).
                  Otherwise every frame gets its own field.
    gray_prob:    probability (per video) that the noise is the same on R, G and B
                  (BasicSR's ``gray_prob``); 0 = colour noise.

    The fields come from a generator seeded by ``pattern_seed``, an integer drawn with the
    other parameters and recorded in the params, so any clip's noise can be regenerated.
    """

    UNITS = {"0-255": 1.0 / 255.0, "0-1": 1.0}

    def __init__(
        self,
        sigma: Any = (0.0, 10.0),
        sigma_unit: str = "0-255",
        same_pattern: bool = False,
        gray_prob: float = 0.0,
        per_frame: bool | None = None,
    ):
        super().__init__(per_frame)
        self.sigma = as_range(sigma, "GaussianNoise.sigma", low=0.0)
        self.sigma_unit = check_choice(sigma_unit, "GaussianNoise.sigma_unit", tuple(self.UNITS))
        if self.sigma[1] * self.UNITS[self.sigma_unit] > 1.0:
            raise ConfigError(
                f"GaussianNoise.sigma: {list(self.sigma)} with sigma_unit {sigma_unit!r} exceeds the whole [0, 1] "
                "range of the frames; did you mean sigma_unit: '0-255'?"
            )
        if not isinstance(same_pattern, bool):
            raise ConfigError(f"GaussianNoise.same_pattern must be true or false, got {same_pattern!r}")
        self.same_pattern = same_pattern
        self.gray_prob = as_range(gray_prob, "GaussianNoise.gray_prob", low=0.0, high=1.0)[0]
        self._remember(sigma=list(self.sigma), sigma_unit=sigma_unit, same_pattern=same_pattern, gray_prob=self.gray_prob)

    def draw(self, rng: np.random.Generator, ctx: Context) -> dict[str, Any]:
        sigma = uniform(rng, self.sigma)
        gray = bool(self.gray_prob > 0.0 and rng.random() < self.gray_prob)
        return {
            "sigma": sigma,
            "sigma_unit": self.sigma_unit,
            "gray": gray,
            "pattern_seed": int(rng.integers(2**63)),
        }

    def apply(self, frames: list[np.ndarray], params: dict[str, Any], ctx: Context) -> list[np.ndarray]:
        std = np.float32(params["sigma"] * self.UNITS[params["sigma_unit"]])
        if std == 0.0:
            return frames
        rng = np.random.default_rng(params["pattern_seed"])
        channels = 1 if params["gray"] else 3

        def field(shape: tuple[int, ...]) -> np.ndarray:
            return rng.standard_normal((shape[0], shape[1], channels), dtype=np.float32) * std

        if self.same_pattern:
            shapes = {f.shape for f in frames}
            if len(shapes) > 1:
                raise ConfigError(
                    "GaussianNoise.same_pattern needs frames of one size; an earlier op gave them "
                    f"different sizes ({sorted(shapes)}) — pin that op with per_frame: false"
                )
            shared = field(frames[0].shape)
            return [np.clip(f + shared, 0.0, 1.0) for f in frames]
        return [np.clip(f + field(f.shape), 0.0, 1.0) for f in frames]


# --------------------------------------------------------------------------- colour / brightness


class Grayscale(Op):
    """Luma as three equal channels (SVFR colorization input).

    Uses ``cv2.COLOR_RGB2GRAY`` (ITU-R BT.601 weights 0.299, 0.587, 0.114). Nothing is drawn.
    """

    def apply(self, frames: list[np.ndarray], params: dict[str, Any], ctx: Context) -> list[np.ndarray]:
        out = []
        for frame in frames:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            out.append(np.repeat(gray[:, :, None], 3, axis=2))
        return out


class BrightnessFlicker(Op):
    """Per-frame brightness flicker (BFVR-STC ``gen_video_flickers``).

    Each frame independently, with probability ``p``: ``cv2.convertScaleAbs(255·x, alpha)``
    with alpha uniform in ``alpha``, i.e. ``saturate_uint8(|alpha · 255x|) / 255``. The
    flickered frames are quantised to 8 bits exactly as in the official code.

    Inherently per frame: the flag ``per_frame`` changes nothing here.
    """

    def __init__(self, p: float = 0.3, alpha: Any = (0.5, 1.5), per_frame: bool | None = None):
        super().__init__(per_frame)
        self.p = as_range(p, "BrightnessFlicker.p", low=0.0, high=1.0)[0]
        self.alpha = as_range(alpha, "BrightnessFlicker.alpha", low=0.0)
        self._remember(p=self.p, alpha=list(self.alpha))

    def run(self, frames, seed, ctx):
        rng = np.random.default_rng(seed)
        alphas: list[float | None] = []
        for _ in frames:
            # Same draw order as the official loop: the coin, then alpha only if it flickers.
            alphas.append(uniform(rng, self.alpha) if rng.random() < self.p else None)
        out = [
            f if a is None else cv2.convertScaleAbs(f * np.float32(255.0), alpha=a, beta=0).astype(np.float32) / np.float32(255.0)
            for f, a in zip(frames, alphas)
        ]
        return out, {"alpha": [1.0 if a is None else a for a in alphas], "flickered": [a is not None for a in alphas]}


# --------------------------------------------------------------------------- wrapper


class RandomApply(Op):
    """Apply ``ops`` in order with probability ``p`` (one coin per video), else pass through.

    IP-FVR heavy: a second degradation round w.p. 0.9. The coin is drawn once per video
    even with ``per_frame: true`` (a "round" is a property of the video); the wrapped ops
    follow ``per_frame`` as usual. Params: ``{"applied": bool, "ops": [...]}``.
    """

    def __init__(self, p: float = 0.5, ops: Sequence[Any] = (), per_frame: bool | None = None):
        super().__init__(per_frame)
        self.p = as_range(p, "RandomApply.p", low=0.0, high=1.0)[0]
        if ops is None or isinstance(ops, (str, bytes)) or hasattr(ops, "items"):
            raise ConfigError(f"RandomApply.ops: expected a list of ops, got {ops!r}")
        self.ops = [as_op(op, f"RandomApply.ops[{i}]") for i, op in enumerate(ops)]
        if not self.ops:
            raise ConfigError("RandomApply.ops: the list is empty; give at least one op to apply")
        self._remember(p=self.p, ops=[op.config() for op in self.ops])

    def run(self, frames, seed, ctx):
        coin = np.random.default_rng(child_seed(seed, 0)).random()
        applied = bool(coin < self.p)
        records: list[dict[str, Any]] = []
        if applied:
            # A nested per_frame pin on the wrapper is passed down to ops that follow the pipeline.
            sub_ctx = ctx if self.per_frame is None else Context(ctx.input_size, ctx.n_frames, self.per_frame, ctx.mask)
            for index, op in enumerate(self.ops):
                frames, params = op.run(frames, child_seed(seed, index + 1), sub_ctx)
                records.append({"op": type(op).__name__, **params})
            ctx.mask = sub_ctx.mask
        return frames, {"p": self.p, "applied": applied, "ops": records}


__all__ = [
    "BrightnessFlicker",
    "Downsample",
    "GaussianBlur",
    "GaussianNoise",
    "Grayscale",
    "INTERPOLATIONS",
    "RandomApply",
    "Resize",
]
