"""VEnhancer's text context: OpenCLIP ViT-H-14's text tower, penultimate layer, then ``ln_final``.

VEnhancer (``video_to_video/modules/embedder.py``, ``FrozenOpenCLIPEmbedder(layer="penultimate")``)
tokenises with OpenCLIP's BPE (77 tokens, zero padded), adds the positional embedding, runs every
residual block of the text transformer **but the last**, applies ``ln_final`` and returns all 77
token states: a ``(B, 77, 1024)`` cross-attention context. There is no text projection and no
pooling.

Here the tower is a transformers ``CLIPTextModel`` built from a local config (no hub ids). For
``layer="penultimate"`` the model is built with one layer fewer than the checkpoint (the
Stable-Diffusion-2 trick): its ``last_hidden_state`` = ``final_layer_norm(output of block L−1)``,
which is exactly VEnhancer's context, and the unused last block is never held in memory.

* :data:`OPENCLIP_VIT_H_TEXT` — the ``CLIPTextConfig`` values of ViT-H-14's text tower (from
  open_clip's ``model_configs/ViT-H-14.json`` + ``CLIPTextCfg`` defaults: MLP ratio 4, exact GELU,
  LayerNorm eps 1e-5).
* :func:`convert_open_clip_text` — OpenCLIP text-tower state dict → ``CLIPTextModel`` keys.
* :class:`TextEncoder` — tokenise + encode, memoised per prompt string.
* :func:`load_open_clip_text` — ``open_clip_pytorch_model.bin`` → :class:`TextEncoder` (strict).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.state_dicts import load_state, read_state

REGISTRY_NAME = "open_clip_vit_h14_laion2b"
LAYERS = ("last", "penultimate")
CONTEXT_LENGTH = 77
# OpenCLIP's BPE vocabulary: 49152 − 256 − 2 merges + 512 byte tokens + <start/end_of_text>
OPENCLIP_VOCAB_SIZE = 49408
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
PAD_TOKEN_ID = 0  # open_clip.tokenize zero-pads (id 0 is "!"); VEnhancer passes no padding mask

# ViT-H-14.json text_cfg: width 1024, heads 16, layers 24, vocab 49408, context 77; embed_dim 1024.
# CLIPTextCfg defaults: mlp_ratio 4.0 (→ 4096), nn.GELU (exact erf, not quick_gelu: the JSON sets
# no "quick_gelu"), open_clip LayerNorm = nn.LayerNorm (eps 1e-5), causal mask.
OPENCLIP_VIT_H_TEXT: Mapping[str, object] = MappingProxyType({
    "vocab_size": OPENCLIP_VOCAB_SIZE,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "max_position_embeddings": CONTEXT_LENGTH,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 1024,
    "attention_dropout": 0.0,
    "bos_token_id": SOT_TOKEN_ID,
    "eos_token_id": EOT_TOKEN_ID,
    "pad_token_id": PAD_TOKEN_ID,
})

# OpenCLIP resblock sub-keys → CLIPEncoderLayer sub-keys (in_proj is split into q/k/v below)
_BLOCK_KEYS = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_IN_PROJ = ("attn.in_proj_weight", "attn.in_proj_bias")
_TOP_KEYS = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
# keys of a full OpenCLIP CLIP file that are not text-tower weights: the image tower, the
# contrastive temperature / bias scalars, and the causal-mask buffer some old files saved
_IGNORED_PREFIXES = ("visual.",)
_IGNORED_KEYS = ("logit_scale", "logit_bias", "attn_mask")
_BLOCK_RE = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


def clip_text_config(config: Mapping | object) -> object:
    """A transformers ``CLIPTextConfig`` from a mapping of its values (e.g.
    :data:`OPENCLIP_VIT_H_TEXT` or a tiny test config) or an existing config (returned as is)."""
    from transformers import CLIPTextConfig

    if isinstance(config, CLIPTextConfig):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"text encoder config: expected a CLIPTextConfig or a mapping, got {type(config).__name__}")
    values = dict(config)
    vocab = int(values.get("vocab_size", OPENCLIP_VOCAB_SIZE))
    if vocab < OPENCLIP_VOCAB_SIZE:
        # tiny test vocabularies: keep the special ids inside the vocabulary (transformers
        # checks them); they only drive the pooled output, which VEnhancer does not use
        values.setdefault("bos_token_id", SOT_TOKEN_ID % vocab)
        values.setdefault("eos_token_id", EOT_TOKEN_ID % vocab)
    for key, value in OPENCLIP_VIT_H_TEXT.items():
        if key in ("bos_token_id", "eos_token_id", "pad_token_id", "hidden_act", "layer_norm_eps", "attention_dropout"):
            values.setdefault(key, value)
    return CLIPTextConfig(**values)


def convert_open_clip_text(state: Mapping[str, torch.Tensor], with_projection: bool = False) -> dict[str, torch.Tensor]:
    """OpenCLIP text-tower weights → transformers ``CLIPTextModel`` keys (no ``text_model.``
    prefix: the transformers ≥ 5 layout, loaded into ``CLIPTextModel`` itself).

    ``state``: a full OpenCLIP CLIP state dict (``visual.*``, ``logit_scale``, ``logit_bias``
    and an ``attn_mask`` buffer are ignored) or its text tower alone. ``in_proj_weight``
    ``(3D, D)`` / ``in_proj_bias`` ``(3D,)`` are split in q, k, v order (``nn.MultiheadAttention``'s
    packing). ``text_projection`` ``(D, E)`` (used as ``x @ P``) is dropped — VEnhancer takes token
    states, not the pooled projection — unless ``with_projection``, which adds it as
    ``text_projection.weight`` = ``P.T`` (the ``CLIPTextModelWithProjection`` layout).

    Strict: any other key, a missing key, or non-contiguous block indices raise
    :class:`ConfigError`. Shapes are checked when the result is loaded into a network.
    """
    out: dict[str, torch.Tensor] = {}
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    unexpected: list[str] = []
    projection = None
    for key, value in state.items():
        if key.startswith(_IGNORED_PREFIXES) or key in _IGNORED_KEYS:
            continue
        if key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = value
            continue
        if key == "text_projection":
            projection = value
            continue
        match = _BLOCK_RE.match(key)
        if match and (match.group(2) in _BLOCK_KEYS or match.group(2) in _IN_PROJ):
            blocks.setdefault(int(match.group(1)), {})[match.group(2)] = value
            continue
        unexpected.append(key)
    if unexpected:
        raise ConfigError(f"OpenCLIP text weights: {len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
    missing = [key for key in (*_TOP_KEYS, "text_projection") if key not in state]
    if missing:
        raise ConfigError(f"OpenCLIP text weights: missing key(s) {missing}")
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise ConfigError(f"OpenCLIP text weights: transformer.resblocks indices must run 0..N-1, got {sorted(blocks)}")
    for index, parts in sorted(blocks.items()):
        absent = [k for k in (*_BLOCK_KEYS, *_IN_PROJ) if k not in parts]
        if absent:
            raise ConfigError(f"OpenCLIP text weights: transformer.resblocks.{index} lacks {absent}")
        prefix = f"encoder.layers.{index}."
        for source, target in _BLOCK_KEYS.items():
            out[prefix + target] = parts[source]
        weight, bias = parts["attn.in_proj_weight"], parts["attn.in_proj_bias"]
        if weight.shape[0] % 3 or bias.shape[0] != weight.shape[0]:
            raise ConfigError(f"OpenCLIP text weights: transformer.resblocks.{index}.attn.in_proj has shape "
                              f"{tuple(weight.shape)} / {tuple(bias.shape)}, expected (3D, D) / (3D,)")
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3, dim=0), bias.chunk(3, dim=0)):
            out[f"{prefix}self_attn.{name}.weight"] = w
            out[f"{prefix}self_attn.{name}.bias"] = b
    if with_projection:
        out["text_projection.weight"] = projection.t()
    return out


def _num_layers(state: Mapping[str, torch.Tensor]) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.match(r"^encoder\.layers\.(\d+)\.", key))}
    return len(indices)


class TextEncoder(nn.Module):
    """Prompts → VEnhancer's cross-attention context ``(B, 77, D)``.

    ``config``: a ``CLIPTextConfig`` or a mapping of its values (:data:`OPENCLIP_VIT_H_TEXT` for
    the real tower); ``num_hidden_layers`` is the checkpoint's block count. ``layer``:
    ``"penultimate"`` (VEnhancer) skips the last block, ``"last"`` runs all of them; either way
    ``final_layer_norm`` (OpenCLIP ``ln_final``) is applied.

    Tokenisation is open_clip's ``SimpleTokenizer`` (offline; its BPE ships in the wheel):
    lower-cased, ``<start_of_text> … <end_of_text>``, truncated to the context length with
    ``<end_of_text>`` kept last, zero padded. **Test-only:** when ``vocab_size`` is smaller than
    OpenCLIP's 49408 (tiny random configs) token ids are taken modulo ``vocab_size``.

    The encoder is frozen (eval, no grad). :meth:`encode` memoises the context of each prompt
    string within the instance (every clip repeats the same prompts); moving the module
    (``.to``) or loading weights clears the memo.
    """

    def __init__(self, config: Mapping | object = OPENCLIP_VIT_H_TEXT, layer: str = "penultimate") -> None:
        super().__init__()
        from transformers import CLIPTextModel

        if layer not in LAYERS:
            raise ConfigError(f"text encoder layer must be one of {LAYERS}, got {layer!r}")
        config = clip_text_config(config)
        self.layer = layer
        self.num_layers = int(config.num_hidden_layers)  # the checkpoint's block count
        skip = 1 if layer == "penultimate" else 0
        if self.num_layers - skip < 1:
            raise ConfigError(f"text encoder: {self.num_layers} layer(s) cannot give the {layer} layer")
        inner = clip_text_config({**config.to_dict(), "num_hidden_layers": self.num_layers - skip})
        self.config = config
        self.context_length = int(config.max_position_embeddings)
        self.vocab_size = int(config.vocab_size)
        self.model = CLIPTextModel(inner)
        self.requires_grad_(False).eval()
        self._tokenizer = None
        self._memo: dict[str, torch.Tensor] = {}

    @property
    def width(self) -> int:
        """D, the context's feature size."""
        return int(self.config.hidden_size)

    # ------------------------------------------------------------------ tokens
    def tokenize(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """``(B, context_length)`` int64 OpenCLIP token ids of the prompts."""
        if self._tokenizer is None:
            # lazy: importing open_clip takes seconds
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = self._tokenizer(list(prompts), context_length=self.context_length)
        if self.vocab_size < OPENCLIP_VOCAB_SIZE:
            ids = ids % self.vocab_size  # test-only tiny vocabularies (see the class docstring)
        return ids

    # ------------------------------------------------------------------ encode
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids → ``(B, L, D)``: blocks up to the chosen layer, then ``ln_final``.
        No padding mask (VEnhancer passes none); the causal mask is the model's."""
        device = self.model.embeddings.token_embedding.weight.device
        return self.model(input_ids=input_ids.to(device)).last_hidden_state

    def encode(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """``(B, 77, D)`` contexts of the prompts, without gradient; each distinct prompt string
        is encoded once per instance."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        todo = list(dict.fromkeys(p for p in prompts if p not in self._memo))
        if todo:
            with torch.no_grad():
                states = self(self.tokenize(todo))
            for prompt, state in zip(todo, states):
                self._memo[prompt] = state
        return torch.stack([self._memo[p] for p in prompts])

    def clear_cache(self) -> None:
        """Forget the memoised contexts."""
        self._memo.clear()

    def _apply(self, fn, *args, **kwargs):  # .to / .half / .cuda: memoised tensors would be stale
        self._memo.clear()
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ weights
    def load_converted(self, state: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype | None = None) -> None:
        """Load a :func:`convert_open_clip_text` result strictly (:class:`ConfigError` naming
        ``source`` on any misfit). The file must hold exactly ``num_hidden_layers`` blocks; with
        ``layer="penultimate"`` the last one is checked to be there and then left out."""
        found = _num_layers(state)
        if found != self.num_layers:
            raise ConfigError(f"{source}: the text tower has {found} transformer block(s), the config expects "
                              f"{self.num_layers}")
        kept = len(self.model.encoder.layers)

        def key_map(key: str) -> str | None:
            match = re.match(r"^encoder\.layers\.(\d+)\.", key)
            return None if match and int(match.group(1)) >= kept else key

        load_state(self.model, state, source, key_map, dtype=dtype)
        self._memo.clear()


def load_open_clip_text(path: str | Path, config: Mapping | object = OPENCLIP_VIT_H_TEXT, layer: str = "penultimate",
                        dtype: torch.dtype | None = None) -> TextEncoder:
    """An OpenCLIP checkpoint (``open_clip_pytorch_model.bin``, memory-mapped; only the text
    tower is read) → a frozen :class:`TextEncoder`. A missing file is a
    :class:`WeightsMissingError` naming it; any key or shape misfit a :class:`ConfigError`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsMissingError(f"OpenCLIP ViT-H-14 text weights not found: {path} (registry entry "
                                  f"{REGISTRY_NAME!r}: open_clip_pytorch_model.bin of laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")
    state = convert_open_clip_text(read_state(path))
    encoder = TextEncoder(config, layer=layer)
    encoder.load_converted(state, str(path), dtype=dtype)
    return encoder
