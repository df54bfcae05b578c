"""The official BFVR-STC checkpoint layout (BasicSR) ↔ this implementation's parameter names.

The release ``ckpt-bfvr.pth`` is a dict with ``params_ema`` (or ``params``) holding the
state dict of the official ``CodeFormer3D`` (stage II) — or of ``VQAutoEncoder3D`` for a
stage-I checkpoint. Its names:

* ``encoder.blocks.{i}.…`` / ``generator.blocks.{i}.…`` — the 3D VQGAN as flat block lists, in
  the order the official constructors append them (see :func:`encoder_blocks`,
  :func:`decoder_blocks`); block parameter names (``norm1``, ``conv1``, ``q``, ``proj_out``,
  ``conv``, …) are the same as here. In a stage-II checkpoint ``encoder`` is the LQ encoder.
* ``quantize.embedding_s`` / ``quantize.embedding_t`` / ``quantize.SA.…`` — codebooks and
  temporal attention.
* ``position_emb_s`` / ``s_ft_layers.{i}.{self_attn,linear1,linear2,norm1,norm2}`` /
  ``s_idx_pred_layer.{0,1}`` and the ``t`` counterparts — the lookup transformers.
* ``s_feat_emb``, ``t_feat_emb``, ``fuse_convs_dict`` — built by the official class but never
  used in its forward pass: ignored (listed by :func:`from_official`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.methods.bfvr_stc.autoencoder import VideoDecoder, VideoEncoder
from fvr_bench.methods.bfvr_stc.transformer import LookupTransformer

UNUSED_OFFICIAL_PREFIXES = ("s_feat_emb.", "t_feat_emb.", "fuse_convs_dict.")
TRANSFORMER_LAYER_NAMES = {"self_attn.in_proj_weight": "attention.in_proj_weight",
                           "self_attn.in_proj_bias": "attention.in_proj_bias",
                           "self_attn.out_proj.weight": "attention.out_proj.weight",
                           "self_attn.out_proj.bias": "attention.out_proj.bias",
                           "linear1.weight": "mlp_in.weight", "linear1.bias": "mlp_in.bias",
                           "linear2.weight": "mlp_out.weight", "linear2.bias": "mlp_out.bias",
                           "norm1.weight": "attention_norm.weight", "norm1.bias": "attention_norm.bias",
                           "norm2.weight": "mlp_norm.weight", "norm2.bias": "mlp_norm.bias"}
TEMPORAL_ATTENTION_NAMES = ("norm", "q", "k", "v", "proj_out")


def encoder_blocks(encoder: VideoEncoder) -> list[nn.Module]:
    """The encoder's modules in the order of the official ``Encoder.blocks`` list."""
    blocks: list[nn.Module] = [encoder.conv_in]
    for level in encoder.levels:
        for j, res_block in enumerate(level.res_blocks):
            blocks.append(res_block)
            if level.attentions is not None:
                blocks.append(level.attentions[j])
        if level.resample is not None:
            blocks.append(level.resample)
    bottleneck = encoder.bottleneck
    return blocks + [bottleneck.res_in, bottleneck.attention, bottleneck.res_out, encoder.norm_out, encoder.conv_out]


def decoder_blocks(decoder: VideoDecoder) -> list[nn.Module]:
    """The decoder's modules in the order of the official ``Generator.blocks`` list."""
    bottleneck = decoder.bottleneck
    blocks: list[nn.Module] = [decoder.conv_in, bottleneck.res_in, bottleneck.attention, bottleneck.res_out]
    for level in reversed(decoder.levels):
        for j, res_block in enumerate(level.res_blocks):
            blocks.append(res_block)
            if level.attentions is not None:
                blocks.append(level.attentions[j])
        if level.resample is not None:
            blocks.append(level.resample)
    return blocks + [decoder.norm_out, decoder.conv_out]


def _block_keys(blocks: list[nn.Module], root: nn.Module, official_prefix: str, our_prefix: str) -> dict[str, str]:
    paths = {id(module): name for name, module in root.named_modules()}
    mapping = {}
    for index, block in enumerate(blocks):
        for name in block.state_dict():
            mapping[f"{official_prefix}.blocks.{index}.{name}"] = f"{our_prefix}.{paths[id(block)]}.{name}"
    return mapping


