"""Wan2.1 backbone: DiT and VAE (loaded from a local Wan2.1-T2V-1.3B-Diffusers folder, or
built at tiny size for tests), Wan's latent normalisation, and the cached empty-prompt
text embedding.

Latents: Wan's VAE maps ``(B, 3, 1 + 4k, H, W)`` in [−1, 1] to ``(B, 16, 1 + k, H/8, W/8)``;
VividFace works on normalised latents ``(μ − latents_mean) / latents_std`` (μ = the
posterior mean; ``latents_mean``/``latents_std`` from the VAE config), and decodes
``z · latents_std + latents_mean`` — as diffusers' ``WanPipeline`` does.

Text: VividFace conditions on the empty prompt. Its UMT5-XXL embedding (``(1, 512, 4096)``:
the encoder's output for the real tokens, zero-padded to 512 as ``WanPipeline`` pads) is
computed once and saved to ``text_embedding_cache``; when that file exists the 5.7 B-parameter
text encoder is never loaded.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fvr_bench import weights
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.io import atomic_write_bytes
from fvr_bench.methods.base import known_options

log = logging.getLogger(__name__)

WAN_ENTRY = "wan21_t2v_1_3b_diffusers"

# Wan2.1-T2V-1.3B DiT (the release's transformer/config.json); AutoencoderKLWan's defaults
# are the Wan2.1 VAE. Used to build paper-size networks without the folder (benchmarks).
WAN21_T2V_1_3B_TRANSFORMER = {
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
}
WAN21_VAE: dict = {}

@dataclass(frozen=True)
class BackboneConfig:
    """Where the networks come from.

    wan_dir:      the Wan2.1-T2V-1.3B-Diffusers folder; null → the weights registry lookup
                  (``$FVR_BENCH_WEIGHTS/Wan2.1-T2V-1.3B-Diffusers``, ``~/.cache/fvr_bench/weights/…``).
    transformer / vae / text_encoder: null → loaded from ``wan_dir``; a mapping → built from
                  these constructor arguments with seeded RANDOM weights (tests, benchmarks).
    max_sequence_length: UMT5 context length (Wan: 512).
    text_embedding_cache: file of the cached empty-prompt embedding (null: kept in memory only).
    """

    wan_dir: str | None = None
    transformer: Mapping | None = None
    vae: Mapping | None = None
    text_encoder: Mapping | None = None
    max_sequence_length: int = 512
    text_embedding_cache: str | None = None

    @classmethod
    def from_mapping(cls, mapping: Mapping | None) -> BackboneConfig:
        return cls(**known_options(cls, mapping, "vividface backbone"))

    @property
    def random_parts(self) -> list[str]:
        return [name for name in ("transformer", "vae", "text_encoder") if getattr(self, name) is not None]

    def cache_path(self) -> Path | None:
        return Path(self.text_embedding_cache).expanduser() if self.text_embedding_cache else None

    def needs_wan_dir(self) -> bool:
        """Whether anything must be read from the Wan folder (the text encoder only when
        the embedding cache is missing)."""
        cache = self.cache_path()
        needs_text = self.text_encoder is None and not (cache is not None and cache.is_file())
        return self.transformer is None or self.vae is None or needs_text


def locate_wan_dir(config: BackboneConfig) -> Path | None:
    """The Wan folder when the config needs it (WeightsMissingError naming where to put it
    when absent), else None. Checks the subfolders that will be read, before any loading."""
    if not config.needs_wan_dir():
        return None
    folder = weights.locate(WAN_ENTRY, config.wan_dir)
    needed = [name for name in ("transformer", "vae") if getattr(config, name) is None]
    cache = config.cache_path()
    if config.text_encoder is None and not (cache is not None and cache.is_file()):
        needed += ["text_encoder", "tokenizer"]
    missing = [name for name in needed if not (folder / name).is_dir()]
    if missing:
        raise WeightsMissingError(
            f"{folder} is not a complete Wan2.1-T2V-1.3B-Diffusers folder: missing {', '.join(f'{m}/' for m in missing)} "
            f"(download the whole repository {weights.entry(WAN_ENTRY).source.split(' ')[0]})"
        )
    return folder


def _random(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


@contextlib.contextmanager
def parameters_on_meta():
    """Build modules with their **parameters** on the meta device (no memory, no
    initialisation cost) and their buffers real: Wan's RoPE tables are non-persistent
    buffers computed in ``__init__``, which a weights file does not hold."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, parameter: nn.Parameter | None) -> None:
        register(module, name, parameter)
        if parameter is not None and parameter.device.type != "meta":
            kind = type(module._parameters[name])
            extra = dict(module._parameters[name].__dict__)
            extra["requires_grad"] = parameter.requires_grad
            module._parameters[name] = kind(module._parameters[name].to("meta"), **extra)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def transformer_arguments(config: BackboneConfig, wan_dir: Path | None) -> dict:
    """The DiT's constructor arguments: ``backbone.transformer``, or the Wan folder's config."""
    from diffusers import WanTransformer3DModel

    if config.transformer is not None:
        kwargs = dict(config.transformer)
    else:
        kwargs = {k: v for k, v in dict(WanTransformer3DModel.load_config(wan_dir, subfolder="transformer",
                                                                           local_files_only=True)).items()
                  if not k.startswith("_")}
    if "patch_size" in kwargs:
        kwargs["patch_size"] = tuple(kwargs["patch_size"])
    return kwargs


