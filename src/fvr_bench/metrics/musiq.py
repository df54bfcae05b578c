"""MUSIQ (Ke et al., ICCV 2021), as pyiqa's ``musiq`` metric (KonIQ-10k checkpoint); own code.

No-reference, per frame, mean over the frames of a clip; higher is better. pyiqa is the
field's reference implementation (PROTOCOLS.md), so this module follows pyiqa 0.1.16
(``pyiqa/archs/musiq_arch.py`` and ``pyiqa/data/multiscale_trans_util.py``) step by
step, with the same module names so pyiqa's converted checkpoint
``musiq_koniq_ckpt-e95806b9.pth`` loads key for key:

1. frames in [0, 1] → [−1, 1] (``2(x − 0.5)``);
2. multi-scale patches (``get_multiscale_patches``): for each longer-side length
   L ∈ (224, 384) (sorted; scale ids 0, 1) the frame is resized, aspect ratio kept, to
   ``(round(h·L/max(h,w)), round(w·L/max(h,w)))`` (Python ``round``) with
   ``F.interpolate(bicubic, align_corners=False)`` (no antialiasing, no clamping), then the
   full-resolution frame (scale id 2). Each image is cut into 32×32 patches, stride 32,
   after TensorFlow "SAME" zero padding (``F.unfold``, features ordered channel, row,
   column). Every patch carries a hash-based spatial position (the ``count_h × count_w``
   patch grid mapped onto a 10×10 grid by nearest interpolation: index
   ``10·gh + gw``), its scale id and an input mask of 1. The resized scales are
   zero-padded / cut to ``ceil(L/32)²`` patches (49, 144; padded entries have position 0,
   scale 0, mask 0); the full-resolution scale keeps all its patches
   (``max_seq_len_from_original_res = -1``, pyiqa's default);
3. per patch, a ResNet root: weight-standardised 7×7/2 conv (``StdConv``: weights minus
   their mean, divided by their unbiased std + 1e-5; TF "SAME" padding), GroupNorm(32,
   eps 1e-6), ReLU, "SAME"-padded 3×3/2 max-pool, one bottleneck 64 → 256 (GroupNorm eps
   1e-4, with projection) → ``(256, 8, 8)``, flattened in TF (H, W, C) order, linear
   16384 → 384;
4. transformer encoder: + hashed spatial embedding (100×384) + scale embedding (3×384),
   a learned CLS token in front (mask 1), 14 pre-norm blocks (LayerNorm eps 1e-6,
   6-head attention with q/k/v/out linear layers — scores of masked pairs filled with
   −1000, as pyiqa — and a GELU MLP 384 → 1152 → 384), final LayerNorm;
5. quality head ``Linear(384, 1)`` on the CLS token; for the KonIQ checkpoint
   (one output) ``dist_to_mos`` is the identity, so the score is that output (KonIQ MOS
   scale, roughly 0–100).

Checkpoint: pyiqa's file is a flat state dict of this module (``module.`` prefixes are
stripped, as pyiqa's ``clean_state_dict`` does); every key must be consumed and none may
be missing. It is looked up lazily with the weights registry (``musiq_koniq``) or the
explicit ``weights_path``; its sha256 is recorded in the provenance.
``pretrained=False`` builds seeded random weights — tests only, recorded in the
provenance so such numbers never share a column with real ones.

``quantize=True`` (default) first rounds frames to 8-bit levels (pyiqa reads 8-bit
images), as the other metrics here do.

What is verified: the structure, key names and shapes follow pyiqa 0.1.16's source; on
random weights this network and pyiqa's ``MUSIQ`` (run from the pyiqa 0.1.16 wheel) agree
to float32 rounding (``tests/test_metrics_musiq.py``, skipped when pyiqa cannot be
imported). Not verified here: scores with the released checkpoint (not available offline).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.metrics.backends.layers import Mlp
from fvr_bench.metrics.perceptual import _load_file, _PerceptualMetric

WEIGHTS_NAME = "musiq_koniq"

PATCH_SIZE = 32
HIDDEN = 384
MLP_DIM = 1152
NUM_HEADS = 6
NUM_LAYERS = 14
HSE_GRID = 10
RESNET_TOKEN_DIM = 64
LONGER_SIDE_LENGTHS = (224, 384)


# --------------------------------------------------------------------------- padding


def same_padding(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" zero padding of ``(N, C, H, W)`` for a ``kernel``/``stride`` window
    (extra pixel on the bottom/right), as pyiqa's ``exact_padding_2d(mode='same')``."""
    h, w = x.shape[-2:]
    pad_h = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pad_w = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


# --------------------------------------------------------------------------- patches


