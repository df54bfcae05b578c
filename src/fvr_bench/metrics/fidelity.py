"""PSNR and SSIM, exactly as BasicSR's ``calculate_psnr`` / ``calculate_ssim`` compute them.

Both are full-reference, per frame, averaged over the frames of a clip (and the evaluator
averages clips). Inputs are ``(B, T, 3, H, W)`` float tensors in [0, 1]; the work is done
in float64 on the inputs' device, batched over all frames (SSIM by separable
``conv2d``), so it runs on a GPU as well as on a CPU.

BasicSR conventions reproduced here:

* values on the [0, 255] scale, float64;
* ``quantize=True`` (default): frames are first rounded to 8-bit levels exactly as
  ``fvr_bench.video.as_uint8`` writes them (``floor(255·x + 0.5)`` in float32), because
  BasicSR measures uint8 images read from disk. For frames that come from uint8 files
  this is a no-op; for a restorer's float output it is what saving it would do, so the
  in-memory score equals the score of the saved PNGs.
  ``quantize=False`` measures the float values as they are;
* ``color_space="y"``: the luma of BT.601 YCbCr (MATLAB ``rgb2ycbcr``,
  :func:`fvr_bench.video.rgb_to_y`), in [16, 235], **not** rounded (BasicSR's
  ``to_y_channel`` does not round either); ``"rgb"``: all three channels;
* ``crop_border``: pixels removed from each edge before measuring;
* means over pixels are summed in a fixed order (:func:`~fvr_bench.metrics.determinism.fixed_order_mean`),
  so values do not change with the number of threads or processes;
* SSIM: 11×11 Gaussian window, σ = 1.5 (``cv2.getGaussianKernel``), C1 = (0.01·255)²,
  C2 = (0.03·255)², 'valid' filtering (the map is 10 pixels smaller in each dimension),
  map mean per channel, then mean over channels. This is also the original MATLAB
  ``ssim_index`` definition (Wang et al. 2004).

The metric id follows the colour space: ``psnr_rgb``, ``psnr_y``, ``ssim_rgb``, ``ssim_y``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fvr_bench.errors import ClipNotScorableError, ConfigError
from fvr_bench.metrics.base import ClipMetric
from fvr_bench.metrics.determinism import fixed_order_mean
from fvr_bench.video import rgb_to_y

COLOR_SPACES = ("rgb", "y")

# SSIM constants of Wang et al. 2004 / BasicSR, for an 8-bit dynamic range (L = 255).
_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


def quantize_8bit(frames: torch.Tensor) -> torch.Tensor:
    """Float frames in [0, 1] → float64 8-bit levels {0, …, 255}, bit-identical to what
    :func:`fvr_bench.video.as_uint8` writes (clip, ×255, +0.5, floor — in float32, as it
    computes), so scoring a restorer's output in memory and scoring its saved PNGs give
    the same number. Round half up, like MATLAB's ``im2uint8``."""
    x = frames.to(torch.float32).clamp(0.0, 1.0)
    return torch.floor(x * 255.0 + 0.5).to(torch.float64)


def prepare_frames(
    frames: torch.Tensor, color_space: str, crop_border: int, quantize: bool
) -> torch.Tensor:
    """``(..., 3, H, W)`` in [0, 1] → float64 ``(..., C, H', W')`` on the [0, 255] scale.

    ``C`` is 3 for ``"rgb"`` and 1 for ``"y"``; ``H' = H − 2·crop_border`` (same for W).
    """
    x = quantize_8bit(frames) if quantize else frames.to(torch.float64) * 255.0
    if crop_border:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
    if color_space == "y":
        # rgb_to_y works on [0, 1]; Y stays unrounded, as in BasicSR's to_y_channel
        x = rgb_to_y(x / 255.0) * 255.0
    return x


