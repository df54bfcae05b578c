"""SVFR's tasks: the multi-hot task prompt and what each task does to the input frames.

SVFR's task prompt γ = [BFR, colorization, inpainting] is a multi-hot vector fed through SVD's
own added-time embedding (``add_time_proj`` + ``add_embedding``: the paper's E_task lives in
the UNet's weights). A task string is one task or several joined by ``+``
(``"colorization+inpainting"``), as the degradation presets name them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fvr_bench.errors import ConfigError

SVFR_TASKS = ("bfr", "colorization", "inpainting")  # the order of SVFR's task prompt (infer.py --task_ids 0,1,2)

# ITU-R BT.601 luma, what PIL's convert("L") computes (the official code's colorization input)
_LUMA = (0.299, 0.587, 0.114)


def parse_tasks(task: str | Sequence[str]) -> tuple[str, ...]:
    """``"colorization+inpainting"`` or ``["colorization", "inpainting"]`` → the parts in SVFR's order."""
    parts = [p.strip() for p in (task.split("+") if isinstance(task, str) else task)]
    unknown = [p for p in parts if p not in SVFR_TASKS]
    if unknown or not parts:
        raise ConfigError(f"svfr restores {', '.join(SVFR_TASKS)} and their '+' combinations, not {task!r}")
    return tuple(t for t in SVFR_TASKS if t in parts)


def task_prompt(tasks: Sequence[str]) -> torch.Tensor:
    """Tasks → SVFR's multi-hot ``(3,)`` float32 (BFR, colorization, inpainting)."""
    return torch.tensor([1.0 if t in tasks else 0.0 for t in SVFR_TASKS])


def grayscale(frames: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` in [0, 1] → BT.601 luma repeated on 3 channels, quantised to 8 bit as
    PIL's ``convert("L").convert("RGB")`` does."""
    weights = torch.tensor(_LUMA, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    luma = (frames * weights).sum(dim=-3, keepdim=True)
    luma = torch.round(luma * 255.0) / 255.0
    return luma.expand_as(frames).clone()


def prepare_input(frames: torch.Tensor, tasks: Sequence[str], mask: torch.Tensor | None) -> torch.Tensor:
    """What the official code feeds the model for these tasks: frames ``(T, 3, H, W)`` in [0, 1];
    colorization → grayscale; inpainting → masked pixels white (``mask`` ``(T, 1, H, W)`` bool,
    True = missing, or None: the LQ already carries its white strokes)."""
    if "colorization" in tasks:
        frames = grayscale(frames)
    if "inpainting" in tasks and mask is not None:
        frames = torch.where(mask.to(frames.device).bool(), torch.ones_like(frames), frames)
    return frames
