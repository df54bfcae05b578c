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

The full model (:class:`CLIPModel`, used by CLIP-IQA and LIQE) adds OpenAI's text tower
with OpenAI's key names (``token_embedding``, ``positional_embedding``,
``transformer.resblocks.*`` with a causal mask, ``ln_final``, ``text_projection``,
``logit_scale``) and the ModifiedResNet image encoder (:class:`ModifiedResNet`, RN50:
``visual.conv1…3``, ``bn1…3``, ``layer1…4``, ``attnpool``); :func:`load_openai_state_dict`
+ :func:`build_clip` load a whole checkpoint strictly (RN50.pt: 489 entries, ViT-B-32.pt
and LIQE.pt: 302, scalars excluded). Both were checked numerically against OpenAI's
``model.py`` (pyiqa's copy, with its ``pos_embedding`` variants) on random weights.
:class:`SimpleTokenizer` is OpenAI's byte-level BPE tokenizer reading
``bpe_simple_vocab_16e6.txt.gz`` (shipped in the ``open_clip_torch`` wheel); it gives
OpenAI's ids on every prompt used here.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
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
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``; ``(N, L, D)``.

    ``causal``: the text tower's causal mask (token i attends to tokens ≤ i; OpenAI's
    ``build_attention_mask``: −inf above the diagonal); the image tower attends fully.
    The mask is built per call and is not a parameter (not in the state dict, as OpenAI's).
    """

    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
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
        mask = None
        if self.causal:
            size = x.shape[1]
            mask = torch.full((size, size), float("-inf"), dtype=x.dtype, device=x.device).triu_(1)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, causal) for _ in range(layers)])

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


#: Top-level scalar entries of OpenAI's TorchScript archives (not parameters of the model).
OPENAI_SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")
#: Wrappers and prefixes other releases put around OpenAI's key names: LIQE.pt is a plain
#: ``model.state_dict()`` of ``clip.load(jit=False)``; pyiqa's conversions nest it under
#: ``params`` with a ``clip_model.`` prefix; DataParallel adds ``module.``.
STATE_WRAPPERS = ("params", "state_dict", "model")
STATE_PREFIXES = ("module.", "clip_model.", "model.")


def load_openai_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every parameter entry of an OpenAI-layout CLIP checkpoint, float32, CPU.

    ``path``: OpenAI's TorchScript archive (``ViT-B-32.pt``, ``RN50.pt``; read with
    ``torch.jit.load`` exactly as ``clip.load`` does) or a plain ``torch.save``-d state
    dict with OpenAI's key names (what ``clip.load(jit=False)`` also accepts, e.g. LIQE's
    fine-tuned ``LIQE.pt``), optionally wrapped in ``{"params"|"state_dict"|"model": …}``
    and/or prefixed with ``module.`` / ``clip_model.`` / ``model.`` (stripped when every
    key has the prefix). The scalar entries ``input_resolution``, ``context_length`` and
    ``vocab_size`` are dropped; ``logit_scale`` (a parameter) is kept.
    """
    path = str(path)
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 marks TorchScript deprecated; the released files are TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in STATE_WRAPPERS:
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if isinstance(state, dict):
        state = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"clip: {path} holds neither a TorchScript CLIP model nor a state dict")
    for prefix in STATE_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return {key: value.detach().float().cpu() for key, value in state.items() if key not in OPENAI_SCALAR_KEYS}


def load_openai_visual_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``visual.*`` entries of an OpenAI CLIP checkpoint, prefix removed, float32, CPU.

    ``path``: as :func:`load_openai_state_dict`. Text-tower keys and the scalar entries
    (``input_resolution``, ``context_length``, ``vocab_size``, ``logit_scale``) are dropped.
    """
    state = load_openai_state_dict(path)
    visual = {key[len("visual."):]: value for key, value in state.items() if key.startswith("visual.")}
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


# --------------------------------------------------------------------------- RN50 image encoder


@dataclass(frozen=True)
class ResNetConfig:
    """Architecture of a CLIP ModifiedResNet image encoder (OpenAI ``build_model``'s rules:
    heads = width · 32 / 64, attention-pool grid = input_resolution / 32)."""

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    output_dim: int = 1024
    input_resolution: int = 224

    @property
    def heads(self) -> int:
        return self.width * 32 // 64

    @property
    def grid(self) -> int:
        return self.input_resolution // 32


RN50 = ResNetConfig()


class Bottleneck(nn.Module):
    """OpenAI's ResNet bottleneck: 1×1, 3×3, (avg-pool when strided), 1×1 ×4; the shortcut
    is avg-pool → 1×1 conv → BN (``downsample.-1`` holds no parameters)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu(out + identity)