def vae_arguments(config: BackboneConfig, wan_dir: Path | None) -> dict:
    """The VAE's constructor arguments: ``backbone.vae``, or the Wan folder's config."""
    from diffusers import AutoencoderKLWan

    if config.vae is not None:
        source = dict(config.vae)
    else:
        source = {k: v for k, v in dict(AutoencoderKLWan.load_config(wan_dir, subfolder="vae", local_files_only=True)).items()
                  if not k.startswith("_")}
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in source.items()}


def empty_transformer(config: BackboneConfig, wan_dir: Path | None):
    """``WanTransformer3DModel`` with its parameters on the meta device (weights come from a file)."""
    from diffusers import WanTransformer3DModel

    kwargs = transformer_arguments(config, wan_dir)
    with parameters_on_meta():
        return WanTransformer3DModel(**kwargs)


def empty_vae(config: BackboneConfig, wan_dir: Path | None):
    """``AutoencoderKLWan`` with its parameters on the meta device, eval mode, frozen."""
    from diffusers import AutoencoderKLWan

    kwargs = vae_arguments(config, wan_dir)
    with parameters_on_meta():
        vae = AutoencoderKLWan(**kwargs)
    return vae.eval().requires_grad_(False)


def build_transformer(config: BackboneConfig, wan_dir: Path | None, seed: int = 0, dtype: torch.dtype = torch.float32):
    """``WanTransformer3DModel``: pretrained from ``wan_dir/transformer`` straight in ``dtype``
    (diffusers keeps Wan's float32 islands), or random (seeded, float32, then cast)."""
    from diffusers import WanTransformer3DModel

    if config.transformer is not None:
        kwargs = transformer_arguments(config, None)
        return cast_transformer(_random(lambda: WanTransformer3DModel(**kwargs), seed), dtype)
    return WanTransformer3DModel.from_pretrained(wan_dir, subfolder="transformer", local_files_only=True,
                                                 torch_dtype=dtype, low_cpu_mem_usage=True)


def build_vae(config: BackboneConfig, wan_dir: Path | None, seed: int = 0, dtype: torch.dtype = torch.float32):
    """``AutoencoderKLWan`` in ``dtype``, frozen and in eval mode: pretrained or random (seeded)."""
    from diffusers import AutoencoderKLWan

    if config.vae is not None:
        kwargs = vae_arguments(config, None)
        vae = nn.Module.to(_random(lambda: AutoencoderKLWan(**kwargs), seed + 1), dtype)
    else:
        vae = AutoencoderKLWan.from_pretrained(wan_dir, subfolder="vae", local_files_only=True, torch_dtype=dtype,
                                               low_cpu_mem_usage=True)
    return vae.eval().requires_grad_(False)


