"""SVFR's denoising loop over a whole video (the official ``LQ2VideoLongSVDPipeline``, rewritten).

At every Euler step the full-length latent ``(1, T, 4, h, w)`` is processed in windows of
``window`` frames whose indices wrap modulo T (the video is treated as circular). Window
starts advance by ``window − overlap`` during the first ``overlap_steps`` steps and by
``window`` after that, and the whole grid is shifted back by ``shift`` frames, where ``shift``
grows by ``overlap`` (mod ``window``) every step — window boundaries rotate, so no frame sits on
a seam twice in a row. Each window's stepped latents are blended with triangular weights
``min(k + 1, window − k)``. Classifier-free guidance pairs ``[uncond, cond]``: the unconditional
branch has zero ID tokens and a zero reference latent but keeps the LQ latent. The start is
img2img from the LQ latent at the largest sigma (``i2i_strength`` 1).

Differences from the official loop (numerically small, documented in the card): latents are
accumulated in float32 (the official code keeps everything in fp16); the Euler update is
computed here from the scheduler's sigmas instead of ``scheduler.step`` with a reset step index
per window (the same update; the test compares them); when both branches are identical (no ID
tokens and no reference, e.g. pass 1) the unconditional pass is skipped — ``u + g·(u − u) = u``
exactly; windows of one step may be batched into one UNet call (``window_batch``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fvr_bench.errors import ConfigError

ID_TOKENS = 49  # ArcFace layer4 map 7 × 7


@dataclass(frozen=True)
class SamplerSettings:
    """steps: Euler steps; guidance_scale: CFG weight (official: 2.0, constant);
    window / overlap / overlap_steps: the circular windows (official 16 / 3 / 3);
    i2i_strength: fraction of the schedule run from the noised LQ latent (official 1.0);
    window_batch: windows per UNet call (1 = the official order; more is faster on a GPU);
    sequential_cfg: run the two guidance branches one after the other (half the activations);
    skip_identical_branch: one UNet pass when both branches are equal (no reference, no ID
    tokens: the official pass 1), exactly the same result; False runs both, as the official code."""

    steps: int = 30
    guidance_scale: float = 2.0
    window: int = 16
    overlap: int = 3
    overlap_steps: int = 3
    i2i_strength: float = 1.0
    window_batch: int = 1
    sequential_cfg: bool = False
    skip_identical_branch: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.window < 1 or not 0 <= self.overlap < self.window or self.window_batch < 1:
            raise ConfigError(f"svfr sampler: need steps ≥ 1, window ≥ 1, 0 ≤ overlap < window, window_batch ≥ 1; "
                              f"got {self}")
        if not 0 < self.i2i_strength <= 1:
            raise ConfigError(f"svfr sampler: i2i_strength must be in (0, 1], got {self.i2i_strength}")


@dataclass
class Conditioning:
    """What the UNet is conditioned on for one video.

    lq_latents: ``(1, T, 4, h, w)`` VAE mode of the LQ frames, unscaled (as the official code).
    reference:  ``(1, 4, h, w)`` VAE mode of the reference frame, unscaled, or None.
    id_tokens:  ``(1, 49, D)`` ID tokens, or None (zeros: the official pass 1).
    task:       ``(3,)`` multi-hot task prompt.
    """

    lq_latents: torch.Tensor
    reference: torch.Tensor | None
    id_tokens: torch.Tensor | None
    task: torch.Tensor

    @property
    def guided(self) -> bool:
        """False when the conditional branch equals the unconditional one."""
        return self.reference is not None or self.id_tokens is not None


def schedule(scheduler, steps: int, i2i_strength: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The scheduler's timesteps ``(n,)`` (what the UNet receives) and sigmas ``(n + 1,)``
    (float32, last 0) for ``steps`` steps, the first ``1 − i2i_strength`` of them skipped."""
    scheduler.set_timesteps(steps, device=device)
    start = steps - min(int(steps * i2i_strength), steps)
    return scheduler.timesteps[start:], scheduler.sigmas[start:].float()


def window_starts(total: int, window: int, overlap: int, step: int, overlap_steps: int, shift: int) -> list[int]:
    """First frame of every window at ``step`` (may be negative: indices wrap modulo ``total``)."""
    stride = window - overlap * (step < overlap_steps)
    return [start - shift for start in range(0, total, stride)]


def triangular_weights(window: int) -> torch.Tensor:
    """``(window,)`` float32 ``min(k + 1, window − k)``."""
    k = torch.arange(window)
    return torch.minimum(k + 1, window - k).float()


