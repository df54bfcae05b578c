"""FasterVQA (Wu et al., FAST-VQA / FasterVQA), as the official repository runs it; own code.

No-reference video quality, one score per clip; higher is better (VividFace, PROTOCOLS.md).
Reference: VQAssessment/FAST-VQA-and-FasterVQA — ``vqa.py -m FasterVQA`` with
``options/fast/f3dvqa-b.yml`` and ``FAST_VQA_3D_1_1.pth``; files followed:
``fastvqa/models/swin_backbone.py`` (latest stored version, 5ac99f2),
``fastvqa/models/evaluator.py`` (c9554e0), ``fastvqa/models/head.py`` (54de4d6),
``fastvqa/datasets/fusion_datasets.py`` (7a35b0d).

Pipeline for one clip (frames rounded to 8-bit levels, as the official script decodes
uint8 video with decord):

1. **Temporal sampling** of ``clip_len = 32`` frames. ``temporal_sampling="contiguous"``
   (default) is what ``vqa.py`` actually does with ``f3dvqa-b.yml``: it looks for
   ``t_frag`` at the dataset-args level, where that yml has none, so it uses
   ``SampleFrames(clip_len=32, num_clips=1)`` in test mode — 32 consecutive frames
   (interval 1) starting at ``int((T − 32 + 1) / 2)`` (0 when T < 32), indices modulo T.
   ``temporal_sampling="fragments"`` is the paper's / dataloader's temporal fragments
   (``FragmentSampleFrames(fsize_t = clip_len // t_frag = 4, fragments_t = t_frag = 8)``):
   T split into 8 segments of ``T // 8`` frames, in each 4 consecutive frames (spacing
   ``frame_interval``) at a random offset in ``[0, T // 8 − 4·interval)`` (0 when the
   segment is too short), indices modulo T; offsets from ``numpy.random.RandomState(
   sample_seed)`` (the legacy generator the official code draws from globally).
2. **Spatial fragments** (``get_spatial_fragments``): a 7×7 grid of 32×32 mini-patches
   spliced into one 224×224 frame. If ``min(H/224, W/224) < 1`` the clip is first
   upsampled by ``1/ratio`` (``F.interpolate(x/255, scale_factor, bilinear)``, back to
   uint8 by truncation) — and, exactly as the official code, the grid is still computed
   from the ORIGINAL H, W (it reads them before upsampling), so for small frames the
   patches come from the top-left part of the upsampled frame. Grid origins
   ``min(H // 7 · i, H − 32)``; within each cell a random offset in
   ``[0, H // 7 − 32)`` (0 when the cell is not larger than 32), drawn with
   ``torch.randint`` (rows first, then columns), shared by each group of ``aligned = 8``
   consecutive frames. The official script does not seed; here every clip uses a fresh
   ``torch.Generator`` seeded with ``sample_seed`` (42 as the common FasterVQA scorer
   wrappers set), so the number is deterministic and independent of batching.
3. Normalisation ``(x − (123.675, 116.28, 103.53)) / (58.395, 57.12, 57.375)`` (0–255
   scale), input ``(1, 3, 32, 224, 224)``.
4. **Network** (``DiViDeAddEvaluator`` with ``backbone_size: swin_tiny_grpb``): a
   ``SwinTransformer3D()`` with the official defaults — patch (2, 4, 4), embed 96, depths
   (2, 2, 6, 2), heads (3, 6, 12, 24), window (8, 7, 7), qkv bias, patch norm,
   ``frag_biases = (True, True, True, False)`` — run as the latest official forward runs
   it, with ``resized_window_size = (4, 7, 7)`` (the relative-position index sliced to the
   4×7×7 window; shift sizes stay (4, 3, 3), and shrink to the feature size where it is
   not larger than the window, as ``get_window_size`` does). Gated relative position
   bias: with fragment coordinates of every token (the 7×7 fragment grid mapped onto the
   padded token grid by nearest interpolation, rolled with the window shift),
   ``g = |Δfh| + |Δfw|`` per token pair and the bias is ``B_rel · g + B_frag · (1 − g)``
   in stages 1–3 (plain ``B_rel`` in stage 4) — literally, as the official code computes
   it. Final LayerNorm → ``VQAHead`` (1×1×1 conv 768 → 64, GELU, 1×1×1 conv 64 → 1; its
   dropout is off in eval) → the mean of the ``(1, 1, 16, 7, 7)`` score map.
5. ``rescale="sigmoid"`` (default; what ``vqa.py`` prints as "range [0,1]" and what
   VividFace's table shows): ``1 / (1 + exp(−(s − 0.14759505) / 0.03613452))``;
   ``rescale="none"``: the raw mean.

Checkpoint: ``torch.load(FAST_VQA_3D_1_1.pth)["state_dict"]`` with keys
``fragments_backbone.*`` (including the ``relative_position_index`` buffers, which must
equal the computed ones) and ``vqa_head.*``; the official script loads it strictly, so
every key must be consumed and none may be missing (a bare state dict or ``module.``
prefixes are accepted too).

Verified here: the sampler arithmetic (hand-made cases in the tests, including the
upsampling quirk and the random-offset draws), the key layout and shapes against the
official module definitions as read, and that a state dict in that layout loads with
every key consumed. NOT verified (no official code or checkpoint runs here): agreement
of the network output with the official implementation (the Swin-3D port was written
from the source, not compared numerically), the checkpoint's actual key list, and the
numbers with the released weights. Which ``swin_backbone.py`` revision the released
checkpoint was trained with is not documented; ``resized_window_size=(4, 7, 7)`` is the
default of the latest stored revision (older revisions use the full (8, 7, 7) window —
``window_size`` setting).
"""

