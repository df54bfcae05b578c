"""VividFace's joint latent-pixel face-focused loss.

Per training step a switch ``b ~ Bernoulli(p)`` picks the face-focused or the global term:

    L = b·‖M⊙ŷ − M⊙y‖² + (1 − b)·‖ŷ − y‖²

with ‖·‖² the mean squared error over all elements (so both terms share one scale). Stage 1
applies it to latents (M = the latent-aligned face mask), stage 2 to decoded frames
(M = the pixel face mask) plus ``λ·DISTS`` (λ = 0.1). p = 0 is plain MSE, p = 1 face-only —
the paper's ablation settings.
"""

from __future__ import annotations

import torch
from torch import nn

from fvr_bench.errors import ConfigError


class MaskSwitch:
    """Draws ``b ~ Bernoulli(p)`` once per step from its own generator (reproducible, and
    independent of the global RNG the model's dropout/initialisation use)."""

    def __init__(self, probability: float, seed: int = 0) -> None:
        if not 0.0 <= float(probability) <= 1.0:
            raise ConfigError(f"vividface: mask_probability must be in [0, 1], got {probability}")
        self.probability = float(probability)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    def draw(self) -> bool:
        # rand ∈ [0, 1): never below 0, always below 1 — p = 0 and p = 1 are exact
        return bool(torch.rand((), generator=self.generator).item() < self.probability)


def face_focused_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, use_mask: bool) -> torch.Tensor:
    """``mean((M⊙(ŷ − y))²)`` when ``use_mask`` else ``mean((ŷ − y)²)``; ``mask`` broadcasts
    to ``pred`` (binary, so M⊙ŷ − M⊙y = M⊙(ŷ − y))."""
    difference = pred.float() - target.float()
    if use_mask:
        difference = difference * mask.to(difference.dtype)
    return difference.square().mean()


def dists_loss(net: nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean DISTS over the frames of ``(B, T, 3, H, W)`` clips in [0, 1], in float32 (outside
    autocast: its variance terms lose too much in bf16); gradients flow into ``pred``."""
    frames_pred = pred.reshape(-1, *pred.shape[2:]).float()
    frames_target = target.reshape(-1, *target.shape[2:]).float()
    with torch.autocast(device_type=pred.device.type, enabled=False):
        return net(frames_pred, frames_target).mean()
