"""Stage-II lookup transformers: LQ latents → code indices of the spatial / temporal codebook.

Each transformer (official ``CodeFormer3D``: ``s_ft_layers`` / ``t_ft_layers``) sees the
``h·w`` tokens of one latent frame at a time (frames are batch entries), adds a learned
position embedding to queries and keys only (values stay position-free, the DETR /
CodeFormer ``TransformerSALayer``), and runs pre-norm layers: LayerNorm → multi-head self-
attention → residual, LayerNorm → Linear → GELU → Linear → residual. A LayerNorm and a
bias-free Linear give logits over the K codes. Paper scale: 9 layers, width 256, 2 heads,
MLP 512, 64×64 tokens (a 512² frame). The spatial transformer reads the LQ latent; the
temporal one reads its temporal query (temporal attention + motion residual, computed by
the frozen quantizer).

Other latent sizes: the learned ``(grid_h·grid_w, dim)`` embedding is resized bicubically
as a 2-D grid to the actual ``h × w``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.errors import ConfigError


class PositionalSelfAttention(nn.Module):
    """Multi-head self-attention with the position embedding on queries and keys only.

    Parameters follow ``nn.MultiheadAttention``'s layout (``in_proj_weight`` ``(3·dim, dim)``,
    ``in_proj_bias``, ``out_proj``) so official weights load unchanged.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"architecture.transformer.dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self.fused = True

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``x`` ``(N, L, dim)``, ``position`` ``(L, dim)`` → ``(N, L, dim)``."""
        n, length, dim = x.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        with_position = x + position

        def split(t: torch.Tensor) -> torch.Tensor:  # (N, L, dim) → (N, heads, L, dim/heads), contiguous for SDPA
            return t.reshape(n, length, self.heads, dim // self.heads).transpose(1, 2).contiguous()

        q = split(F.linear(with_position, w_q, b_q))
        k = split(F.linear(with_position, w_k, b_k))
        v = split(F.linear(x, w_v, b_v))
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(n, length, dim))


class LookupTransformerLayer(nn.Module):
    """Pre-norm self-attention + GELU MLP, both residual (dropout 0, as in the paper's setting)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = PositionalSelfAttention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp_in = nn.Linear(dim, mlp_dim)
        self.mlp_out = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), position)
        return x + self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x))))


class LookupTransformer(nn.Module):
    """Latent ``(B, C, t, h, w)`` → code logits ``(B, t, h, w, K)``.

    ``latent_grid``: the ``(h, w)`` token grid the position embedding is learned for
    (64×64 for 512² frames). ``in_dim``: latent channels; a Linear maps them to ``dim``
    when they differ (they are equal, 256, at paper scale, where the official network
    feeds the latent in directly).
    """

    def __init__(self, codebook_size: int = 1024, dim: int = 256, heads: int = 2, layers: int = 9, mlp_dim: int = 512,
                 latent_grid: Sequence[int] = (64, 64), in_dim: int = 256) -> None:
        super().__init__()
        self.latent_grid = (int(latent_grid[0]), int(latent_grid[1]))
        self.input_projection = nn.Identity() if in_dim == dim else nn.Linear(in_dim, dim)
        self.position_embedding = nn.Parameter(torch.zeros(self.latent_grid[0] * self.latent_grid[1], dim))
        self.layers = nn.ModuleList(LookupTransformerLayer(dim, heads, mlp_dim) for _ in range(layers))
        self.output_norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, codebook_size, bias=False)

    def position_for(self, height: int, width: int) -> torch.Tensor:
        """The ``(height·width, dim)`` embedding: the learned one, resized if the grid differs."""
        if (height, width) == self.latent_grid:
            return self.position_embedding
        grid = self.position_embedding.t().reshape(1, -1, *self.latent_grid)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return grid.reshape(-1, height * width).t()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = latent.shape
        tokens = self.input_projection(latent.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c))
        position = self.position_for(h, w).to(tokens.dtype)
        for layer in self.layers:
            tokens = layer(tokens, position)
        logits = self.to_logits(self.output_norm(tokens))
        return logits.reshape(b, t, h, w, -1)
