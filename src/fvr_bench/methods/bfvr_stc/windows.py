"""Any-length videos through a network trained on fixed-length clips.

``restore_in_windows`` runs ``fn`` on overlapping windows of ``window`` frames, spread evenly
from the first frame to the last, and blends the outputs with linear cross-fades in every
overlap, so there are no seams (where two windows disagree, the output moves from one to the
other in steps of 1/(overlap+1) of their difference instead of jumping); videos no longer than one window run in one pass. Frame
counts that the network cannot take (not a multiple of its temporal compression) are
padded by repeating the last frame and trimmed afterwards — no frame is ever dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fvr_bench.errors import ConfigError
from fvr_bench.methods.base import blend_windows


def pad_frames(video: torch.Tensor, multiple: int, dim: int = 2) -> tuple[torch.Tensor, int]:
    """Repeat the last frame along ``dim`` up to a multiple of ``multiple``; returns the
    padded video and the original frame count."""
    frames = video.shape[dim]
    missing = (-frames) % multiple
    if missing == 0:
        return video, frames
    last = video.narrow(dim, frames - 1, 1)
    return torch.cat([video, *([last] * missing)], dim=dim), frames


def temporal_windows(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` windows of exactly ``window`` frames covering ``num_frames``, as few as
    keep at least ``overlap`` shared frames between neighbours, spread evenly (first at 0,
    last ending at ``num_frames``) so every overlap is about the same length."""
    if not 0 <= overlap <= window // 2:
        raise ConfigError(f"module.restore.overlap={overlap} must be in [0, window/2 = {window // 2}] "
                          f"(each frame is cross-faded between at most two neighbouring windows)")
    if num_frames <= window:
        return [(0, num_frames)]
    count = math.ceil((num_frames - overlap) / (window - overlap))
    span = num_frames - window
    starts = [math.floor(i * span / (count - 1) + 0.5) for i in range(count)]
    return [(start, start + window) for start in starts]


def blend_weights(windows: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per-window frame weights: linear ramps over each overlap with a neighbour (rising where
    the previous window is still present, falling where the next begins), 1 elsewhere."""
    weights = []
    for i, (start, end) in enumerate(windows):
        weight = torch.ones(end - start, dtype=torch.float64)
        if i > 0:
            shared = windows[i - 1][1] - start
            if shared > 0:
                ramp = torch.arange(1, shared + 1, dtype=torch.float64) / (shared + 1)
                weight[:shared] = torch.minimum(weight[:shared], ramp)
        if i < len(windows) - 1:
            shared = end - windows[i + 1][0]
            if shared > 0:
                ramp = torch.arange(shared, 0, -1, dtype=torch.float64) / (shared + 1)
                weight[-shared:] = torch.minimum(weight[-shared:], ramp)
        weights.append(weight)
    return weights


def restore_in_windows(video: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], window: int, overlap: int,
                       multiple: int = 1) -> torch.Tensor:
    """Apply ``fn`` (``(B, C, T', H, W)`` → ``(B, C', T', H', W')``) to ``video`` ``(B, C, T, H, W)``
    window by window along T and blend; returns ``(B, C', T, H', W')``.

    ``multiple``: the frame-count granularity ``fn`` needs; ``window`` must be a multiple of it.
    """
    if window < multiple or window % multiple:
        raise ConfigError(f"module.restore.window={window} must be a positive multiple of {multiple} "
                          f"(the network's temporal compression)")
    num_frames = video.shape[2]
    if num_frames <= window:
        padded, frames = pad_frames(video, multiple)
        return fn(padded)[:, :, :frames]
    windows = temporal_windows(num_frames, window, overlap)
    return blend_windows(video, fn, windows, blend_weights(windows), time_dim=2)