def euler_step(sample: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of SVD's v-prediction ODE: x̂₀ = x/(σ²+1) − σ·v/√(σ²+1), x' = x + (σ' − σ)(x − x̂₀)/σ."""
    denoised = sample / (sigma**2 + 1) - velocity * (sigma / (sigma**2 + 1) ** 0.5)
    return sample + (sample - denoised) / sigma * (sigma_next - sigma)


class WindowedSampler:
    """Runs the loop on an injected ``unet`` (diffusers ``UNetSpatioTemporalConditionModel``,
    12 input channels) and ``scheduler`` (diffusers ``EulerDiscreteScheduler``, SVD-xt config)."""

    def __init__(self, unet, scheduler, settings: SamplerSettings) -> None:
        self.unet, self.scheduler, self.settings = unet, scheduler, settings

    def _branches(self, cond: Conditioning, frames: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(id tokens (1, 49, D), reference latents (1, frames, 4, h, w))`` per branch:
        ``[uncond, cond]`` when guided, else the single shared branch."""
        lq = cond.lq_latents
        dim = self.unet.config.cross_attention_dim
        zero_tokens = lq.new_zeros(1, ID_TOKENS, dim)
        zero_ref = lq.new_zeros(1, frames, *lq.shape[2:])
        uncond = (zero_tokens, zero_ref)
        if not cond.guided and self.settings.skip_identical_branch:
            return [uncond]
        tokens = cond.id_tokens if cond.id_tokens is not None else zero_tokens
        ref = cond.reference[:, None].expand(1, frames, *cond.reference.shape[1:]) if cond.reference is not None else zero_ref
        return [uncond, (tokens.to(lq), ref)]

    def _velocity(self, windows: list[torch.Tensor], lq_windows: list[torch.Tensor], branches, sigma: float,
                  timestep: torch.Tensor, task: torch.Tensor, guidance: float) -> torch.Tensor:
        """Guided v-prediction for a batch of windows ``(n, w, 4, h, w)`` → same shape, float32."""
        dtype = self.unet.dtype
        x = torch.cat(windows) / (sigma**2 + 1) ** 0.5  # SVD's c_in
        lq = torch.cat(lq_windows)
        n = x.shape[0]
        outputs = []
        groups = [[b] for b in branches] if self.settings.sequential_cfg else [branches]
        for group in groups:
            sample = torch.cat([torch.cat([x, lq, ref.expand(n, *ref.shape[1:])], dim=2) for _, ref in group])
            tokens = torch.cat([tok.expand(n, *tok.shape[1:]) for tok, _ in group])
            batch = sample.shape[0]
            out = self.unet(sample.to(dtype), timestep.to(sample.device).expand(batch),
                            encoder_hidden_states=tokens.to(dtype),
                            added_time_ids=task.to(sample.device, dtype).expand(batch, -1), return_dict=False)[0]
            outputs.append(out.float())
        out = torch.cat(outputs)
        if len(branches) == 1:
            return out
        uncond, cond = out[:n], out[n:]
        return uncond + guidance * (cond - uncond)

    def _groups(self, starts: list[int]) -> Iterator[list[int]]:
        size = self.settings.window_batch
        for i in range(0, len(starts), size):
            yield starts[i : i + size]

    @torch.no_grad()
    def sample(self, cond: Conditioning, init_latents: torch.Tensor, noise: torch.Tensor, window: int,
               steps: int | None = None, progress=None) -> torch.Tensor:
        """Denoise a video: ``init_latents`` ``(1, T, 4, h, w)`` (the scaled LQ latents) noised with
        ``noise`` (same shape) at the first sigma → clean latents ``(1, T, 4, h, w)`` float32.

        window: frames per UNet window (the official pass 1 uses the clip's own length, pass 2 16).
        """
        s = self.settings
        total = init_latents.shape[1]
        timesteps, sigmas = schedule(self.scheduler, steps or s.steps, s.i2i_strength, init_latents.device)
        latents = init_latents.float() + noise.float() * sigmas[0]  # EulerDiscreteScheduler.add_noise
        branches = self._branches(cond, window)
        weights = triangular_weights(window).to(latents.device)
        # a window shorter than the overlap (clips under 4 frames in pass 1) would stride backwards:
        # the official loop then runs no window at all and divides by a zero counter
        overlap = min(s.overlap, window - 1)
        shift = 0
        for step, timestep in enumerate(timesteps):
            sigma, sigma_next = float(sigmas[step]), float(sigmas[step + 1])
            blended = torch.zeros_like(latents)
            counter = torch.zeros(total, device=latents.device)
            starts = window_starts(total, window, overlap, step, s.overlap_steps, shift)
            for group in self._groups(starts):
                indices = [torch.arange(start, start + window, device=latents.device) % total for start in group]
                windows = [latents[:, idx] for idx in indices]
                lq_windows = [cond.lq_latents[:, idx].float() for idx in indices]
                velocity = self._velocity(windows, lq_windows, branches, sigma, timestep, cond.task, s.guidance_scale)
                for k, idx in enumerate(indices):
                    stepped = euler_step(windows[k][0], velocity[k], sigma, sigma_next)
                    blended[0].index_add_(0, idx, stepped * weights.view(-1, 1, 1, 1))
                    counter.index_add_(0, idx, weights)
            latents = blended / counter.view(1, -1, 1, 1, 1)
            shift = (shift + overlap) % window
            if progress is not None:
                progress()
        return latents


__all__ = ["Conditioning", "SamplerSettings", "WindowedSampler", "euler_step", "schedule", "triangular_weights",
           "window_starts"]