def _transformer_keys(transformer: LookupTransformer, letter: str, our_prefix: str) -> dict[str, str]:
    if not isinstance(transformer.input_projection, nn.Identity):
        raise ConfigError("the official layout feeds the latent to the transformers directly: module.transformer.dim "
                          "must equal module.autoencoder.emb_dim to use official weights")
    mapping = {f"position_emb_{letter}": f"{our_prefix}.position_embedding",
               f"{letter}_idx_pred_layer.0.weight": f"{our_prefix}.output_norm.weight",
               f"{letter}_idx_pred_layer.0.bias": f"{our_prefix}.output_norm.bias",
               f"{letter}_idx_pred_layer.1.weight": f"{our_prefix}.to_logits.weight"}
    for i in range(len(transformer.layers)):
        for official, ours in TRANSFORMER_LAYER_NAMES.items():
            mapping[f"{letter}_ft_layers.{i}.{official}"] = f"{our_prefix}.layers.{i}.{ours}"
    return mapping


def official_key_map(module: nn.Module, stage_two: bool = True) -> dict[str, str]:
    """Official key → our key for every tensor of the official network of ``module``'s config.

    ``stage_two``: the ``CodeFormer3D`` layout (``encoder`` = our ``lq_encoder``, plus the
    transformers); otherwise the stage-I ``VQAutoEncoder3D`` (``encoder`` = ``hq_encoder``).
    """
    encoder_name = "lq_encoder" if stage_two else "hq_encoder"
    if not hasattr(module, encoder_name):
        raise ConfigError(f"this BFVR-STC module (stage {getattr(module, 'stage', '?')}) has no {encoder_name} for the "
                          f"official {'stage-II' if stage_two else 'stage-I'} checkpoint layout")
    encoder: VideoEncoder = getattr(module, encoder_name)
    mapping = _block_keys(encoder_blocks(encoder), encoder, "encoder", encoder_name)
    mapping.update(_block_keys(decoder_blocks(module.decoder), module.decoder, "generator", "decoder"))
    mapping["quantize.embedding_s.weight"] = "quantizer.spatial_codebook.weight"
    mapping["quantize.embedding_t.weight"] = "quantizer.temporal_codebook.weight"
    for part in TEMPORAL_ATTENTION_NAMES:
        for name in getattr(module.quantizer.temporal_attention, part).state_dict():
            mapping[f"quantize.SA.{part}.{name}"] = f"quantizer.temporal_attention.{part}.{name}"
    if stage_two:
        mapping.update(_transformer_keys(module.spatial_transformer, "s", "spatial_transformer"))
        mapping.update(_transformer_keys(module.temporal_transformer, "t", "temporal_transformer"))
    return mapping


def is_official_layout(state: Mapping[str, object]) -> bool:
    """A raw official file (``params_ema``/``params``) or its unwrapped state dict."""
    return "params_ema" in state or "params" in state or "encoder.blocks.0.weight" in state


def official_state(raw: Mapping[str, object], source: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside an official file: ``params_ema`` (EMA, preferred) or ``params``."""
    for key in ("params_ema", "params"):
        if isinstance(raw.get(key), Mapping):
            return dict(raw[key])
    if "encoder.blocks.0.weight" in raw:
        return dict(raw)
    raise ConfigError(f"{source}: no 'params_ema' or 'params' entry (keys: {sorted(raw)[:8]})")


def from_official(state: Mapping[str, torch.Tensor], module: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official state dict (raw file or unwrapped) → ``(our state dict, ignored official keys)``.

    The layout (stage II or stage I) is recognised from the transformer entries. Entries the
    official class never uses are ignored; any other official key without a counterpart, or a
    missing one, means a different architecture and is an error.
    """
    state = official_state(state) if ("params_ema" in state or "params" in state) else dict(state)
    stage_two = any(key.startswith("s_ft_layers.") for key in state)
    mapping = official_key_map(module, stage_two=stage_two)
    ignored = sorted(key for key in state if key.startswith(UNUSED_OFFICIAL_PREFIXES))
    unknown = sorted(set(state) - set(mapping) - set(ignored))
    missing = sorted(set(mapping) - set(state))
    if unknown or missing:
        raise ConfigError(f"official BFVR-STC weights do not match this configuration: official keys without a place "
                          f"here {unknown[:4]}, expected official keys absent {missing[:4]} "
                          f"(the release needs the paper-scale conf/method/bfvr_stc.yaml)")
    return {mapping[key]: value for key, value in state.items() if key in mapping}, ignored


def to_official(state: Mapping[str, torch.Tensor], module: nn.Module, stage_two: bool = True) -> dict[str, torch.Tensor]:
    """Our state dict → the official key layout (exporting, and the round-trip test)."""
    mapping = official_key_map(module, stage_two=stage_two)
    missing = sorted(ours for ours in mapping.values() if ours not in state)
    if missing:
        raise ConfigError(f"state dict lacks {missing[:4]} needed for the official layout")
    return {official: state[ours] for official, ours in mapping.items()}
