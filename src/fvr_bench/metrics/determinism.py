"""Numbers that do not depend on the thread count.

A run's per-clip values must be the same with 1 or 16 threads and in 1 or N processes
(sharded runs give each process fewer threads than a single process has). Two things in
PyTorch's CPU kernels break that:

* reductions: ``Tensor.sum``/``mean`` over a large reduced dimension split it into one
  partial sum per thread, so the float rounding follows the thread count (measured:
  SSIM-RGB of a 512² frame differs in the 16th digit between 1 and 2 threads).
  :func:`fixed_order_mean` sums in an order fixed by the shape alone;
* oneDNN (mkldnn) convolutions pick blockings by thread count (measured: I3D logits
  differ in the 6th digit between 1 and 2 threads). PyTorch's own convolution kernels
  (im2col + GEMM) gave bit-identical logits for 1 and 2 threads, at about 2.4× the time
  of oneDNN on one core; :func:`thread_invariant_kernels` selects them on the CPU;
* ``F.interpolate(mode="bilinear")`` without antialiasing (measured: a 192² → 224²
  upsample differs between 1 and 2 threads, float32 and float64 alike; bicubic, nearest
  and the antialiased paths do not). :func:`bilinear_resize` computes the same formula
  from gathers and element-wise operations, whose rounding does not depend on how the
  work is split.

On a GPU neither applies: CUDA reductions and cuDNN convolutions do not depend on the
host's thread count (results still differ between GPU models and from the CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


def fixed_order_mean(values: torch.Tensor, start_dim: int) -> torch.Tensor:
    """Mean over every dimension from ``start_dim`` on, summed in an order that depends on
    the shape only: ``(N, ...) → (N,)`` (same dtype, same device).

    On the CPU the sum is NumPy's pairwise summation along one contiguous row per output
    (single-threaded, so independent of torch's and OpenMP's thread counts); on a GPU it
    is torch's own reduction, deterministic for a given shape.
    """
    flat = values.flatten(start_dim)
    if flat.device.type != "cpu":
        return flat.mean(dim=-1)
    array = np.ascontiguousarray(flat.detach().numpy())
    return torch.from_numpy(np.add.reduce(array, axis=-1) / array.shape[-1])


def _taps(out_size: int, in_size: int, scale: float | None, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of one axis, as PyTorch's ``upsample_bilinear2d`` with
    ``align_corners=False`` computes them: ``src = max(0, (dst + 0.5)·r − 0.5)`` with
    ``r = in/out`` (or ``1/scale`` when a scale factor was given), ``i0 = ⌊src⌋``,
    ``i1 = min(i0 + 1, in − 1)``, ``λ1 = src − i0``, ``λ0 = 1 − λ1``."""
    ratio = in_size / out_size if scale is None else 1.0 / scale
    # float64 positions: in float32 a source position near 190 carries only ~1.5e-5 of
    # precision, which shows in the weights (F.interpolate's float32 path differs from the
    # exact weights by up to ~1e-5 for 192 → 224)
    dst = torch.arange(out_size, dtype=torch.float64, device=device)
    src = ((dst + 0.5) * ratio - 0.5).clamp(min=0.0)
    i0 = src.long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    lambda1 = src - i0.to(torch.float64)
    return i0, i1, 1.0 - lambda1, lambda1


def bilinear_resize(
    images: torch.Tensor, size: tuple[int, int], scale: tuple[float, float] | None = None
) -> torch.Tensor:
    """``F.interpolate(images, size, mode="bilinear", align_corners=False)`` (no
    antialiasing) with a result that does not depend on the thread count.

    ``images``: ``(N, C, H, W)`` float → ``(N, C, *size)`` same dtype. ``scale``: the
    ``(h, w)`` scale factors when the caller's ``F.interpolate`` was given
    ``scale_factor`` (PyTorch then maps pixels with the factor, not with the size ratio).
    Same formula as ``F.interpolate``, with the sampling weights computed in float64:
    within 1e-5 of it for float32 images in [0, 1] (measured, 192² → 224²), and closer to
    the exact value.
    """
    height, width = images.shape[-2:]
    if (height, width) == tuple(size) and scale is None:
        return images
    scale_h, scale_w = (None, None) if scale is None else scale
    r0, r1, h0, h1 = _taps(size[0], height, scale_h, images.device)
    c0, c1, w0, w1 = _taps(size[1], width, scale_w, images.device)
    w0, w1 = w0.to(images.dtype), w1.to(images.dtype)
    h0, h1 = h0.to(images.dtype)[:, None], h1.to(images.dtype)[:, None]
    rows = images[..., c0] * w0 + images[..., c1] * w1  # along W first, as PyTorch
    return rows[..., r0, :] * h0 + rows[..., r1, :] * h1


@contextlib.contextmanager
def thread_invariant_kernels(device: torch.device | str) -> Iterator[None]:
    """Within the block, CPU convolutions use PyTorch's native kernels instead of oneDNN,
    whose results change with the thread count. No effect on other devices."""
    if torch.device(device).type != "cpu":
        yield
        return
    # not torch.backends.mkldnn.flags(): it also sets oneDNN's TF32 switch, which warns on every call
    mkldnn = torch.backends.mkldnn
    before = mkldnn.enabled
    mkldnn.enabled = False
    try:
        yield
    finally:
        mkldnn.enabled = before


__all__ = ["bilinear_resize", "fixed_order_mean", "thread_invariant_kernels"]
