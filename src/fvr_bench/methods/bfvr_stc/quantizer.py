"""Spatial-temporal codebooks (STLookUp), marginal prior regularisation, codebook usage.

A latent ``z`` ``(B, D, t, h, w)`` is quantised twice (official ``VectorQuantizerST``):

* spatial: every latent vector's nearest entry of the spatial codebook ``C_S`` (K × D);
* temporal: the *temporal query* — attention across the ``t`` frames at each location
  (:class:`TemporalAttention`) plus the motion residual ``z_τ − z_{τ−1}`` (zero for the first
  latent frame) — looked up in the temporal codebook ``C_T``;

and ``z_q = C_S[i_S] + C_T[i_T]`` goes to the decoder through the straight-through
estimator ``z + sg(z_q − z)``. Codebook loss (official form, as in taming/CodeFormer):
``mean((sg(z_q) − z)²) + β · mean((z_q − sg(z))²)``, β = 0.25.

Marginal prior regularisation (MPR) keeps the codebooks from collapsing: with the squared
distances ``d_nk`` of N latent vectors to K codes, ``p_nk = d_nk⁻¹ / Σ_j d_nj⁻¹`` (row-normalised
inverse distances), the marginal ``p̄_k = mean_n p_nk``, and ``MPR = KL(p̄ ‖ U_K)`` — summed over
the spatial and temporal codebooks, weight 0.1 in the stage-I loss. ``mpr_form="official_code"``
reproduces what the released code computes instead, ``nn.KLDivLoss()(log_softmax(p̄), U_K)``
= ``(1/K)·KL(U_K ‖ softmax(p̄))``, which treats the probabilities as logits and is orders of
magnitude smaller.

Note on gradients (as in the official code): the temporal attention only changes *which*
temporal codes are chosen, so in stage I it learns through MPR alone; the codebooks learn
through the codebook loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.methods.bfvr_stc.autoencoder import group_norm, single_head_attention

MPR_FORMS = ("paper", "official_code")
INVERSE_DISTANCE_FLOOR = 1e-12  # an exact hit (d = 0, or slightly negative from x² + e² − 2xe) would give 1/d = ±inf


class TemporalAttention(nn.Module):
    """Single-head attention across the ``t`` latent frames at every spatial location
    (official ``SA2``): GroupNorm(16), 1×1×1 q/k/v convs, softmax(q kᵀ/√D) v, 1×1×1 proj_out.
    No residual: the output is added to the motion residual by :func:`temporal_query`.
    ``(B, D, t, h, w)`` → ``(B, D, t, h, w)``."""

    def __init__(self, channels: int, norm_groups: int = 16) -> None:
        super().__init__()
        self.norm = group_norm(channels, norm_groups, option="module.quantizer.temporal_norm_groups")
        self.q = nn.Conv3d(channels, channels, kernel_size=1)
        self.k = nn.Conv3d(channels, channels, kernel_size=1)
        self.v = nn.Conv3d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv3d(channels, channels, kernel_size=1)
        self.fused = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = z.shape
        normed = self.norm(z)

        def per_location(conv: nn.Conv3d) -> torch.Tensor:  # (B, D, t, h, w) → (B·h·w, t, D)
            return conv(normed).permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)

        out = single_head_attention(per_location(self.q), per_location(self.k), per_location(self.v), self.fused)
        out = out.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)
        return self.proj_out(out)


def motion_residual(z: torch.Tensor) -> torch.Tensor:
    """``z_τ − z_{τ−1}`` along the latent time axis of ``(B, D, t, h, w)``; zero at τ = 0."""
    return z - torch.cat([z[:, :, :1], z[:, :, :-1]], dim=2)


def official_stage2_motion_residual(z: torch.Tensor) -> torch.Tensor:
    """What the released stage-II network (``CodeFormer3D.forward``) feeds its temporal
    transformer as "motion residual": it permutes a ``(B, D, t, h, w)`` tensor as if it were
    ``(B, t, h, w, D)``, so the "frames" it differences are slices of the channel-major memory.
    Only for running the official checkpoint, whose transformer was trained on it."""
    b, c, t, h, w = z.shape
    rows = z.permute(1, 0, 2, 3, 4).reshape(t, -1)
    rows = torch.cat([rows[:1], rows], dim=0)
    diff = (rows[1:] - rows[:-1]).reshape(t, b, h, w, c)
    return diff.permute(1, 4, 0, 2, 3)


def squared_distances(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` × ``(K, D)`` → ``(N, K)``: ‖x‖² + ‖e‖² − 2 x·e (the official expansion)."""
    return vectors.square().sum(1, keepdim=True) + codebook.square().sum(1) - 2.0 * vectors @ codebook.t()


def marginal_prior_regularization(distances: torch.Tensor, form: str = "paper") -> torch.Tensor:
    """MPR of one codebook from the squared distances ``(N, K)`` (see the module docstring)."""
    inverse = 1.0 / distances.clamp_min(INVERSE_DISTANCE_FLOOR)
    assignment = inverse / inverse.sum(dim=1, keepdim=True)
    marginal = assignment.mean(dim=0)
    size = marginal.numel()
    if form == "paper":
        return (marginal * (marginal.clamp_min(1e-30).log() + math.log(size))).sum()
    if form == "official_code":
        # nn.KLDivLoss() (reduction "mean") of input log_softmax(p̄) and target U_K
        return ((math.log(1.0 / size) - F.log_softmax(marginal, dim=0)) / size).mean()
    raise ConfigError(f"module.quantizer.mpr_form={form!r}: one of {', '.join(MPR_FORMS)}")