from __future__ import annotations

import math
from functools import lru_cache, reduce
from operator import mul
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.errors import ClipNotScorableError, ConfigError
from fvr_bench.metrics.backends.layers import Mlp
from fvr_bench.metrics.fidelity import quantize_8bit
from fvr_bench.metrics.perceptual import _load_file, _PerceptualMetric

WEIGHTS_NAME = "fastervqa"

FRAGMENT_MEAN = (123.675, 116.28, 103.53)
FRAGMENT_STD = (58.395, 57.12, 57.375)
RESCALE_MEAN_STD = {"FasterVQA": (0.14759505, 0.03613452)}

EMBED_DIM = 96
DEPTHS = (2, 2, 6, 2)
NUM_HEADS = (3, 6, 12, 24)
WINDOW = (8, 7, 7)
PATCH = (2, 4, 4)
FRAG_BIASES = (True, True, True, False)
FRAGMENT_GRID = (1, 7, 7)  # global_position_index's default, never changed by the official code
RESIZED_WINDOW = (4, 7, 7)


# --------------------------------------------------------------------------- sampling


def temporal_indices(
    num_frames: int,
    mode: str = "contiguous",
    clip_len: int = 32,
    t_frag: int = 8,
    frame_interval: int = 1,
    seed: int = 42,
) -> np.ndarray:
    """Frame indices (``int32``, length ``clip_len``) of one clip of ``num_frames`` frames.

    ``"contiguous"``: ``SampleFrames(clip_len, frame_interval, num_clips=1)`` in test mode;
    ``"fragments"``: ``FragmentSampleFrames(clip_len // t_frag, t_frag, frame_interval)``
    with offsets from ``numpy.random.RandomState(seed)`` (see the module docstring).
    """
    if num_frames < 1:
        raise ValueError("fastervqa: a clip needs at least one frame")
    if mode == "contiguous":
        span = clip_len * frame_interval
        avg_interval = (num_frames - span + 1) / 1.0
        offset = int(np.int32(avg_interval / 2.0)) if num_frames > span - 1 else 0
        inds = offset + np.arange(clip_len) * frame_interval
    elif mode == "fragments":
        fsize_t = clip_len // t_frag
        tlength = num_frames // t_frag
        tgrids = np.array([tlength * i for i in range(t_frag)], dtype=np.int32)
        if tlength > fsize_t * frame_interval:
            rnd = np.random.RandomState(seed).randint(0, tlength - fsize_t * frame_interval, size=t_frag)
        else:
            rnd = np.zeros(t_frag, dtype=np.int32)
        inds = (np.arange(fsize_t)[None, :] * frame_interval + rnd[:, None] + tgrids[:, None]).reshape(-1)
    else:
        raise ConfigError(f"fastervqa: temporal_sampling must be 'contiguous' or 'fragments', got {mode!r}")
    return np.mod(inds, num_frames).astype(np.int32)