def cast_transformer(transformer: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast to ``dtype`` but keep what diffusers keeps in float32 for Wan (RoPE, time embedder,
    modulation tables, norms): every parameter and buffer with a name part in
    ``_keep_in_fp32_modules`` — what ``from_pretrained(torch_dtype=...)`` does. (``nn.Module.to``:
    diffusers' own ``to`` only adds a warning that casting does not keep them.) Free on the meta device."""
    nn.Module.to(transformer, dtype)
    keep = set(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    if dtype != torch.float32 and keep:
        for name, module in transformer.named_modules():
            if any(part in keep for part in name.split(".")):
                module.to(torch.float32)
        for name, parameter in transformer.named_parameters():  # parameters named like one (scale_shift_table)
            if any(part in keep for part in name.split(".")):
                parameter.data = parameter.data.to(torch.float32)
    return transformer


# --------------------------------------------------------------------------- latents


def _statistics(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=like.device).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=like.device).view(shape)
    return mean, std


def vae_dtype_of(vae) -> torch.dtype:
    return vae.decoder.conv_in.weight.dtype


def encode_frames(vae, frames: torch.Tensor) -> torch.Tensor:
    """``(B, 1 + 4k, 3, H, W)`` in [0, 1] → normalised latents ``(B, 16, 1 + k, H/8, W/8)`` float32."""
    video = (frames.permute(0, 2, 1, 3, 4) * 2.0 - 1.0).to(vae_dtype_of(vae))
    posterior_mean = vae.encode(video).latent_dist.mode().float()
    mean, std = _statistics(vae, posterior_mean)
    return (posterior_mean - mean) / std


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents ``(B, 16, 1 + k, h, w)`` → frames ``(B, 1 + 4k, 3, 8h, 8w)`` in [0, 1] float32."""
    mean, std = _statistics(vae, latents)
    video = vae.decode((latents.float() * std + mean).to(vae_dtype_of(vae))).sample
    return ((video.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 1, 3, 4)


# --------------------------------------------------------------------------- text


def empty_prompt_tokens(tokenizer, eos_token_id: int, max_sequence_length: int) -> torch.Tensor:
    """Token ids ``(1, n)`` of the empty prompt without padding: through the tokenizer as
    ``WanPipeline`` calls it (padding to ``max_sequence_length``, special tokens), or — with no
    tokenizer — the lone end-of-sequence token that a T5 tokenizer yields for ""."""
    if tokenizer is None:
        return torch.tensor([[eos_token_id]])
    tokens = tokenizer([""], padding="max_length", max_length=max_sequence_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    length = int(tokens.attention_mask[0].sum())
    return tokens.input_ids[:, :length]


@torch.no_grad()
def encode_empty_prompt(tokenizer, encoder: nn.Module, max_sequence_length: int) -> torch.Tensor:
    """``(1, max_sequence_length, D)`` float32: the encoder's states for the prompt's real
    tokens, zeros after them (``WanPipeline._get_t5_prompt_embeds``). Padding tokens are
    masked out of attention, so encoding only the real tokens gives the same states at a
    fraction of the cost (the tests check it)."""
    ids = empty_prompt_tokens(tokenizer, encoder.config.eos_token_id, max_sequence_length)
    device = next(encoder.parameters()).device
    states = encoder(input_ids=ids.to(device), attention_mask=torch.ones_like(ids, device=device)).last_hidden_state
    embedding = states.new_zeros(1, max_sequence_length, states.shape[-1], dtype=torch.float32)
    embedding[:, : ids.shape[1]] = states.float()
    return embedding.cpu()


def wan_text_encoder(wan_dir: Path) -> tuple:
    """UMT5 tokenizer + encoder of the Wan folder, bf16 (as released), on the GPU when there is one."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(wan_dir / "tokenizer", local_files_only=True)
    encoder = UMT5EncoderModel.from_pretrained(wan_dir / "text_encoder", local_files_only=True, torch_dtype=torch.bfloat16)
    return tokenizer, encoder.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def tiny_text_encoder(config: Mapping, seed: int = 0) -> tuple:
    """A random ``UMT5EncoderModel`` from constructor arguments; no tokenizer (ids are fed)."""
    from transformers import UMT5Config, UMT5EncoderModel

    return None, _random(lambda: UMT5EncoderModel(UMT5Config(**dict(config))), seed + 2).eval()


class EmptyPromptEmbedding:
    """The cached empty-prompt embedding ``(1, L, D)`` float32.

    ``load_encoder`` is called only when the cache file is absent (or no cache is
    configured); the result is written atomically so concurrent ranks never see a torn file.
    """

    def __init__(self, cache_path: Path | None, max_sequence_length: int, text_dim: int,
                 load_encoder: Callable[[], tuple]) -> None:
        self.cache_path = cache_path
        self.max_sequence_length = int(max_sequence_length)
        self.text_dim = int(text_dim)
        self.load_encoder = load_encoder

    def _check(self, embedding: torch.Tensor, source: str) -> torch.Tensor:
        expected = (1, self.max_sequence_length, self.text_dim)
        if tuple(embedding.shape) != expected:
            raise ConfigError(
                f"{source}: text embedding of shape {tuple(embedding.shape)}, the DiT needs {expected}; "
                f"delete the file or point backbone.text_embedding_cache elsewhere"
            )
        return embedding

    def get(self) -> torch.Tensor:
        if self.cache_path is not None and self.cache_path.is_file():
            stored = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            return self._check(stored["embedding"].float(), str(self.cache_path))
        tokenizer, encoder = self.load_encoder()
        embedding = self._check(encode_empty_prompt(tokenizer, encoder, self.max_sequence_length), "the text encoder")
        del encoder
        if self.cache_path is not None:
            buffer = io.BytesIO()
            torch.save({"embedding": embedding, "prompt": "", "max_sequence_length": self.max_sequence_length}, buffer)
            atomic_write_bytes(self.cache_path, buffer.getvalue())
            log.info("vividface: empty-prompt embedding cached to %s", self.cache_path)
        return embedding