#: How the attention pool treats its positional embedding (``ModifiedResNet.forward``):
#: ``native`` — OpenAI: added as is, the feature grid must be input_resolution/32 square;
#: ``interpolate`` — pyiqa ``pos_embedding=True``: the ``(grid²+1, C)`` table resized
#: bicubically as a 2-D array to ``(h·w+1, C)`` (any input size);
#: ``none`` — pyiqa ``pos_embedding=False`` (its ``clipiqa`` default): not added at all.
POSITIONAL_MODES = ("native", "interpolate", "none")


class AttentionPool2d(nn.Module):
    """QKV attention pooling of the ``(N, C, h, w)`` map with the mean token as query."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor, positional: str = "native") -> torch.Tensor:
        x = x.flatten(start_dim=2).permute(2, 0, 1)  # (hw, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (hw+1, N, C)
        pos = self.positional_embedding
        if positional == "native":
            if pos.shape[0] != x.shape[0]:
                raise ValueError(
                    f"clip RN: {x.shape[0] - 1} feature positions, the positional embedding has {pos.shape[0] - 1}; "
                    "feed input_resolution² images or use positional='interpolate'/'none'"
                )
            x = x + pos[:, None, :].to(x.dtype)
        elif positional == "interpolate":
            resized = F.interpolate(pos[None, None], size=(x.shape[0], x.shape[2]), mode="bicubic")[0, 0]
            x = x + resized[:, None, :].to(x.dtype)
        elif positional != "none":
            raise ConfigError(f"clip RN: positional must be one of {POSITIONAL_MODES}, got {positional!r}")
        out, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x,
            embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=False, need_weights=False,
        )  # fmt: skip
        return out[0]


class ModifiedResNet(nn.Module):
    """OpenAI CLIP's ``ModifiedResNet`` (RN50 …): 3-conv stem + avg-pool, anti-aliased
    bottleneck stages, attention pooling. ``state_dict()`` keys are the ``visual.*`` keys
    of ``RN50.pt`` without the prefix (``conv1…3``, ``bn1…3``, ``layer1…4``, ``attnpool``).

    ``forward((N, 3, H, W), positional)`` → ``(N, output_dim)``; any H, W ≥ 32 with
    ``positional`` ``interpolate``/``none`` (see :data:`POSITIONAL_MODES`).
    """

    def __init__(self, config: ResNetConfig = RN50) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = width
        self.layer1 = self._make_layer(width, config.layers[0])
        self.layer2 = self._make_layer(width * 2, config.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, config.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, config.layers[3], stride=2)
        self.attnpool = AttentionPool2d(config.grid, width * 32, config.heads, config.output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, positional: str = "native") -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x, positional)


# --------------------------------------------------------------------------- text encoder + full model


@dataclass(frozen=True)
class TextConfig:
    """Architecture of CLIP's text transformer (heads = width / 64, as ``build_model``)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    embed_dim: int = 512

    @property
    def heads(self) -> int:
        return max(1, self.width // 64)


TEXT_VIT_B_32 = TextConfig(embed_dim=512)
TEXT_RN50 = TextConfig(embed_dim=1024)


class CLIPModel(nn.Module):
    """OpenAI CLIP (``model.CLIP``): ``visual`` (:class:`VisionTransformer` or
    :class:`ModifiedResNet`) plus the text tower at the top level — ``token_embedding``,
    ``positional_embedding`` (77, width), ``transformer.resblocks.*`` (causal),
    ``ln_final``, ``text_projection`` (width, embed_dim) — and ``logit_scale`` (log of the
    softmax temperature). ``state_dict()`` keys equal those of OpenAI's archives minus
    the scalar entries, so released and fine-tuned (LIQE) weights load strictly.
    """

    def __init__(self, vision: VisionConfig | ResNetConfig, text: TextConfig) -> None:
        super().__init__()
        self.vision_config = vision
        self.text_config = text
        self.visual = ModifiedResNet(vision) if isinstance(vision, ResNetConfig) else VisionTransformer(vision)
        self.transformer = Transformer(text.width, text.layers, text.heads, causal=True)
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
        self.ln_final = nn.LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.empty(text.width, text.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        if not self.text_projection.is_meta:
            self._initialize()

    def _initialize(self) -> None:
        """OpenAI's ``initialize_parameters`` (random weights are for tests only)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features**-0.5
            for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(proj.weight, std=std)
            # OpenAI zero-initialises every bn3.weight; a random test net would then be a
            # plain shortcut chain, so keep PyTorch's ones there
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def encode_image(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """``(N, 3, H, W)`` preprocessed images → ``(N, embed_dim)`` (not normalised);
        ``kwargs`` (``positional``) go to a ResNet encoder."""
        return self.visual(images, **kwargs)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(P, context_length)`` token ids (:class:`SimpleTokenizer`) → ``(P, embed_dim)``
        features of each prompt's end-of-text token (the highest id in each row, as OpenAI).

        The sequence is cut after the last end-of-text token of the batch first: with the
        causal mask no token attends to later ones, so the features are the same and the
        cost falls from 77 to ~20 positions per prompt.
        """
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        x = self.token_embedding(tokens[:, :length]) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


def split_clip_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(visual entries without the prefix, text/top-level entries)``."""
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    rest = {k: v for k, v in state.items() if not k.startswith("visual.")}
    return visual, rest


def infer_resnet_config(visual: dict[str, torch.Tensor]) -> ResNetConfig:
    """Architecture of a ModifiedResNet ``visual`` state dict (OpenAI ``build_model``)."""
    try:
        counts = tuple(len({k.split(".")[1] for k in visual if k.startswith(f"layer{b}.")}) for b in (1, 2, 3, 4))
        width = visual["layer1.0.conv1.weight"].shape[0]
        output_dim = visual["attnpool.c_proj.weight"].shape[0]
        tokens = visual["attnpool.positional_embedding"].shape[0]
    except KeyError as error:
        raise ConfigError(f"clip: checkpoint lacks visual.{error.args[0]} (not a CLIP ResNet image encoder?)") from None
    grid = round(math.sqrt(tokens - 1))
    if grid * grid + 1 != tokens:
        raise ConfigError(f"clip: attention-pool embedding of {tokens} tokens is not a square grid plus one")
    return ResNetConfig(layers=counts, width=width, output_dim=output_dim, input_resolution=grid * 32)  # type: ignore[arg-type]


def infer_text_config(state: dict[str, torch.Tensor]) -> TextConfig:
    """Architecture of the text tower from a full (OpenAI-layout) state dict."""
    try:
        context_length, width = state["positional_embedding"].shape
        vocab_size = state["token_embedding.weight"].shape[0]
        embed_dim = state["text_projection"].shape[1]
    except KeyError as error:
        raise ConfigError(f"clip: checkpoint lacks {error.args[0]} (no CLIP text tower; a full CLIP checkpoint is needed)") from None
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    return TextConfig(context_length=context_length, vocab_size=vocab_size, width=width, layers=layers, embed_dim=embed_dim)


def infer_clip_config(state: dict[str, torch.Tensor]) -> tuple[VisionConfig | ResNetConfig, TextConfig]:
    """``(image-encoder config, text config)`` of a full OpenAI-layout state dict."""
    visual, _ = split_clip_state(state)
    vision = infer_config(visual) if "proj" in visual else infer_resnet_config(visual)
    return vision, infer_text_config(state)


def build_clip(
    state: dict[str, torch.Tensor] | None,
    vision: VisionConfig | ResNetConfig = VIT_B_32,
    text: TextConfig = TEXT_VIT_B_32,
    random_seed: int = 0,
) -> CLIPModel:
    """The full CLIP model in eval mode, float32, no gradients.

    ``state``: a full OpenAI-layout state dict (:func:`load_openai_state_dict`); the
    architecture is inferred and every key must be consumed and none missing (BatchNorm's
    ``num_batches_tracked`` counters may be absent: they do not change the output).
    ``None``: OpenAI's random initialisation of ``vision`` + ``text`` seeded with
    ``random_seed`` (tests only).
    """
    if state is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed)
            model = CLIPModel(vision, text)
        return model.float().eval().requires_grad_(False)
    vision, text = infer_clip_config(state)
    with torch.device("meta"):
        model = CLIPModel(vision, text)
    state = dict(state)
    for key in model.state_dict():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            "clip: checkpoint does not match OpenAI's CLIP layout "
            f"(missing {sorted(result.missing_keys)[:6]}, unexpected {sorted(result.unexpected_keys)[:6]})"
        )
    return model.float().eval().requires_grad_(False)


# --------------------------------------------------------------------------- tokenizer

#: OpenAI CLIP's byte-level BPE vocabulary (49 152 entries: 256 bytes ×2 + 48 894 merges +
#: 2 specials), declared in :mod:`fvr_bench.weights` (it ships in ``open_clip_torch``).
BPE_VOCAB_REGISTRY_NAME = "clip_bpe_vocab"
BPE_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def find_bpe_vocab(explicit: str | os.PathLike | None = None) -> Path | None:
    """The vocabulary file by the registry's lookup order, or None."""
    from fvr_bench import weights

    if explicit:
        path = Path(explicit).expanduser()
        return path if path.is_file() else None
    return weights.find(BPE_VOCAB_REGISTRY_NAME)


def locate_bpe_vocab(explicit: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """The vocabulary file or :class:`WeightsMissingError` naming it; with ``verify`` it
    must have OpenAI's sha256."""
    from fvr_bench import weights

    return weights.locate(BPE_VOCAB_REGISTRY_NAME, explicit, verify=verify)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _word_pattern():
    r"""OpenAI's pre-tokenisation regex. With the ``regex`` package it is OpenAI's own
    (``\p{L}``/``\p{N}`` classes); without it, the stdlib equivalent — identical on
    ASCII text (all prompts here), close on other scripts."""
    try:
        import regex

        return regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
    except ImportError:
        import re

        return re.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+""", re.IGNORECASE
        )


class SimpleTokenizer:
    """OpenAI CLIP's ``simple_tokenizer.SimpleTokenizer`` (byte-level BPE, lower-cased,
    ``</w>`` end-of-word marks), reimplemented to read the vocabulary file directly.

    Text cleaning as OpenAI's: ``ftfy.fix_text`` when ftfy is installed (a no-op on the
    plain-ASCII prompts of CLIP-IQA and LIQE), HTML unescaping twice, whitespace runs
    collapsed, lower case.
    """

    def __init__(self, vocab_path: str | os.PathLike) -> None:
        import gzip

        self.byte_encoder = bytes_to_unicode()
        with gzip.open(vocab_path) as handle:
            merges_text = handle.read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges_text[1 : 49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab.extend(["<|startoftext|>", "<|endoftext|>"])
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {merge: i for i, merge in enumerate(merges)}
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pattern = _word_pattern()
        self.sot_token = self.encoder["<|startoftext|>"]
        self.eot_token = self.encoder["<|endoftext|>"]

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self.cache[token] = result
        return result

    @staticmethod
    def clean(text: str) -> str:
        import html
        import re

        try:
            import ftfy

            text = ftfy.fix_text(text)
        except ImportError:
            pass
        text = html.unescape(html.unescape(text)).strip()
        return re.sub(r"\s+", " ", text).strip().lower()

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pattern.findall(self.clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: str | list[str], context_length: int = 77) -> torch.Tensor:
        """``clip.tokenize``: ``(P, context_length)`` long, ``[SOT] ids [EOT]`` then zeros;
        a prompt that does not fit raises :class:`ConfigError`."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token, *self.encode(text), self.eot_token]
            if len(ids) > context_length:
                raise ConfigError(f"clip tokenizer: prompt {text!r} has {len(ids)} tokens, more than {context_length}")
            out[row, : len(ids)] = torch.tensor(ids)
        return out


__all__ = [
    "BPE_VOCAB_SHA256",
    "CLIP_MEAN",
    "CLIP_STD",
    "POSITIONAL_MODES",
    "RN50",
    "TEXT_RN50",
    "TEXT_VIT_B_32",
    "VIT_B_32",
    "CLIPModel",
    "ModifiedResNet",
    "QuickGELU",
    "ResNetConfig",
    "ResidualAttentionBlock",
    "SimpleTokenizer",
    "TextConfig",
    "Transformer",
    "VisionConfig",
    "VisionTransformer",
    "build_clip",
    "build_visual",
    "find_bpe_vocab",
    "infer_clip_config",
    "infer_config",
    "infer_resnet_config",
    "infer_text_config",
    "load_openai_state_dict",
    "load_openai_visual_state_dict",
    "locate_bpe_vocab",
]