def hashed_positions(grid: int, count_h: int, count_w: int) -> torch.Tensor:
    """``(count_h · count_w,)`` float positions in ``[0, grid²)``: the patch grid mapped onto
    a ``grid × grid`` table by nearest interpolation (pyiqa's
    ``get_hashed_spatial_pos_emb_index``)."""
    table = torch.arange(grid, dtype=torch.float32).reshape(1, 1, grid)
    pos_w = F.interpolate(table, size=count_w, mode="nearest").reshape(1, count_w)
    pos_h = F.interpolate(table, size=count_h, mode="nearest").reshape(count_h, 1)
    return (pos_h * grid + pos_w).reshape(-1)


def image_patches(image: torch.Tensor, patch: int, scale_id: int, grid: int, max_seq_len: int) -> torch.Tensor:
    """``(N, 3, h, w)`` → ``(N, 3·patch² + 3, L)``: patch pixels, spatial position, scale id,
    mask; padded with zeros / cut to ``max_seq_len`` patches when ``max_seq_len >= 0``."""
    n, _, h, w = image.shape
    pixels = F.unfold(same_padding(image, patch, patch), patch, stride=patch)
    count = pixels.shape[-1]
    spatial = hashed_positions(grid, math.ceil(h / patch), math.ceil(w / patch)).to(pixels)
    meta = torch.stack([spatial, torch.full_like(spatial, float(scale_id)), torch.ones_like(spatial)])
    out = torch.cat([pixels, meta.unsqueeze(0).expand(n, 3, count)], dim=1)
    if max_seq_len >= 0:
        if count < max_seq_len:
            out = torch.cat([out, out.new_zeros(n, out.shape[1], max_seq_len - count)], dim=-1)
        out = out[:, :, :max_seq_len]
    return out


def multiscale_patches(
    images: torch.Tensor,
    patch: int = PATCH_SIZE,
    grid: int = HSE_GRID,
    longer_side_lengths: tuple[int, ...] = LONGER_SIDE_LENGTHS,
    max_seq_len_from_original_res: int | None = -1,
) -> torch.Tensor:
    """``(N, 3, H, W)`` in [−1, 1] → ``(N, L, 3·patch² + 3)`` token inputs (see the module
    docstring): resized scales in increasing order, then the full-resolution frame
    (omitted when ``max_seq_len_from_original_res`` is None)."""
    h, w = images.shape[-2:]
    outputs = []
    lengths = sorted(int(v) for v in longer_side_lengths)
    for scale_id, longer in enumerate(lengths):
        ratio = longer / max(h, w)
        size = (round(h * ratio), round(w * ratio))
        resized = F.interpolate(images, size, mode="bicubic", align_corners=False)
        outputs.append(image_patches(resized, patch, scale_id, grid, int(math.ceil(longer / patch) ** 2)))
    if max_seq_len_from_original_res is not None:
        outputs.append(image_patches(images, patch, len(lengths), grid, int(max_seq_len_from_original_res)))
    return torch.cat(outputs, dim=-1).transpose(1, 2)


# --------------------------------------------------------------------------- network