def spatial_fragments(
    video: torch.Tensor,
    fragments_h: int = 7,
    fragments_w: int = 7,
    fsize_h: int = 32,
    fsize_w: int = 32,
    aligned: int = 8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``get_spatial_fragments`` (non-random-grid mode, upsample fallback): ``(C, T, H, W)``
    on the 0–255 scale (uint8 values) → float32 ``(C, T, fragments_h·fsize_h,
    fragments_w·fsize_w)``. Offsets come from ``torch.randint(..., generator=generator)``,
    rows first, then columns (the official draw order)."""
    size_h, size_w = fragments_h * fsize_h, fragments_w * fsize_w
    if video.shape[1] == 1:  # images
        aligned = 1
    dur_t, res_h, res_w = video.shape[-3:]
    if res_h < fsize_h or res_w < fsize_w:
        # the official grid (computed on the original size) would index outside the frame
        raise ClipNotScorableError(f"fastervqa: frames of {res_h}x{res_w} are smaller than one {fsize_h}x{fsize_w} fragment")
    ratio = min(res_h / size_h, res_w / size_w)
    if ratio < 1:
        up = F.interpolate(video.to(torch.float32) / 255.0, scale_factor=1 / ratio, mode="bilinear")
        video = torch.trunc(up * 255.0)  # back to uint8 levels, as .type_as(uint8 video)
    if dur_t % aligned != 0:
        raise ConfigError(f"fastervqa: {dur_t} sampled frames are not a multiple of aligned={aligned}")
    # the grid uses the size BEFORE upsampling (res_h, res_w), as the official code does
    hgrids = [min(res_h // fragments_h * i, res_h - fsize_h) for i in range(fragments_h)]
    wgrids = [min(res_w // fragments_w * i, res_w - fsize_w) for i in range(fragments_w)]
    hlength, wlength = res_h // fragments_h, res_w // fragments_w
    groups = dur_t // aligned
    shape = (fragments_h, fragments_w, groups)
    rnd_h = torch.randint(hlength - fsize_h, shape, generator=generator) if hlength > fsize_h else torch.zeros(shape, dtype=torch.long)
    rnd_w = torch.randint(wlength - fsize_w, shape, generator=generator) if wlength > fsize_w else torch.zeros(shape, dtype=torch.long)
    out = torch.zeros(video.shape[:-2] + (size_h, size_w), dtype=torch.float32, device=video.device)
    for i, hs in enumerate(hgrids):
        for j, ws in enumerate(wgrids):
            for t in range(groups):
                h0, w0 = hs + int(rnd_h[i, j, t]), ws + int(rnd_w[i, j, t])
                out[:, t * aligned : (t + 1) * aligned, i * fsize_h : (i + 1) * fsize_h, j * fsize_w : (j + 1) * fsize_w] = video[
                    :, t * aligned : (t + 1) * aligned, h0 : h0 + fsize_h, w0 : w0 + fsize_w
                ]
    return out


# --------------------------------------------------------------------------- Swin-3D


def window_partition(x: torch.Tensor, ws: tuple[int, int, int]) -> torch.Tensor:
    """``(B, D, H, W, C)`` → ``(B·nW, Wd·Wh·Ww, C)``."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, reduce(mul, ws), c)


def window_reverse(windows: torch.Tensor, ws: tuple[int, int, int], b: int, d: int, h: int, w: int) -> torch.Tensor:
    x = windows.view(b, d // ws[0], h // ws[1], w // ws[2], ws[0], ws[1], ws[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(b, d, h, w, -1)


def get_window_size(x_size, window_size, shift_size):
    """The window (and shift) actually used: a dimension not larger than the window takes
    the feature size and no shift."""
    use_window, use_shift = list(window_size), list(shift_size)
    for i in range(len(x_size)):
        if x_size[i] <= window_size[i]:
            use_window[i] = x_size[i]
            use_shift[i] = 0
    return tuple(use_window), tuple(use_shift)


@lru_cache(maxsize=64)
def compute_mask(d: int, h: int, w: int, ws: tuple, ss: tuple, device: torch.device) -> torch.Tensor:
    """SW-MSA mask ``(nW, N, N)``: 0 within a region, −100 across regions."""
    img_mask = torch.zeros((1, d, h, w, 1), device=device)
    cnt = 0
    for ds in (slice(-ws[0]), slice(-ws[0], -ss[0]), slice(-ss[0], None)):
        for hs in (slice(-ws[1]), slice(-ws[1], -ss[1]), slice(-ss[1], None)):
            for wsl in (slice(-ws[2]), slice(-ws[2], -ss[2]), slice(-ss[2], None)):
                img_mask[:, ds, hs, wsl, :] = cnt
                cnt += 1
    windows = window_partition(img_mask, ws).squeeze(-1)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@lru_cache(maxsize=64)
def fragment_gate(d: int, h: int, w: int, ws: tuple, ss: tuple, device: torch.device, fragments: tuple = FRAGMENT_GRID) -> torch.Tensor:
    """``(nW, N, N)`` float: ``|Δ fragment coordinate|`` summed over (d, h, w) for every token
    pair of every window (the official ``global_position_index(...).abs().sum(-1)``)."""
    grids = torch.meshgrid(*(torch.arange(f) for f in fragments), indexing="ij")
    frags = torch.stack(grids).float()[None].to(device)  # 1, 3, Fd, Fh, Fw
    coords = F.interpolate(frags, size=(d, h, w)).long().permute(0, 2, 3, 4, 1)
    coords = torch.roll(coords, shifts=(-ss[0], -ss[1], -ss[2]), dims=(1, 2, 3))
    win = window_partition(coords, ws)
    return (win[:, None, :] - win[:, :, None]).abs().sum(-1).float()


def relative_position_index(ws: tuple[int, int, int]) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(*(torch.arange(s) for s in ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws[0] - 1
    rel[:, :, 1] += ws[1] - 1
    rel[:, :, 2] += ws[2] - 1
    rel[:, :, 0] *= (2 * ws[1] - 1) * (2 * ws[2] - 1)
    rel[:, :, 1] *= 2 * ws[2] - 1
    return rel.sum(-1)


class WindowAttention3D(nn.Module):
    def __init__(self, dim: int, window_size: tuple[int, int, int], num_heads: int, frag_bias: bool) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        table = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        if frag_bias:
            self.fragment_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def _bias(self, table: torch.Tensor, rpi: torch.Tensor, n: int) -> torch.Tensor:
        return table[rpi].reshape(n, n, -1).permute(2, 0, 1).contiguous()  # nH, N, N

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, gate: torch.Tensor, window: tuple[int, int, int] | None) -> torch.Tensor:
        """``window``: the resized window actually used — the index is sliced to it (the
        latest official forward); None: the first N rows/columns of the flattened index
        (older revisions; identical unless a window shrinks in H or W)."""
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if window is None:
            rpi = self.relative_position_index[:n, :n].reshape(-1)
        else:
            d, h, w = window
            rpi = self.relative_position_index.reshape(*self.window_size, *self.window_size)[:d, :h, :w, :d, :h, :w].reshape(-1)
        bias = self._bias(self.relative_position_bias_table, rpi, n).unsqueeze(0)  # 1, nH, N, N
        n_w = gate.shape[0]
        if hasattr(self, "fragment_position_bias_table"):
            g = gate.unsqueeze(1)  # nW, 1, N, N
            bias = bias * g + self._bias(self.fragment_position_bias_table, rpi, n) * (1 - g)
        attn = (attn.view(b_ // n_w, n_w, self.num_heads, n, n) + bias.unsqueeze(0)).view(-1, self.num_heads, n, n)
        if mask is not None:
            n_m = mask.shape[0]
            attn = (attn.view(b_ // n_m, n_m, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))


class SwinTransformerBlock3D(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size, shift_size, frag_bias: bool) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, self.window_size, num_heads, frag_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)

    def _attention(self, x: torch.Tensor, mask_matrix: torch.Tensor, resized_window) -> torch.Tensor:
        b, d, h, w, c = x.shape
        window, shift = get_window_size((d, h, w), self.window_size if resized_window is None else resized_window, self.shift_size)
        x = self.norm1(x)
        pad_d = (window[0] - d % window[0]) % window[0]
        pad_b = (window[1] - h % window[1]) % window[1]
        pad_r = (window[2] - w % window[2]) % window[2]
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b, 0, pad_d))
        _, dp, hp, wp, _ = x.shape
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
        gate = fragment_gate(dp, hp, wp, window, shift, x.device)
        out = self.attn(window_partition(x, window), mask_matrix if shifted else None, gate, None if resized_window is None else window)
        x = window_reverse(out.view(-1, *(window + (c,))), window, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        if pad_d > 0 or pad_r > 0 or pad_b > 0:
            x = x[:, :d, :h, :w, :].contiguous()
        return x

    def forward(self, x: torch.Tensor, mask_matrix: torch.Tensor, resized_window=None) -> torch.Tensor:
        x = x + self._attention(x, mask_matrix, resized_window)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w, _ = x.shape
        if h % 2 == 1 or w % 2 == 1:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        parts = [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(parts, -1)))


class BasicLayer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window_size, downsample: bool, frag_bias: bool) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(i // 2 for i in window_size)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock3D(dim, num_heads, window_size, (0, 0, 0) if i % 2 == 0 else self.shift_size, frag_bias)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, resized_window=None) -> torch.Tensor:
        b, _, d, h, w = x.shape
        window, shift = get_window_size((d, h, w), self.window_size if resized_window is None else resized_window, self.shift_size)
        x = x.permute(0, 2, 3, 4, 1)
        dp, hp, wp = (math.ceil(s / ws) * ws for s, ws in zip((d, h, w), window))
        mask = compute_mask(dp, hp, wp, window, shift, x.device)
        for block in self.blocks:
            x = block(x, mask, resized_window)
        x = x.reshape(b, d, h, w, -1)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size=PATCH, in_chans: int = 3, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.embed_dim = embed_dim
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, d, h, w = x.shape
        p = self.patch_size
        if w % p[2] != 0:
            x = F.pad(x, (0, p[2] - w % p[2]))
        if h % p[1] != 0:
            x = F.pad(x, (0, 0, 0, p[1] - h % p[1]))
        if d % p[0] != 0:
            x = F.pad(x, (0, 0, 0, 0, 0, p[0] - d % p[0]))
        x = self.proj(x)
        d, wh, ww = x.shape[2:]
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(-1, self.embed_dim, d, wh, ww)


class SwinTransformer3D(nn.Module):
    """FAST-VQA's ``SwinTransformer3D()`` with its defaults (``swin_tiny_grpb``)."""

    def __init__(self, window_size=WINDOW, frag_biases=FRAG_BIASES) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed3D()
        self.layers = nn.ModuleList(
            BasicLayer(EMBED_DIM * 2**i, DEPTHS[i], NUM_HEADS[i], window_size, i < len(DEPTHS) - 1, bool(frag_biases[i]))
            for i in range(len(DEPTHS))
        )
        self.num_features = EMBED_DIM * 2 ** (len(DEPTHS) - 1)
        self.norm = nn.LayerNorm(self.num_features)

    def forward(self, x: torch.Tensor, resized_window_size=RESIZED_WINDOW) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x.contiguous(), resized_window_size)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class VQAHead(nn.Module):
    def __init__(self, in_channels: int = 768, hidden_channels: int = 64) -> None:
        super().__init__()
        self.fc_hid = nn.Conv3d(in_channels, hidden_channels, (1, 1, 1))
        self.fc_last = nn.Conv3d(hidden_channels, 1, (1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_last(F.gelu(self.fc_hid(x)))


class FasterVQANet(nn.Module):
    """``DiViDeAddEvaluator`` (fragments branch only): normalised ``(B, 3, T, H, W)`` →
    ``(B,)`` raw scores (mean of the head's score map)."""

    def __init__(self, window_size=WINDOW, resized_window_size=RESIZED_WINDOW) -> None:
        super().__init__()
        self.fragments_backbone = SwinTransformer3D(window_size)
        self.vqa_head = VQAHead(768, 64)
        self.resized_window_size = None if resized_window_size is None else tuple(resized_window_size)

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.vqa_head(self.fragments_backbone(x, self.resized_window_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_map(x).mean(dim=(1, 2, 3, 4))


# --------------------------------------------------------------------------- weights


def checkpoint_state(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """``FAST_VQA_3D_1_1.pth`` content → flat state dict (``["state_dict"]``, no ``module.``)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{source}: expected a (wrapped) state dict, got {type(obj).__name__}")
    return {(k.removeprefix("module.")): v for k, v in obj.items()}


def load_fastervqa_state(net: FasterVQANet, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load the FasterVQA state dict: every key consumed, none missing, shapes equal, the
    ``relative_position_index`` buffers equal to the computed ones. Returns the keys."""
    state = checkpoint_state(state, source)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ConfigError(f"{source}: not a FasterVQA (FAST_VQA_3D_1_1) checkpoint (missing {missing[:4]}, unexpected {extra[:4]})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ConfigError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
        if key.endswith("relative_position_index") and not torch.equal(value.long(), own[key]):
            raise ConfigError(f"{source}: {key} differs from the window's relative position index")
    net.load_state_dict({k: (v if k.endswith("relative_position_index") else v.float()) for k, v in state.items()}, strict=True)
    return sorted(state)


def random_init(net: FasterVQANet) -> None:
    """The official init (trunc-normal 0.02 linear weights, zero biases, unit LayerNorms,
    trunc-normal bias tables); fragment tables get the same (officially zeros until
    loaded) so tests exercise the gated path."""
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, WindowAttention3D):
            nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
            if hasattr(module, "fragment_position_bias_table"):
                nn.init.trunc_normal_(module.fragment_position_bias_table, std=0.02)


def build_fastervqa_net(state: dict[str, torch.Tensor] | None, seed: int = 0, window_size=WINDOW, resized_window_size=RESIZED_WINDOW) -> FasterVQANet:
    """FasterVQA in eval mode; ``state=None`` → seeded random weights (tests only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FasterVQANet(window_size, resized_window_size)
        if state is None:
            random_init(net)
    if state is not None:
        load_fastervqa_state(net, state, "fastervqa checkpoint")
    return net.eval().requires_grad_(False)


def sigmoid_rescale(raw: torch.Tensor, model: str = "FasterVQA") -> torch.Tensor:
    mean, std = RESCALE_MEAN_STD[model]
    return 1.0 / (1.0 + torch.exp(-(raw - mean) / std))


# --------------------------------------------------------------------------- metric


class FasterVQA(_PerceptualMetric):
    """FasterVQA per clip; higher is better, no reference (see the module docstring).

    Input ``(B, T, 3, H, W)`` float RGB in [0, 1]; output ``(B,)`` float32 — in [0, 1]
    with ``rescale="sigmoid"``, the raw head mean with ``"none"``.

    Args:
        temporal_sampling: ``"contiguous"`` (what ``vqa.py`` does) or ``"fragments"``
            (``FragmentSampleFrames``, the paper's temporal fragments).
        clip_len, t_frag, frame_interval: temporal sampler (32, 8, 1 as ``vqa.py``; the
            yml's ``frame_interval: 2`` is not passed by ``vqa.py``).
        fragments_h, fragments_w, fsize_h, fsize_w, aligned: spatial fragments (7, 7, 32,
            32, 8 as ``f3dvqa-b.yml``).
        sample_seed: seed of the random offsets, fresh for every clip.
        rescale: ``"sigmoid"`` (FasterVQA's published mean/std) or ``"none"``.
        window_size: ``"resized"`` — the latest official forward, (4, 7, 7) windows — or
            ``"full"`` — (8, 7, 7) windows as older revisions of the backbone.
        weights_path: explicit ``FAST_VQA_3D_1_1.pth``; otherwise the registry's
            ``fastervqa`` entry.
        pretrained: False → seeded random weights (tests only; recorded in provenance).
        seed: seed of the random weights.
        verify_weights: check the file against a published checksum when the registry
            has one.
    """

    metric_id: ClassVar[str] = "fastervqa"
    higher_is_better: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    level: ClassVar[str] = "clip"

    def __init__(
        self,
        temporal_sampling: str = "contiguous",
        clip_len: int = 32,
        t_frag: int = 8,
        frame_interval: int = 1,
        fragments_h: int = 7,
        fragments_w: int = 7,
        fsize_h: int = 32,
        fsize_w: int = 32,
        aligned: int = 8,
        sample_seed: int = 42,
        rescale: str = "sigmoid",
        window_size: str = "resized",
        weights_path: str | None = None,
        pretrained: bool = True,
        seed: int = 0,
        verify_weights: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if temporal_sampling not in ("contiguous", "fragments"):
            raise ConfigError(f"fastervqa: temporal_sampling must be 'contiguous' or 'fragments', got {temporal_sampling!r}")
        if rescale not in ("sigmoid", "none"):
            raise ConfigError(f"fastervqa: rescale must be 'sigmoid' or 'none', got {rescale!r}")
        if window_size not in ("resized", "full"):
            raise ConfigError(f"fastervqa: window_size must be 'resized' or 'full', got {window_size!r}")
        ints = {"clip_len": clip_len, "t_frag": t_frag, "frame_interval": frame_interval, "fragments_h": fragments_h,
                    "fragments_w": fragments_w, "fsize_h": fsize_h, "fsize_w": fsize_w, "aligned": aligned}  # fmt: skip
        for name, value in ints.items():
            if isinstance(value, bool) or int(value) < 1:
                raise ConfigError(f"fastervqa: {name} must be a positive integer, got {value!r}")
        if clip_len % aligned != 0:
            raise ConfigError(f"fastervqa: clip_len={clip_len} must be a multiple of aligned={aligned}")
        if temporal_sampling == "fragments" and clip_len % t_frag != 0:
            raise ConfigError(f"fastervqa: clip_len={clip_len} must be a multiple of t_frag={t_frag}")
        self.temporal_sampling = temporal_sampling
        self.clip_len, self.t_frag, self.frame_interval = int(clip_len), int(t_frag), int(frame_interval)
        self.fragments_h, self.fragments_w = int(fragments_h), int(fragments_w)
        self.fsize_h, self.fsize_w, self.aligned = int(fsize_h), int(fsize_w), int(aligned)
        self.sample_seed = int(sample_seed)
        self.rescale = rescale
        self.window_size = window_size
        self._init_common(pretrained, seed, True, None, verify_weights)
        self._declare({WEIGHTS_NAME: weights_path})

    def _build(self) -> FasterVQANet:
        state = _load_file(self.files.path(WEIGHTS_NAME)) if self.pretrained else None
        resized = RESIZED_WINDOW if self.window_size == "resized" else None
        if state is None:
            return build_fastervqa_net(None, self.seed, WINDOW, resized)
        return build_fastervqa_net(checkpoint_state(state, WEIGHTS_NAME), self.seed, WINDOW, resized)

    def sample(self, clip: torch.Tensor) -> torch.Tensor:
        """One clip ``(T, 3, H, W)`` in [0, 1] → the normalised network input
        ``(3, clip_len, fragments_h·fsize_h, fragments_w·fsize_w)``."""
        levels = quantize_8bit(clip).to(torch.float32)  # uint8 levels, as decoded video
        inds = temporal_indices(clip.shape[0], self.temporal_sampling, self.clip_len, self.t_frag, self.frame_interval, self.sample_seed)
        video = levels[torch.from_numpy(inds.astype(np.int64)).to(clip.device)].permute(1, 0, 2, 3)  # C, T, H, W
        generator = torch.Generator().manual_seed(self.sample_seed)
        frags = spatial_fragments(video, self.fragments_h, self.fragments_w, self.fsize_h, self.fsize_w, self.aligned, generator)
        mean = torch.tensor(FRAGMENT_MEAN, device=frags.device).view(3, 1, 1, 1)
        std = torch.tensor(FRAGMENT_STD, device=frags.device).view(3, 1, 1, 1)
        return (frags - mean) / std

    @torch.no_grad()
    def raw_scores(self, preds: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` → ``(B,)`` raw head means (before the rescale)."""
        net = self.network(preds.device)
        return torch.cat([net(self.sample(clip).unsqueeze(0)) for clip in preds]).to(torch.float32)

    @torch.no_grad()
    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] → ``(B,)`` float32 FasterVQA scores."""
        raw = self.raw_scores(preds)
        return sigmoid_rescale(raw) if self.rescale == "sigmoid" else raw

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "temporal_sampling": self.temporal_sampling,
            "clip_len": self.clip_len,
            "t_frag": self.t_frag,
            "frame_interval": self.frame_interval,
            "fragments": [self.fragments_h, self.fragments_w],
            "fsize": [self.fsize_h, self.fsize_w],
            "aligned": self.aligned,
            "sample_seed": self.sample_seed,
            "rescale": self.rescale,
            "window_size": list(RESIZED_WINDOW if self.window_size == "resized" else WINDOW),
            "quantize": True,
        }
        if not self.pretrained:
            out["pretrained"] = False
            out["seed"] = self.seed
        return out


__all__ = [
    "FasterVQA",
    "FasterVQANet",
    "SwinTransformer3D",
    "build_fastervqa_net",
    "checkpoint_state",
    "load_fastervqa_state",
    "relative_position_index",
    "sigmoid_rescale",
    "spatial_fragments",
    "temporal_indices",
]