def perplexity(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """exp(entropy) of the code histogram: 1 = collapse, K = uniform use."""
    frequency = torch.bincount(indices.reshape(-1), minlength=codebook_size).float() / indices.numel()
    return torch.exp(-(frequency * (frequency + 1e-10).log()).sum())


@dataclass
class Quantized:
    """Result of :meth:`SpatioTemporalQuantizer.forward`.

    latent:           ``(B, D, t, h, w)`` ``C_S[i_S] + C_T[i_T]`` with straight-through gradients to ``z``.
    codebook_loss:    scalar, β-weighted as in the module docstring.
    mpr:              scalar, unweighted MPR of both codebooks (sum).
    spatial_indices:  ``(B, t, h, w)`` int64.
    temporal_indices: ``(B, t, h, w)`` int64.
    """

    latent: torch.Tensor
    codebook_loss: torch.Tensor
    mpr: torch.Tensor
    spatial_indices: torch.Tensor
    temporal_indices: torch.Tensor


class SpatioTemporalQuantizer(nn.Module):
    """Spatial and temporal codebooks (K × D each), the temporal branch, STE, codebook loss, MPR."""

    def __init__(self, codebook_size: int = 1024, emb_dim: int = 256, beta: float = 0.25,
                 temporal_norm_groups: int = 16, mpr_form: str = "paper") -> None:
        super().__init__()
        if mpr_form not in MPR_FORMS:
            raise ConfigError(f"module.quantizer.mpr_form={mpr_form!r}: one of {', '.join(MPR_FORMS)}")
        self.codebook_size, self.emb_dim, self.beta, self.mpr_form = codebook_size, emb_dim, beta, mpr_form
        self.spatial_codebook = nn.Embedding(codebook_size, emb_dim)
        self.temporal_codebook = nn.Embedding(codebook_size, emb_dim)
        for codebook in (self.spatial_codebook, self.temporal_codebook):
            nn.init.uniform_(codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.temporal_attention = TemporalAttention(emb_dim, temporal_norm_groups)

    def temporal_query(self, z: torch.Tensor, official_stage2_residual: bool = False) -> torch.Tensor:
        """What the temporal codebook is searched with: temporal attention + motion residual."""
        residual = official_stage2_motion_residual(z) if official_stage2_residual else motion_residual(z)
        return self.temporal_attention(z) + residual

    @staticmethod
    def channels_last(z: torch.Tensor) -> torch.Tensor:
        """``(B, D, t, h, w)`` → ``(B·t·h·w, D)`` in (b, t, h, w) order."""
        return z.permute(0, 2, 3, 4, 1).reshape(-1, z.shape[1])

    def nearest(self, z: torch.Tensor, codebook: nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-neighbour indices ``(B, t, h, w)`` and the squared distances ``(N, K)``."""
        distances = squared_distances(self.channels_last(z), codebook.weight)
        b, _, t, h, w = z.shape
        return distances.argmin(dim=1).reshape(b, t, h, w), distances

    def lookup(self, spatial_indices: torch.Tensor, temporal_indices: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, t, h, w)`` ×2 → ``C_S[i_S] + C_T[i_T]`` as ``(B, D, t, h, w)``."""
        vectors = self.spatial_codebook(spatial_indices) + self.temporal_codebook(temporal_indices)
        return vectors.permute(0, 4, 1, 2, 3).contiguous()

    def forward(self, z: torch.Tensor, with_mpr: bool = True) -> Quantized:
        spatial_indices, spatial_distances = self.nearest(z, self.spatial_codebook)
        temporal_indices, temporal_distances = self.nearest(self.temporal_query(z), self.temporal_codebook)
        quantized = self.lookup(spatial_indices, temporal_indices)
        codebook_loss = (quantized.detach() - z).square().mean() + self.beta * (quantized - z.detach()).square().mean()
        if with_mpr:
            mpr = (marginal_prior_regularization(spatial_distances, self.mpr_form)
                   + marginal_prior_regularization(temporal_distances, self.mpr_form))
        else:
            mpr = z.new_zeros(())
        straight_through = z + (quantized - z).detach()
        return Quantized(straight_through, codebook_loss, mpr, spatial_indices, temporal_indices)


class CodebookUsage(nn.Module):
    """Running histogram of the codes used (the paper's Fig. 5/12 quantity).

    ``counts`` ``(2, K)``: row 0 spatial, row 1 temporal; kept out of checkpoints (a
    statistic of the run, not a weight). ``fraction_used()`` → ``(spatial, temporal)``.
    """

    def __init__(self, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("counts", torch.zeros(2, codebook_size, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def update(self, spatial_indices: torch.Tensor, temporal_indices: torch.Tensor) -> None:
        size = self.counts.shape[1]
        self.counts[0] += torch.bincount(spatial_indices.reshape(-1), minlength=size)
        self.counts[1] += torch.bincount(temporal_indices.reshape(-1), minlength=size)

    def fraction_used(self) -> tuple[float, float]:
        used = (self.counts > 0).float().mean(dim=1)
        return float(used[0]), float(used[1])

    def reset(self) -> None:
        self.counts.zero_()
