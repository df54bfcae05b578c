"""BFVR-STC's 3D VQGAN encoder and decoder (official ``basicsr/archs/vqgan3D_arch.py``).

Layout, for ``ch_mult = (1, 2, 4, 8)``, ``nf = 32``, two residual blocks per level:

* encoder: 3×3×3 conv 3 → nf; per level ``i`` two :class:`ResBlock3D` (``nf·ch_mult[i-1]``
  → ``nf·ch_mult[i]``), each followed by full 3D self-attention on the levels listed in
  ``attention_levels`` (official: level 3 only); between levels a downsampling —
  T, H and W halved after level 0 (``Downsample``), H and W only after levels 1 and 2
  (``Downsample2D``); then ResBlock → attention → ResBlock at the bottleneck, GroupNorm and a
  3×3×3 conv to ``emb_dim`` (no activation between them, as in the official code).
* decoder: the mirror image, with the official order of operations — conv ``emb_dim`` →
  ``nf·ch_mult[-1]``, bottleneck ResBlock → attention → ResBlock, then from the top level
  down: residual blocks (+ attention on the levels in its own ``attention_levels``, official:
  levels 3 *and* 2) and *then* the upsampling that mirrors that level's downsampling (so
  level 0's blocks run at half resolution before the last ×2 in T, H, W), GroupNorm, 3×3×3
  conv to RGB and a sigmoid.

Why the two sides differ (official ``Encoder`` / ``Generator`` with ``attn_resolutions=[32]``):
the official code places attention by a *nominal* resolution, not the real one. The encoder
starts at a hard-coded 256 and halves after every level but the last, so only level 3 is
at 32. The generator starts at 256 / 8 = 32 at level 3 and doubles only after a level's
upsampling; level 3 has none, so level 2 is still "32" and gets attention too (after both
of its residual blocks, at 128 channels — ``generator.blocks.9`` and ``.11`` of the release).
Both decoder levels 3 and 2 indeed run on the latent grid (64² at 512²), since a decoder
level upsamples only after its blocks.

Video tensors are ``(B, C, T, H, W)``; the autoencoder compresses 8× in space and 2× in time
(``spatial_factor``, ``temporal_factor``): ``T`` must be a multiple of 2 and ``H``, ``W``
multiples of 8 — the restorer pads and trims, it never drops frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.errors import ConfigError

NORM_EPS = 1e-6  # the official GroupNorm eps


def group_norm(channels: int, groups: int, option: str = "architecture.autoencoder.norm_groups") -> nn.GroupNorm:
    """GroupNorm(groups, channels, eps=1e-6, affine) — refuses a group count that does not divide."""
    if channels % groups:
        raise ConfigError(f"{option}={groups} does not divide {channels} channels (conf/method/<m>.yaml); "
                          f"use a divisor of every level's channel count")
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=NORM_EPS, affine=True)


class ResBlock3D(nn.Module):
    """GroupNorm → swish → 3×3×3 conv, twice, plus a (1×1×1-projected) skip."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_out = nn.Conv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_out is None else self.conv_out(x)
        return skip + h


def single_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: bool) -> torch.Tensor:
    """softmax(q kᵀ / √C) v over ``(N, L, C)`` tokens (one head of width C).

    ``fused``: PyTorch SDPA with contiguous ``(N, 1, L, C)`` inputs — the fused kernels refuse
    strided q/k/v (then the math path materialises the L×L matrix). ``fused=False`` is the
    explicit bmm/softmax of the official code, kept for the naive benchmark path.
    """
    if fused:
        out = F.scaled_dot_product_attention(q.unsqueeze(1).contiguous(), k.unsqueeze(1).contiguous(),
                                             v.unsqueeze(1).contiguous())
        return out.squeeze(1)
    weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * q.shape[-1] ** -0.5, dim=-1)
    return torch.bmm(weights, v)


