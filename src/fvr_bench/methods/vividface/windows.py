"""Clips of any length through a network that takes 1 + 4k frames.

Wan's causal VAE compresses time by 4 after a first frame of its own, so a window must
hold ``1 + 4k`` frames. :func:`pad_to_vae_length` pads a short clip by repeating its last
frame (the padding is dropped again after decoding). Clips longer than a window are cut into
overlapping windows of exactly ``window`` frames (the last one aligned to the clip's end)
and the outputs are cross-faded over the overlaps with linear ramps (normalised where the
last window overlaps more), so no frame jumps at a window boundary (:func:`restore_in_windows`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fvr_bench.errors import ConfigError
from fvr_bench.methods.base import blend_windows

TEMPORAL_FACTOR = 4  # Wan VAE: latent frames = 1 + (frames - 1) / 4


def vae_frame_count(frames: int) -> int:
    """The smallest ``1 + 4k`` that is ≥ ``frames`` (≥ 1)."""
    if frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {frames}")
    return 1 + TEMPORAL_FACTOR * -(-(frames - 1) // TEMPORAL_FACTOR)


def latent_frame_count(frames: int) -> int:
    """Latent frames of a ``1 + 4k``-frame clip: ``1 + k``."""
    if (frames - 1) % TEMPORAL_FACTOR:
        raise ValueError(f"the Wan VAE needs 1 + 4k frames, got {frames}")
    return 1 + (frames - 1) // TEMPORAL_FACTOR


def pad_to_vae_length(frames: torch.Tensor) -> torch.Tensor:
    """``(B, T, ...)`` → ``(B, 1 + 4k, ...)`` by repeating the last frame (T itself when it
    already is ``1 + 4k``)."""
    missing = vae_frame_count(frames.shape[1]) - frames.shape[1]
    if missing == 0:
        return frames
    tail = frames[:, -1:].expand(-1, missing, *frames.shape[2:])
    return torch.cat([frames, tail], dim=1)


def check_window(window: int, overlap: int) -> None:
    """A window must be ``1 + 4k`` frames (whole VAE chunks) and overlap less than itself."""
    if window < 1 or (window - 1) % TEMPORAL_FACTOR:
        raise ConfigError(f"vividface: window_frames must be 1 + 4k (e.g. 81), got {window}")
    if not 0 <= overlap < window:
        raise ConfigError(f"vividface: window_overlap must be in [0, window_frames), got {overlap} for {window}")


def window_spans(total: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each window over ``total`` frames.

    One span ``(0, total)`` when the clip fits; otherwise windows of exactly ``window``
    frames every ``window - overlap`` frames, the last one ending at ``total`` (so it may
    overlap its neighbour by more than ``overlap``).
    """
    check_window(window, overlap)
    if total <= window:
        return [(0, total)]
    stride = window - overlap
    starts = list(range(0, total - window + 1, stride))
    if starts[-1] + window < total:
        starts.append(total - window)
    return [(start, start + window) for start in starts]


def blend_weights(spans: list[tuple[int, int]], ramp: int) -> list[torch.Tensor]:
    """Per-frame weights of each span: 1 inside, rising over its first ``ramp`` frames and
    falling over its last ``ramp`` frames as ``i / (ramp + 1)`` (no ramp at the clip's two
    ends). Neighbours overlapping by exactly ``ramp`` frames sum to 1; where the last window
    overlaps more, :func:`restore_in_windows` normalises — every weight is a continuous
    ramp, so the blend has no jump either way."""
    weights = []
    for index, (start, stop) in enumerate(spans):
        position = torch.arange(start, stop, dtype=torch.float64)
        weight = torch.ones(stop - start, dtype=torch.float64)
        if ramp > 0 and index > 0:
            weight = torch.minimum(weight, (position - start + 1) / (ramp + 1))
        if ramp > 0 and index + 1 < len(spans):
            weight = torch.minimum(weight, (stop - position) / (ramp + 1))
        weights.append(weight)
    return weights


def restore_in_windows(
    frames: torch.Tensor,
    restore_window: Callable[[torch.Tensor], torch.Tensor],
    window: int,
    overlap: int,
) -> torch.Tensor:
    """Run ``restore_window`` over overlapping windows of ``(B, T, C, H, W)`` and blend.

    ``restore_window`` maps ``(B, t, C, H, W)`` (any t ≤ ``window``) to ``(B, t, C, H', W')``.
    Returns ``(B, T, C, H', W')``: frames covered by one window are that window's output
    unchanged; frames in an overlap are convex combinations (weights of
    :func:`blend_weights`, normalised).
    """
    total = frames.shape[1]
    spans = window_spans(total, window, overlap)
    if len(spans) == 1:
        return restore_window(frames)
    return blend_windows(frames, lambda window_frames: restore_window(window_frames).float(), spans,
                         blend_weights(spans, overlap), time_dim=1)