def _check_settings(metric: str, color_space: str, crop_border: int) -> None:
    if color_space not in COLOR_SPACES:
        raise ConfigError(f"{metric}: color_space must be one of {COLOR_SPACES}, got {color_space!r}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise ConfigError(f"{metric}: crop_border must be an integer >= 0, got {crop_border!r}")


def _check_size(metric: str, preds: torch.Tensor, crop_border: int, minimum: int) -> None:
    height, width = preds.shape[-2:]
    if min(height, width) - 2 * crop_border < minimum:
        raise ClipNotScorableError(
            f"{metric}: frames of {width}x{height} with crop_border={crop_border} leave less than "
            f"{minimum} pixels per side"
        )


def _per_frame_chunks(preds: torch.Tensor, target: torch.Tensor, metric: PSNR | SSIM, score) -> torch.Tensor:
    """``score(x, y)`` of every frame pair, ``metric.chunk_frames`` frames at a time so that
    float64 copies of long clips (81 × 512² in VividFace's tables) stay small → ``(B, T)``."""
    batch, frames = preds.shape[:2]
    flat_preds = preds.reshape(batch * frames, *preds.shape[2:])
    flat_target = target.reshape(batch * frames, *target.shape[2:])
    # On a CPU one frame at a time is fastest (the float64 copies stay in cache: measured
    # 0.18 s vs 0.75 s for 24×512² PSNR-Y with 16-frame chunks); a GPU wants big batches.
    chunk = metric.chunk_frames or (16 if preds.is_cuda else 1)
    scores = []
    for start in range(0, batch * frames, chunk):
        stop = start + chunk
        x = prepare_frames(flat_preds[start:stop], metric.color_space, metric.crop_border, metric.quantize)
        y = prepare_frames(flat_target[start:stop], metric.color_space, metric.crop_border, metric.quantize)
        scores.append(score(x, y))
    return torch.cat(scores).reshape(batch, frames)


class PSNR(ClipMetric):
    """Peak signal-to-noise ratio in dB, per frame, mean over frames (BasicSR ``calculate_psnr``).

    ``PSNR = 10·log10(255² / MSE)`` with the MSE over all pixels (and channels) of a
    frame, on the [0, 255] scale in float64.

    Identical frames (MSE = 0): BasicSR returns ``inf``, which turns every mean it enters
    into ``inf``. Here every frame value is capped at ``max_psnr`` (default 100 dB), which
    keeps the ranking monotone and the means finite. Only frames that are identical up
    to a few one-level pixel differences reach the cap (one pixel off by one level: 107 dB
    in a 512×512×3 frame, 89 dB in 64×64×3); every realistic restoration is far below it
    and unaffected. ``max_psnr=None`` keeps BasicSR's ``inf``. The cap is a setting, so it
    is part of the provenance.

    Args:
        color_space: ``"rgb"`` (id ``psnr_rgb``) or ``"y"`` (BT.601 luma, id ``psnr_y``).
        crop_border: pixels removed from each edge before measuring.
        quantize: round frames to 8-bit levels first (see the module docstring).
        max_psnr: cap for identical frames, in dB, or ``None`` for ``inf``.
        chunk_frames: frames per float64 pass (bounds memory; does not change the number);
            None: 1 on a CPU, 16 on a GPU.
    """

    metric_id: ClassVar[str] = "psnr_rgb"  # the instance's id follows color_space
    higher_is_better: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True
    level: ClassVar[str] = "frame"

    def __init__(
        self,
        color_space: str = "rgb",
        crop_border: int = 0,
        quantize: bool = True,
        max_psnr: float | None = 100.0,
        chunk_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_settings("psnr", color_space, crop_border)
        if max_psnr is not None and not max_psnr > 0:
            raise ConfigError(f"psnr: max_psnr must be positive or null, got {max_psnr!r}")
        self.color_space = color_space
        self.crop_border = int(crop_border)
        self.quantize = bool(quantize)
        self.max_psnr = None if max_psnr is None else float(max_psnr)
        self.chunk_frames = None if chunk_frames is None else max(1, int(chunk_frames))
        self.metric_id = f"psnr_{color_space}"

    @torch.no_grad()
    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] (both) → ``(B, T)`` float64 PSNR in dB."""
        assert target is not None
        _check_size(self.metric_id, preds, self.crop_border, 1)

        def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return fixed_order_mean((x - y).square(), start_dim=1)

        mse_per_frame = _per_frame_chunks(preds, target, self, mse)
        psnr = 10.0 * torch.log10((255.0 * 255.0) / mse_per_frame)  # mse == 0 → +inf
        if self.max_psnr is not None:
            psnr = psnr.clamp(max=self.max_psnr)
        return psnr

    def settings(self) -> dict[str, Any]:
        return {
            "color_space": self.color_space,
            "crop_border": self.crop_border,
            "quantize": self.quantize,
            "max_psnr": self.max_psnr,
            "data_range": 255,
        }


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """cv2.getGaussianKernel(size, sigma) in float64: normalised, (size,)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    kernel = torch.exp(-(coords**2) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


_GAUSSIAN_TAPS = tuple(_gaussian_1d(_SSIM_WINDOW, _SSIM_SIGMA).tolist())  # Python floats: exact float64 values

# elements of the five local-moment maps per row strip (~2 MB of float64): the strip's
# operands stay in the CPU's L2 cache through the 2 × 11 taps
_STRIP_ELEMENTS = 1 << 18


def _ssim_from_moments(mu_x, mu_y, xx, yy, xy):
    """The SSIM formula from the five Gaussian-filtered moments (same operations in the
    same order on every path, so every path rounds alike)."""
    mu_x2, mu_y2, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    sigma_x2 = xx - mu_x2
    sigma_y2 = yy - mu_y2
    sigma_xy = xy - mu_xy
    numerator = (2.0 * mu_xy + _SSIM_C1) * (2.0 * sigma_xy + _SSIM_C2)
    denominator = (mu_x2 + mu_y2 + _SSIM_C1) * (sigma_x2 + sigma_y2 + _SSIM_C2)
    return numerator / denominator


def _ssim_maps_conv(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The grouped separable ``conv2d`` formulation (used on GPUs, where cuDNN is fast)."""
    channels = 5 * x.shape[1]  # x, y, x², y², xy for every image channel
    g = torch.tensor(_GAUSSIAN_TAPS, device=x.device, dtype=x.dtype)
    # the five local moments in one grouped pass (no padding = 'valid')
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    filtered = F.conv2d(stacked, g.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    filtered = F.conv2d(filtered, g.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return _ssim_from_moments(*filtered.split(x.shape[1], dim=1))


def _ssim_maps_strips(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CPU path: the separable filter as element-wise multiply-adds over row strips.

    On the CPU, PyTorch's float64 ``conv2d`` (no oneDNN for float64) is im2col + an MKL
    GEMM per group, whose every output is the sequential sum ``((g₀v₀ + g₁v₁) + g₂v₂) + …``
    of separately rounded products, taps in kernel order, no FMA (checked: identical under
    ``MKL_ENABLE_INSTRUCTIONS=SSE4_2``, ``AVX2`` and AVX-512). Here the same sum is computed
    tap by tap (``mul`` then ``add``: two roundings, as there), vertical pass then
    horizontal pass, so every map value is bit-identical to the ``conv2d`` path, without
    the 11-fold im2col copies, the per-group loop and the concatenations, and on strips of
    rows small enough to stay in cache. Element-wise kernels round alike whatever the
    thread count.
    """
    n, c, h, w = x.shape
    ho, wo = h - _SSIM_WINDOW + 1, w - _SSIM_WINDOW + 1
    taps = _GAUSSIAN_TAPS
    rows = max(1, min(ho, _STRIP_ELEMENTS // (5 * c * w)))
    out = torch.empty(n, c, ho, wo, dtype=x.dtype, device=x.device)
    moments = torch.empty(5, c, rows + _SSIM_WINDOW - 1, w, dtype=x.dtype, device=x.device)
    vertical = torch.empty(5, c, rows, w, dtype=x.dtype, device=x.device)
    vertical_tmp = torch.empty_like(vertical)
    filtered = torch.empty(5, c, rows, wo, dtype=x.dtype, device=x.device)
    filtered_tmp = torch.empty_like(filtered)
    for frame in range(n):
        for top in range(0, ho, rows):
            count = min(rows, ho - top)
            span = count + _SSIM_WINDOW - 1
            xs, ys = x[frame, :, top : top + span], y[frame, :, top : top + span]
            m = moments[:, :, :span]
            m[0].copy_(xs)
            m[1].copy_(ys)
            torch.mul(xs, xs, out=m[2])
            torch.mul(ys, ys, out=m[3])
            torch.mul(xs, ys, out=m[4])
            v, v_tmp = vertical[:, :, :count], vertical_tmp[:, :, :count]
            torch.mul(m[:, :, 0:count], taps[0], out=v)
            for k in range(1, _SSIM_WINDOW):
                torch.mul(m[:, :, k : k + count], taps[k], out=v_tmp)
                v.add_(v_tmp)
            f, f_tmp = filtered[:, :, :count], filtered_tmp[:, :, :count]
            torch.mul(v[..., 0:wo], taps[0], out=f)
            for k in range(1, _SSIM_WINDOW):
                torch.mul(v[..., k : k + wo], taps[k], out=f_tmp)
                f.add_(f_tmp)
            out[frame, :, top : top + count] = _ssim_from_moments(*f)
    return out


def ssim_maps(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map of Wang et al. 2004 with BasicSR's constants, 'valid' filtering.

    ``x``, ``y``: ``(N, C, H, W)`` float64 on the [0, 255] scale →
    ``(N, C, H − 10, W − 10)`` float64. The 11×11 Gaussian window is applied as two 1-D
    passes (the window is the outer product of the 1-D kernel), which equals BasicSR's
    2-D ``cv2.filter2D`` up to float64 rounding and costs 22 instead of 121 taps.
    On the CPU the passes are element-wise multiply-adds over cache-sized row strips,
    bit-identical to the grouped ``conv2d`` used on GPUs and before (see
    :func:`_ssim_maps_strips`).
    """
    height, width = x.shape[-2:]
    # both sides odd: the GEMMs have an odd number of rows, and MKL computes the odd row,
    # and rows it peels for memory alignment, with another summation order (measured); the
    # conv2d path is kept there so that those values stay what they were
    if x.device.type == "cpu" and (height % 2 == 0 or width % 2 == 0):
        return _ssim_maps_strips(x, y)
    return _ssim_maps_conv(x, y)


class SSIM(ClipMetric):
    """Structural similarity, per frame, mean over frames (BasicSR ``calculate_ssim``).

    11×11 Gaussian window (σ = 1.5), C1 = (0.01·255)², C2 = (0.03·255)², 'valid'
    filtering, map mean per channel then mean over channels (RGB). Frames must be at
    least 11×11 after ``crop_border``. Computed in float64, in chunks of frames to bound
    memory (``chunk_frames``; it does not change the number).

    Args:
        color_space: ``"rgb"`` (id ``ssim_rgb``) or ``"y"`` (BT.601 luma, id ``ssim_y``).
        crop_border: pixels removed from each edge before measuring.
        quantize: round frames to 8-bit levels first (see the module docstring).
        chunk_frames: frames per batched convolution; None: 1 on a CPU, 16 on a GPU.
    """

    metric_id: ClassVar[str] = "ssim_rgb"  # the instance's id follows color_space
    higher_is_better: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True
    level: ClassVar[str] = "frame"

    def __init__(
        self,
        color_space: str = "rgb",
        crop_border: int = 0,
        quantize: bool = True,
        chunk_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_settings("ssim", color_space, crop_border)
        self.color_space = color_space
        self.crop_border = int(crop_border)
        self.quantize = bool(quantize)
        self.chunk_frames = None if chunk_frames is None else max(1, int(chunk_frames))
        self.metric_id = f"ssim_{color_space}"

    @torch.no_grad()
    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] (both) → ``(B, T)`` float64 SSIM (≤ 1)."""
        assert target is not None
        _check_size(self.metric_id, preds, self.crop_border, _SSIM_WINDOW)
        return _per_frame_chunks(preds, target, self, lambda x, y: fixed_order_mean(ssim_maps(x, y), start_dim=1))

    def settings(self) -> dict[str, Any]:
        return {
            "color_space": self.color_space,
            "crop_border": self.crop_border,
            "quantize": self.quantize,
            "window": f"gaussian{_SSIM_WINDOW}_sigma{_SSIM_SIGMA}",
            "data_range": 255,
        }


__all__ = ["COLOR_SPACES", "PSNR", "SSIM", "prepare_frames", "quantize_8bit", "ssim_maps"]