class SelfAttention3D(nn.Module):
    """Full single-head self-attention over all ``T·H·W`` positions, residual
    (official ``AttnBlock``: GroupNorm, 1×1×1 q/k/v/proj_out convs, scale C^-½)."""

    def __init__(self, channels: int, norm_groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.q = nn.Conv3d(channels, channels, kernel_size=1)
        self.k = nn.Conv3d(channels, channels, kernel_size=1)
        self.v = nn.Conv3d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv3d(channels, channels, kernel_size=1)
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        normed = self.norm(x)

        def tokens(conv: nn.Conv3d) -> torch.Tensor:  # (B, C, T, H, W) → (B, THW, C)
            return conv(normed).reshape(b, c, t * h * w).transpose(1, 2)

        out = single_head_attention(tokens(self.q), tokens(self.k), tokens(self.v), self.fused)
        out = out.transpose(1, 2).reshape(b, c, t, h, w)
        return x + self.proj_out(out)


class Downsample3D(nn.Module):
    """Halves T, H and W: zero-pad one at the end of each axis, 3×3×3 conv, stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 1)))


class DownsampleSpatial(nn.Module):
    """Halves H and W only: 1×3×3 conv, stride (1, 2, 2), padding (0, 1, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 (in T, H, W, or in H, W only) followed by a 3×3×3 conv."""

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        self.scale = (2.0, 2.0, 2.0) if temporal else (1.0, 2.0, 2.0)
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks, each optionally followed by attention, then
    a resampling (or none at the encoder's last / the decoder's top level)."""

    def __init__(self, channels_in: int, channels_out: int, num_res_blocks: int, attention: bool,
                 resample: nn.Module | None, norm_groups: int) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(
            ResBlock3D(channels_in if j == 0 else channels_out, channels_out, norm_groups) for j in range(num_res_blocks)
        )
        self.attentions = nn.ModuleList(SelfAttention3D(channels_out, norm_groups) for _ in range(num_res_blocks)) if attention else None
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.res_blocks):
            x = block(x)
            if self.attentions is not None:
                x = self.attentions[j](x)
        return x if self.resample is None else self.resample(x)


class Bottleneck(nn.Module):
    """ResBlock → full self-attention → ResBlock at the lowest resolution."""

    def __init__(self, channels: int, norm_groups: int) -> None:
        super().__init__()
        self.res_in = ResBlock3D(channels, channels, norm_groups)
        self.attention = SelfAttention3D(channels, norm_groups)
        self.res_out = ResBlock3D(channels, channels, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_out(self.attention(self.res_in(x)))


# The official release's attention placement at paper scale (see the module docstring).
OFFICIAL_ENCODER_ATTENTION_LEVELS = (3,)
OFFICIAL_DECODER_ATTENTION_LEVELS = (2, 3)


def check_layout(ch_mult: Sequence[int], attention_levels: Sequence[int], temporal_downsample_levels: Sequence[int],
                 attention_option: str) -> None:
    """Refuse level indices outside the network; ``attention_option`` names the config key."""
    levels = len(ch_mult)
    if levels < 2:
        raise ConfigError(f"architecture.autoencoder.ch_mult={list(ch_mult)}: needs at least two levels")
    if any(not 0 <= i < levels for i in attention_levels):
        raise ConfigError(f"architecture.autoencoder.{attention_option}={list(attention_levels)}: levels are 0…{levels - 1}")
    if any(not 0 <= i < levels - 1 for i in temporal_downsample_levels):
        raise ConfigError(f"architecture.autoencoder.temporal_downsample_levels={list(temporal_downsample_levels)}: "
                          f"only the {levels - 1} transitions 0…{levels - 2} resample")


class VideoEncoder(nn.Module):
    """``(B, 3, T, H, W)`` in [0, 1] → latent ``(B, emb_dim, T/2, H/8, W/8)`` (paper layout)."""

    def __init__(self, nf: int = 32, emb_dim: int = 256, ch_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = OFFICIAL_ENCODER_ATTENTION_LEVELS,
                 temporal_downsample_levels: Sequence[int] = (0,), norm_groups: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        check_layout(ch_mult, attention_levels, temporal_downsample_levels, "encoder_attention_levels")
        widths = [nf * m for m in ch_mult]
        self.conv_in = nn.Conv3d(in_channels, nf, kernel_size=3, padding=1)
        levels = []
        for i, width in enumerate(widths):
            previous = nf if i == 0 else widths[i - 1]
            resample = None
            if i < len(widths) - 1:
                resample = Downsample3D(width) if i in temporal_downsample_levels else DownsampleSpatial(width)
            levels.append(Level(previous, width, num_res_blocks, i in attention_levels, resample, norm_groups))
        self.levels = nn.ModuleList(levels)
        self.bottleneck = Bottleneck(widths[-1], norm_groups)
        self.norm_out = group_norm(widths[-1], norm_groups)
        self.conv_out = nn.Conv3d(widths[-1], emb_dim, kernel_size=3, padding=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(video)
        for level in self.levels:
            x = level(x)
        return self.conv_out(self.norm_out(self.bottleneck(x)))


class VideoDecoder(nn.Module):
    """Latent ``(B, emb_dim, t, h, w)`` → ``(B, 3, 2t, 8h, 8w)`` in [0, 1] (sigmoid output).

    ``levels[i]`` holds level ``i``; they run from the top level down (see the module docstring).
    ``attention_levels``: the levels whose residual blocks are each followed by full 3D
    self-attention; the default (3 and 2) is the official generator's.
    """

    def __init__(self, nf: int = 32, emb_dim: int = 256, ch_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = OFFICIAL_DECODER_ATTENTION_LEVELS,
                 temporal_downsample_levels: Sequence[int] = (0,), norm_groups: int = 32, out_channels: int = 3) -> None:
        super().__init__()
        check_layout(ch_mult, attention_levels, temporal_downsample_levels, "decoder_attention_levels")
        widths = [nf * m for m in ch_mult]
        top = len(widths) - 1
        self.conv_in = nn.Conv3d(emb_dim, widths[-1], kernel_size=3, padding=1)
        self.bottleneck = Bottleneck(widths[-1], norm_groups)
        levels: list[Level] = []
        for i, width in enumerate(widths):
            previous = widths[i + 1] if i < top else widths[-1]
            resample = None if i == top else Upsample(width, temporal=i in temporal_downsample_levels)
            levels.append(Level(previous, width, num_res_blocks, i in attention_levels, resample, norm_groups))
        self.levels = nn.ModuleList(levels)
        self.norm_out = group_norm(widths[0], norm_groups)
        self.conv_out = nn.Conv3d(widths[0], out_channels, kernel_size=3, padding=1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(self.conv_in(latent))
        for level in reversed(self.levels):
            x = level(x)
        return torch.sigmoid(self.conv_out(self.norm_out(x)))


def set_fused_attention(model: nn.Module, fused: bool) -> None:
    """Switch every attention of ``model`` between PyTorch SDPA and the explicit
    bmm/softmax path (the naive benchmark baseline); outputs agree to float precision."""
    for module in model.modules():
        if hasattr(module, "fused"):
            module.fused = fused
