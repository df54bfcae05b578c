"""SVFR's two training heads on the UNet mid-block features (paper §4.1 and §4.2).

Both read the mid-block output ``x_d`` of SVD's spatio-temporal UNet, ``(N, C, h, w)`` with
``N = B·F`` (batch × frames, the UNet's own frame folding; SVD-xt: ``C = 1280``, ``h = w =
S/64`` for ``S×S`` frames, i.e. 8×8 at 512²). They exist only for training: inference never
runs them, so they are kept out of the restorer.

* :class:`LatentTransformer` — the paper's "Latent Transformer T_l, composed with two resblock
  and a layernorm": features ``x̂_d`` for Unified Latent Regularisation
  (:func:`.objectives.ulr_loss`).
* :class:`LandmarkHead` — "an average pooling layer followed by five layers of MLP" → 68 facial
  landmarks, trained with the Wing loss (:func:`.objectives.wing_loss`).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from fvr_bench.errors import ConfigError

POOLS = ("frame", "video")


def _divisor_groups(channels: int, groups: int) -> int:
    """The largest group count ≤ ``groups`` that divides ``channels`` (GroupNorm needs one)."""
    for g in range(max(1, min(groups, channels)), 0, -1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv3×3-GroupNorm-SiLU-Conv3×3 + skip (1×1 conv when the width changes).

    ``(N, in_channels, h, w)`` → ``(N, out_channels, h, w)``; the pre-activation layout of the
    diffusers/LDM ResNet blocks the UNet itself is built from.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_divisor_groups(in_channels, groups), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_divisor_groups(out_channels, groups), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.SiLU()
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class LatentTransformer(nn.Module):
    """T_l: two residual blocks, global average pooling, LayerNorm.

    Args:
        channels: C of the mid-block features (SVD-xt: 1280).
        width: output feature size D (None → ``channels``). Not in the paper (it gives no width);
            a smaller width (e.g. 512) cuts the head's ~4·9·C² conv parameters.
        groups: GroupNorm groups, lowered to the largest divisor of the channel count. Not in the
            paper (32 = the UNet's own ResNet blocks).
        pool: "frame" — one feature per frame, ``(N, D)``; "video" — the spatially pooled
            features are also averaged over the ``frames`` of each clip before the LayerNorm,
            one feature per clip, ``(N / frames, D)``. Not in the paper (its notation ``x_d`` of
            shape ``(B·F, C, h, w)`` reads per frame, hence the default). The pooling lives here
            (before the LayerNorm, so a video feature is normalised like a frame feature);
            :func:`.objectives.ulr_views` arranges either output for the loss.

    Forward: ``x`` ``(N, C, h, w)`` with N = B·F ordered clip-major (frames of a clip
    contiguous, the UNet's ``(B, F) → B·F`` folding); ``frames`` = F, needed for "video".
    Returns ``(N, D)`` ("frame") or ``(B, D)`` ("video"), LayerNorm'ed (per-vector zero mean and
    unit variance before the affine part, so ‖x̂‖ ≈ √D at initialisation).
    """

    def __init__(self, channels: int, width: int | None = None, groups: int = 32, pool: str = "frame") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"svfr: LatentTransformer pool must be one of {POOLS}, got {pool!r}")
        if channels < 1 or (width is not None and width < 1):
            raise ConfigError(f"svfr: LatentTransformer needs channels, width >= 1, got {channels}, {width}")
        width = channels if width is None else int(width)
        self.channels, self.width, self.pool = int(channels), width, pool
        self.blocks = nn.Sequential(ResBlock(channels, width, groups), ResBlock(width, width, groups))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """``(N, C, h, w)`` → ``(N, D)`` ("frame") or ``(N / frames, D)`` ("video")."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"LatentTransformer expects (N, {self.channels}, h, w), got {tuple(x.shape)}")
        pooled = self.blocks(x).mean(dim=(2, 3))  # (N, D): global average pooling
        if self.pool == "video":
            if frames is None or frames < 1 or pooled.shape[0] % frames:
                raise ValueError(f"LatentTransformer(pool='video') needs frames dividing N={pooled.shape[0]}, got {frames}")
            pooled = pooled.reshape(-1, frames, self.width).mean(dim=1)
        return self.norm(pooled)


class LandmarkHead(nn.Module):
    """Facial prior head: AdaptiveAvgPool2d(1) → ``layers`` Linear layers (SiLU between) → landmarks.

    Args:
        channels: C of the mid-block features.
        hidden: width of the hidden layers. Not in the paper.
        layers: number of Linear layers (paper: five).
        points: number of landmarks (paper: 68, the iBUG/300-W layout).

    Forward: ``(N, C, h, w)`` → ``(N, points, 2)``: (x, y) per landmark, normalised by the frame
    width / height, so the frame spans [0, 1]. No sigmoid: plain regression of normalised
    coordinates (a sigmoid would flatten the gradient for points near or past the border, which
    face crops do produce). The last layer's bias starts at 0.5 so the initial prediction is
    the frame centre, not the corner.
    """

    def __init__(self, channels: int, hidden: int = 512, layers: int = 5, points: int = 68) -> None:
        super().__init__()
        if layers < 1 or channels < 1 or hidden < 1 or points < 1:
            raise ConfigError(f"svfr: LandmarkHead needs channels, hidden, layers, points >= 1, "
                              f"got {channels}, {hidden}, {layers}, {points}")
        self.points = int(points)
        self.pool = nn.AdaptiveAvgPool2d(1)
        sizes = [channels] + [hidden] * (layers - 1) + [points * 2]
        modules: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(sizes)):
            modules.append(nn.Linear(a, b))
            if i < layers - 1:
                modules.append(nn.SiLU())
        self.mlp = nn.Sequential(*modules)
        with torch.no_grad():
            self.mlp[-1].bias.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` → ``(N, points, 2)`` normalised (x, y)."""
        return self.mlp(self.pool(x).flatten(1)).view(x.shape[0], self.points, 2)