class StdConv(nn.Conv2d):
    """Weight-standardised convolution with TF "SAME" padding (pyiqa's ``StdConv``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = same_padding(x, self.kernel_size[0], self.stride[0])
        weight = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        weight = weight / (weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride)


class Bottleneck(nn.Module):
    """ResNet-v2-style bottleneck of the MUSIQ root (width = input channels, stride 1)."""

    def __init__(self, inplanes: int, outplanes: int) -> None:
        super().__init__()
        self.conv1 = StdConv(inplanes, inplanes, 1, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, inplanes, eps=1e-4)
        self.conv2 = StdConv(inplanes, inplanes, 3, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, inplanes, eps=1e-4)
        self.conv3 = StdConv(inplanes, outplanes, 1, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, outplanes, eps=1e-4)
        self.needs_projection = inplanes != outplanes
        if self.needs_projection:
            self.conv_proj = StdConv(inplanes, outplanes, 1, 1, bias=False)
            self.gn_proj = nn.GroupNorm(32, outplanes, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.gn_proj(self.conv_proj(x)) if self.needs_projection else x
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        x = self.gn3(self.conv3(x))
        return F.relu(x + identity)


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        heads = [proj(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2) for proj in (self.query, self.key, self.value)]
        q, k, v = heads
        attn = (q @ k.transpose(-2, -1)) * self.scale
        pair = mask.reshape(b, 1, n, 1) * mask.reshape(b, 1, 1, n)
        attn = attn.masked_fill(pair == 0, -1e3).softmax(dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, c))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class _PositionEmbedding(nn.Module):
    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        self.position_emb = nn.Parameter(torch.zeros(1, grid * grid, dim))


class _ScaleEmbedding(nn.Module):
    def __init__(self, num_scales: int, dim: int) -> None:
        super().__init__()
        self.scale_emb = nn.Parameter(torch.zeros(num_scales, dim))


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, num_heads: int, num_layers: int, num_scales: int, grid: int) -> None:
        super().__init__()
        self.posembed_input = _PositionEmbedding(grid, dim)
        self.scaleembed_input = _ScaleEmbedding(num_scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": EncoderBlock(dim, mlp_dim, num_heads) for i in range(num_layers)})

    def forward(self, x: torch.Tensor, spatial: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = x + self.posembed_input.position_emb[0][spatial.long()]
        x = x + self.scaleembed_input.scale_emb[scale.long()]
        x = torch.cat([self.cls.expand(n, -1, -1), x], dim=1)
        mask = torch.cat([mask.new_ones(n, 1), mask], dim=1)
        for block in self.transformer.values():
            x = block(x, mask)
        return self.encoder_norm(x)


class MUSIQNet(nn.Module):
    """MUSIQ with pyiqa's module names: ``(N, 3, H, W)`` in [0, 1] → ``(N,)`` scores.

    ``num_scales`` = number of resized scales + 1 (the full-resolution one).
    """

    def __init__(
        self,
        longer_side_lengths: tuple[int, ...] = LONGER_SIDE_LENGTHS,
        max_seq_len_from_original_res: int | None = -1,
        num_class: int = 1,
    ) -> None:
        super().__init__()
        self.longer_side_lengths = tuple(sorted(int(v) for v in longer_side_lengths))
        self.max_seq_len_from_original_res = max_seq_len_from_original_res
        self.conv_root = StdConv(3, RESNET_TOKEN_DIM, 7, 2, bias=False)
        self.gn_root = nn.GroupNorm(32, RESNET_TOKEN_DIM, eps=1e-6)
        self.block1 = Bottleneck(RESNET_TOKEN_DIM, RESNET_TOKEN_DIM * 4)
        token = PATCH_SIZE // 4
        self.embedding = nn.Linear(RESNET_TOKEN_DIM * 4 * token * token, HIDDEN)
        self.transformer_encoder = TransformerEncoder(HIDDEN, MLP_DIM, NUM_HEADS, NUM_LAYERS, 3, HSE_GRID)
        self.head = nn.Linear(HIDDEN, num_class)
        self.num_class = num_class

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] → ``(N, L, 3·32² + 3)`` multi-scale patch inputs."""
        return multiscale_patches((images - 0.5) * 2, PATCH_SIZE, HSE_GRID, self.longer_side_lengths, self.max_seq_len_from_original_res)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        b, seq_len, _ = tokens.shape
        spatial, scale, mask = tokens[:, :, -3], tokens[:, :, -2], tokens[:, :, -1]
        x = tokens[:, :, :-3].reshape(-1, 3, PATCH_SIZE, PATCH_SIZE)
        x = F.relu(self.gn_root(self.conv_root(x)))
        x = F.max_pool2d(same_padding(x, 3, 2), 3, 2)
        x = self.block1(x)
        x = x.permute(0, 2, 3, 1).reshape(b, seq_len, -1)  # TensorFlow (H, W, C) order
        x = self.transformer_encoder(self.embedding(x), spatial, scale, mask)
        q = self.head(x[:, 0])
        if self.num_class > 1:  # distribution checkpoints (AVA): mean opinion score of the softmax
            q = q.softmax(dim=-1)
        return (q * torch.arange(1, self.num_class + 1, dtype=q.dtype, device=q.device)).sum(dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(self.tokens(images))


# --------------------------------------------------------------------------- weights


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` prefixes (pyiqa's ``clean_state_dict``); unwrap ``{"params": …}``."""
    if "params" in state and isinstance(state["params"], dict):
        state = state["params"]
    return {(key.removeprefix("module.")): value for key, value in state.items()}


def load_musiq_state(net: MUSIQNet, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load pyiqa's MUSIQ state dict: every key consumed, none missing, shapes equal.
    Returns the keys used."""
    state = clean_state_dict(state)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ConfigError(f"{source}: not a pyiqa MUSIQ (KonIQ) checkpoint (missing {missing[:4]}, unexpected {extra[:4]})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ConfigError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return sorted(state)


def random_init(net: MUSIQNet) -> None:
    """pyiqa's initialisation where it sets one (embeddings N(0, 0.02), CLS 0); the rest
    keeps PyTorch's defaults."""
    nn.init.normal_(net.transformer_encoder.posembed_input.position_emb, std=0.02)
    nn.init.normal_(net.transformer_encoder.scaleembed_input.scale_emb, std=0.02)
    nn.init.zeros_(net.transformer_encoder.cls)


def build_musiq_net(
    state: dict[str, torch.Tensor] | None,
    seed: int = 0,
    longer_side_lengths: tuple[int, ...] = LONGER_SIDE_LENGTHS,
    max_seq_len_from_original_res: int | None = -1,
) -> MUSIQNet:
    """MUSIQ in eval mode; ``state=None`` → seeded random weights (tests only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MUSIQNet(longer_side_lengths, max_seq_len_from_original_res)
        if state is None:
            random_init(net)
    if state is not None:
        load_musiq_state(net, state, "musiq checkpoint")
    return net.eval().requires_grad_(False)


# --------------------------------------------------------------------------- metric


class MUSIQ(_PerceptualMetric):
    """MUSIQ (KonIQ) per frame, mean over frames; higher is better, no reference.

    Input ``(B, T, 3, H, W)`` float RGB in [0, 1], any size; output ``(B, T)`` float32
    scores (KonIQ MOS scale, roughly 0–100 with the released checkpoint).

    Args:
        longer_side_lengths: longer sides of the resized scales (pyiqa: 224, 384).
        max_seq_len_from_original_res: patches kept from the full-resolution frame
            (−1: all, pyiqa's default; null: no full-resolution scale).
        quantize: round frames to 8-bit levels first.
        weights_path: explicit ``musiq_koniq_ckpt-e95806b9.pth``; otherwise looked up in
            the weights registry (``musiq_koniq``).
        pretrained: False → seeded random weights (tests only; recorded in provenance).
        seed: seed of the random weights.
        verify_weights: check the file against a published checksum when the registry
            has one.
        chunk_frames: frames per pass (does not change the number); None: 4 on a CPU,
            16 on a GPU.
    """

    metric_id: ClassVar[str] = "musiq"
    higher_is_better: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    level: ClassVar[str] = "frame"

    def __init__(
        self,
        longer_side_lengths: tuple[int, ...] | list[int] = LONGER_SIDE_LENGTHS,
        max_seq_len_from_original_res: int | None = -1,
        quantize: bool = True,
        weights_path: str | None = None,
        pretrained: bool = True,
        seed: int = 0,
        verify_weights: bool = True,
        chunk_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        lengths = tuple(sorted(int(v) for v in longer_side_lengths))
        if len(lengths) != 2 or min(lengths) < 1:
            raise ConfigError(f"musiq: longer_side_lengths must be two positive sizes (the checkpoint has 3 scale embeddings), got {longer_side_lengths!r}")
        if max_seq_len_from_original_res is not None and int(max_seq_len_from_original_res) < -1:
            raise ConfigError(f"musiq: max_seq_len_from_original_res must be -1 (all), >= 0 or null, got {max_seq_len_from_original_res!r}")
        self.longer_side_lengths = lengths
        self.max_seq_len_from_original_res = None if max_seq_len_from_original_res is None else int(max_seq_len_from_original_res)
        self._init_common(pretrained, seed, quantize, chunk_frames, verify_weights)
        self._declare({WEIGHTS_NAME: weights_path})

    def _build(self) -> MUSIQNet:
        state = _load_file(self.files.path(WEIGHTS_NAME)) if self.pretrained else None
        return build_musiq_net(state, self.seed, self.longer_side_lengths, self.max_seq_len_from_original_res)

    @torch.no_grad()
    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] → ``(B, T)`` float32 MUSIQ scores."""
        net = self.network(preds.device)
        batch, frames = preds.shape[:2]
        flat = preds.reshape(batch * frames, *preds.shape[2:])
        chunk = self.chunk_frames or (16 if preds.device.type == "cuda" else 4)
        out = [net(self._prepare(flat[i : i + chunk])) for i in range(0, flat.shape[0], chunk)]
        return torch.cat(out).to(torch.float32).reshape(batch, frames)

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checkpoint": "koniq10k",
            "longer_side_lengths": list(self.longer_side_lengths),
            "max_seq_len_from_original_res": self.max_seq_len_from_original_res,
            "patch_size": PATCH_SIZE,
            "hse_grid_size": HSE_GRID,
            "resize": "bicubic, align_corners=False, no antialias",
            "quantize": self.quantize,
        }
        if not self.pretrained:
            out["pretrained"] = False
            out["seed"] = self.seed
        return out


__all__ = [
    "MUSIQ",
    "MUSIQNet",
    "build_musiq_net",
    "clean_state_dict",
    "hashed_positions",
    "load_musiq_state",
    "multiscale_patches",
    "same_padding",
]
