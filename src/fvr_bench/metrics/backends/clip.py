"""CLIP image encoder (OpenAI's ViT) whose parameter names match OpenAI's checkpoints.

:class:`VisionTransformer` is OpenAI CLIP's ``model.VisionTransformer``
(Radford et al. 2021): a ``patch × patch`` stride-``patch`` convolution without bias
(``conv1``), a learned class token (``class_embedding``) and positional embedding, a
LayerNorm before the transformer (``ln_pre``), ``layers`` pre-norm residual blocks
(``attn``: ``nn.MultiheadAttention`` with ``in_proj_weight``/``in_proj_bias`` and
``out_proj``; ``mlp``: ``c_fc`` → QuickGELU → ``c_proj``; ``ln_1``/``ln_2``), a LayerNorm
on the class token (``ln_post``) and a projection matrix (``proj``, applied as
``x @ proj``). Its ``state_dict()`` keys are exactly the ``visual.*`` keys of OpenAI's
release without the ``visual.`` prefix, so the released weights load with
``strict=True``.

ViT-B/32 (:data:`VIT_B_32`): input 224², patch 32 (7×7 = 49 patches + class token = 50
tokens), width 768, 12 layers, 12 heads (width / 64, as OpenAI's ``build_model`` derives
it), output 512; 87.8 M parameters.

:func:`load_openai_visual_state_dict` reads OpenAI's file ``ViT-B-32.pt`` — a TorchScript
archive (``torch.jit.load(path).state_dict()``, fp16 parameters) — or a plain state dict
with the same key names, and keeps the ``visual.*`` entries as float32.
:func:`build_visual` infers the architecture from those entries (as OpenAI's
``build_model`` does) and loads them strictly.

Input of :meth:`VisionTransformer.forward`: ``(N, 3, R, R)`` float, R = ``input_resolution``,
already preprocessed by the caller (CLIP's own preprocessing is mean/std normalisation of
[0, 1] RGB with :data:`CLIP_MEAN` / :data:`CLIP_STD`; EvalCrafter's face consistency feeds
unnormalised 0–255 values instead, see :mod:`fvr_bench.metrics.clip_consistency`).
Output ``(N, output_dim)`` image features, not normalised.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from fvr_bench.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionConfig:
    """Architecture of a CLIP ViT image encoder."""

    input_resolution: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    output_dim: int = 512

    @property
    def grid(self) -> int:
        return self.input_resolution // self.patch_size


VIT_B_32 = VisionConfig()


class QuickGELU(nn.Module):
    """``x · sigmoid(1.702 x)``: the GELU approximation OpenAI trained CLIP with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``; ``(N, L, D)``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        # batch_first only changes the call layout, not the parameter names or the numbers
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """OpenAI CLIP's ViT image encoder: ``(N, 3, R, R)`` → ``(N, output_dim)`` features.

    Random initialisation follows OpenAI's (class/positional embedding and projection
    ``~ N(0, width^-1/2)``; PyTorch defaults elsewhere); tests use it, real runs load the
    released weights.
    """

    def __init__(self, config: VisionConfig = VIT_B_32) -> None:
        super().__init__()
        if config.input_resolution % config.patch_size:
            raise ConfigError(f"clip: input resolution {config.input_resolution} is not a multiple of patch {config.patch_size}")
        self.config = config
        width = config.width
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(config.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.config.input_resolution
        if x.shape[-2:] != (size, size):
            raise ValueError(f"clip: expected (N, 3, {size}, {size}) input, got {tuple(x.shape)}")
        x = self.conv1(x.to(self.conv1.weight.dtype))  # (N, width, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (N, grid², width), row-major patches as OpenAI
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


# --------------------------------------------------------------------------- loading


def load_openai_visual_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``visual.*`` entries of an OpenAI CLIP checkpoint, prefix removed, float32, CPU.

    ``path``: OpenAI's TorchScript archive (``ViT-B-32.pt``; read with ``torch.jit.load``
    exactly as ``clip.load`` does) or a plain ``torch.save``-d state dict with OpenAI's key
    names (the fallback ``clip.load(jit=False)`` also accepts). Text-tower keys and the
    scalar entries (``input_resolution``, ``context_length``, ``vocab_size``,
    ``logit_scale``) are dropped.
    """
    path = str(path)
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 marks TorchScript deprecated; the released file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"clip: {path} holds neither a TorchScript CLIP model nor a state dict")
    visual = {key[len("visual."):]: value.detach().float().cpu() for key, value in state.items() if key.startswith("visual.")}
    if not visual:
        raise ConfigError(f"clip: {path} has no 'visual.*' parameters (is it an OpenAI CLIP checkpoint?)")
    return visual


def infer_config(state: dict[str, torch.Tensor]) -> VisionConfig:
    """Architecture of a ``visual`` state dict (OpenAI ``build_model``'s rules: heads = width/64)."""
    try:
        width, _, patch, _ = state["conv1.weight"].shape
        tokens = state["positional_embedding"].shape[0]
        output_dim = state["proj"].shape[1]
    except KeyError as error:
        raise ConfigError(f"clip: checkpoint lacks visual.{error.args[0]} (not a CLIP ViT image encoder?)") from None
    layers = len({key.split(".")[2] for key in state if key.startswith("transformer.resblocks.")})
    grid = round(math.sqrt(tokens - 1))
    if grid * grid + 1 != tokens:
        raise ConfigError(f"clip: positional embedding of {tokens} tokens is not a square grid plus a class token")
    return VisionConfig(
        input_resolution=patch * grid, patch_size=patch, width=width, layers=layers, heads=width // 64, output_dim=output_dim
    )


def build_visual(state: dict[str, torch.Tensor] | None, config: VisionConfig = VIT_B_32, random_seed: int = 0) -> VisionTransformer:
    """The image encoder in eval mode, float32, no gradients.

    ``state``: a ``visual`` state dict (see :func:`load_openai_visual_state_dict`); its
    architecture is inferred and every key must match (``strict=True``: no key missing,
    none left over). ``None``: OpenAI's random initialisation of ``config``, seeded with
    ``random_seed`` (for tests).
    """
    if state is None:
        with torch.random.fork_rng(devices=[]):  # a random init neither uses nor disturbs the caller's RNG
            torch.manual_seed(random_seed)
            model = VisionTransformer(config)
        return model.float().eval().requires_grad_(False)
    with torch.device("meta"):  # no throw-away random init of 88 M parameters
        model = VisionTransformer(infer_config(state))
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            "clip: checkpoint does not match OpenAI's ViT layout "
            f"(missing {sorted(result.missing_keys)[:6]}, unexpected {sorted(result.unexpected_keys)[:6]})"
        )
    return model.float().eval().requires_grad_(False)


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "VIT_B_32",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionConfig",
    "VisionTransformer",
    "build_visual",
    "infer_config",
    "load_openai_visual_state_dict",
]
