"""Baselines: identity, bicubic upsampling, and the saved outputs of any external method."""

from __future__ import annotations

from pathlib import Path

import torch

from fvr_bench.errors import DataError
from fvr_bench.methods.base import resize_video
from fvr_bench.video import VIDEO_SUFFIXES, read_clip, to_tensor


class IdentityRestorer:
    """Returns the LQ input unchanged (nearest-resized only if its size differs from the
    target, so low-resolution inputs still line up with the ground truth)."""

    name = "identity"

    def restore(self, lq: torch.Tensor, *, out_size=None, **_) -> torch.Tensor:
        if out_size is None:
            return lq
        return resize_video(lq, out_size, mode="nearest")


class BicubicRestorer:
    """Bicubic interpolation of every frame to the ground-truth size."""

    name = "bicubic"

    def restore(self, lq: torch.Tensor, *, out_size=None, **_) -> torch.Tensor:
        if out_size is None:
            return lq
        return resize_video(lq, out_size, mode="bicubic")


class PrecomputedRestorer:
    """Evaluates outputs that another method already produced.

    ``root`` holds one entry per clip id: a folder of frames or a video file. The saved
    outputs are expected at the ground-truth size and must have exactly as many frames
    as the clip: one frame more or less is an error naming the file and both counts,
    never a silent trim (a trimmed or shifted output scores against the wrong frames).
    """

    def __init__(self, root: str, name: str = "precomputed") -> None:
        self.root = Path(root)
        self.name = name
        if not self.root.is_dir():
            raise DataError(f"precomputed outputs: folder {self.root} does not exist (set method.root=<folder>)")

    def _entry(self, clip_id: str) -> Path:
        folder = self.root / clip_id
        if folder.is_dir():
            return folder
        for suffix in VIDEO_SUFFIXES:
            candidate = self.root / f"{clip_id}{suffix}"
            if candidate.is_file():
                return candidate
        raise DataError(f"precomputed outputs: no folder or video for clip '{clip_id}' in {self.root}")

    def restore(self, lq: torch.Tensor, *, clip_ids=None, **_) -> torch.Tensor:
        if clip_ids is None or len(clip_ids) != lq.shape[0]:
            raise ValueError("PrecomputedRestorer needs the clip id of every clip in the batch")
        num_frames = lq.shape[1]
        clips = []
        for clip_id in clip_ids:
            entry = self._entry(clip_id)
            frames = to_tensor(read_clip(entry))
            if len(frames) != num_frames:
                raise DataError(
                    f"precomputed outputs: {entry} has {len(frames)} frames, but clip '{clip_id}' has {num_frames}; "
                    "outputs must have one frame per input frame (nothing is trimmed or padded)"
                )
            clips.append(frames)
        return torch.stack(clips).to(lq.device)
