"""The official BFVR-STC checkpoint layout (BasicSR) ↔ this implementation's parameter names.

The release ``ckpt-bfvr.pth`` is a dict with ``params_ema`` (or ``params``) holding the
state dict of the official ``CodeFormer3D`` (stage II) — or of ``VQAutoEncoder3D`` for a
stage-I checkpoint. Its names:

* ``encoder.blocks.{i}.…`` / ``generator.blocks.{i}.…`` — the 3D VQGAN as flat block lists, in
  the order the official constructors append them (see :func:`encoder_blocks`,
  :func:`decoder_blocks`); block parameter names (``norm1``, ``conv1``, ``q``, ``proj_out``,
  ``conv``, …) are the same as here. In a stage-II checkpoint ``encoder`` is the LQ encoder.
  The release at paper scale: ``encoder.blocks`` 0 conv_in; 1-2 Res(32), 3 Downsample (T, H, W);
  4-5 Res(64), 6 Downsample2D; 7-8 Res(128), 9 Downsample2D; 10 Res, 11 Attn, 12 Res, 13 Attn
  (256); 14 Res, 15 Attn, 16 Res (bottleneck); 17 GroupNorm; 18 conv to 256.
  ``generator.blocks`` 0 conv_in; 1 Res, 2 Attn, 3 Res (bottleneck, 256); 4 Res, 5 Attn, 6 Res,
  7 Attn (256); 8 Res, 9 Attn, 10 Res, 11 Attn (128), 12 Upsample2D; 13-14 Res(64),
  15 Upsample2D; 16-17 Res(32), 18 Upsample (T, H, W); 19 GroupNorm; 20 conv to RGB.
* ``quantize.embedding_s`` / ``quantize.embedding_t`` / ``quantize.SA.…`` — codebooks and
  temporal attention.
* ``position_emb_s`` / ``s_ft_layers.{i}.{self_attn,linear1,linear2,norm1,norm2}`` /
  ``s_idx_pred_layer.{0,1}`` and the ``t`` counterparts — the lookup transformers.
* ``s_feat_emb``, ``t_feat_emb``, ``fuse_convs_dict`` — built by the official class but never
  used in its forward pass: ignored (listed by :func:`from_official`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.methods.bfvr_stc.autoencoder import VideoDecoder, VideoEncoder
from fvr_bench.methods.bfvr_stc.transformer import LookupTransformer

log = logging.getLogger(__name__)

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

# The architecture of the release ckpt-bfvr.pth in this implementation's options: its
# scripts/infer_bfvr.py builds CodeFormer3D(n_head=2, n_layers=9), i.e. VQAutoEncoder3D(512, nf 32,
# ch_mult [1, 2, 4, 8], 2 res blocks, attn_resolutions [32], 1024 codes) with dim 256, MLP 512.
# GroupNorm groups and heads change no shape, so only this list can tell a wrong one.
RELEASE_SETTINGS: dict[str, dict[str, object]] = {
    "autoencoder": {"nf": 32, "emb_dim": 256, "ch_mult": [1, 2, 4, 8], "num_res_blocks": 2,
                    "encoder_attention_levels": [3], "decoder_attention_levels": [2, 3],
                    "temporal_downsample_levels": [0], "norm_groups": 32},
    "quantizer": {"codebook_size": 1024, "temporal_norm_groups": 16},
    "transformer": {"dim": 256, "heads": 2, "layers": 9, "mlp_dim": 512, "latent_grid": [64, 64]},
}


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
        raise ConfigError("the official layout feeds the latent to the transformers directly: architecture.transformer.dim "
                          "must equal architecture.autoencoder.emb_dim to use official weights")
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


def _canonical(key: str, value: object) -> object:
    if isinstance(value, (list, tuple)):
        value = [int(v) for v in value]
        return sorted(value) if key.endswith("_levels") else value  # level lists are sets
    return value


def release_differences(module: nn.Module) -> list[str]:
    """``"group.option=value (release: value)"`` for every architecture option of ``module``'s
    configuration that differs from the release ``ckpt-bfvr.pth`` (:data:`RELEASE_SETTINGS`)."""
    hparams = getattr(module, "architecture", None) or getattr(module, "hparams", None) or {}
    differences = []
    for group, release in RELEASE_SETTINGS.items():
        given = hparams.get(group) or {}
        for key, value in release.items():
            if key in given and _canonical(key, given[key]) != _canonical(key, value):
                differences.append(f"{group}.{key}={_canonical(key, given[key])} (release: {value})")
    return differences


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def block_order(key: str) -> tuple:
    """Sort key of an official name: its block path (up to the last number, numbers compared
    as numbers: ``generator.blocks.9`` before ``generator.blocks.14``). Tensors of one block tie,
    so a stable sort keeps them in their module order (``norm1`` before ``conv1``)."""
    parts = key.split(".")
    numbered = [i for i, part in enumerate(parts) if part.isdigit()]
    path = parts[: numbered[-1] + 1] if numbered else parts[:1]
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path)


def fit_report(state: Mapping[str, torch.Tensor], mapping: Mapping[str, str], own: Mapping[str, torch.Tensor],
               module: nn.Module) -> str | None:
    """None when every official tensor of ``state`` has a place of its shape in ``own`` and
    none is absent; else the error text: per kind of misfit its count and its first key
    (shape misfits: both shapes), then what to change — never the configuration in use.

    "First" is in block order (:func:`block_order`), and the kinds are listed by their first
    key, so the text starts where the file's architecture and this one part.
    """
    unplaced = sorted((k for k in state if k not in mapping and not k.startswith(UNUSED_OFFICIAL_PREFIXES)),
                      key=block_order)
    missing = sorted((k for k in mapping if k not in state), key=block_order)
    mismatched = sorted((k for k in state if k in mapping and _shape(state[k]) != _shape(own[mapping[k]])),
                        key=block_order)
    if not (unplaced or missing or mismatched):
        return None
    problems = []  # (first key, text)
    if mismatched:
        key = mismatched[0]
        problems.append((key, f"{len(mismatched)} tensor(s) of another shape, first {key!r}: file {_shape(state[key])}, "
                              f"this configuration {_shape(own[mapping[key]])} (here {mapping[key]})"))
    if unplaced:
        key = unplaced[0]
        problems.append((key, f"{len(unplaced)} official key(s) with no place here, first {key!r} {_shape(state[key])}"))
    if missing:
        key = missing[0]
        problems.append((key, f"{len(missing)} expected official key(s) absent, first {key!r} "
                              f"(here {mapping[key]}, {_shape(own[mapping[key]])})"))
    problems.sort(key=lambda problem: block_order(problem[0]))
    differences = release_differences(module)
    if differences:
        hint = (f"if this is the release ckpt-bfvr.pth, it needs the paper-scale architecture of "
                f"conf/method/bfvr_stc.yaml; this configuration differs in {', '.join(differences)}")
    else:
        hint = ("this configuration already has the release ckpt-bfvr.pth architecture, so the file holds another "
                "network (e.g. the official deflicker releases: architecture.transformer.layers=6 heads=4) or is damaged; "
                "set method.architecture.* to the file's architecture")
    return f"official BFVR-STC weights do not fit this configuration: {'; '.join(t for _, t in problems)}. {hint}"


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
    official class never uses are ignored; every other official tensor must have a place of
    its shape here and every expected one must be present (a strict load): otherwise a
    :class:`ConfigError` names the first misfit (:func:`fit_report`).
    """
    state = official_state(state) if ("params_ema" in state or "params" in state) else dict(state)
    stage_two = any(key.startswith("s_ft_layers.") for key in state)
    mapping = official_key_map(module, stage_two=stage_two)
    report = fit_report(state, mapping, module.state_dict(), module)
    if report is not None:
        raise ConfigError(report)
    differences = release_differences(module)
    if differences:  # right for a file exported from this configuration, wrong for the release
        log.warning("official-layout weights loaded into a configuration that differs from the release "
                    "ckpt-bfvr.pth in %s", ", ".join(differences))
    ignored = sorted(key for key in state if key.startswith(UNUSED_OFFICIAL_PREFIXES))
    return {mapping[key]: value for key, value in state.items() if key in mapping}, ignored


def to_official(state: Mapping[str, torch.Tensor], module: nn.Module, stage_two: bool = True) -> dict[str, torch.Tensor]:
    """Our state dict → the official key layout (exporting, and the round-trip test)."""
    mapping = official_key_map(module, stage_two=stage_two)
    missing = sorted(ours for ours in mapping.values() if ours not in state)
    if missing:
        raise ConfigError(f"state dict lacks {missing[:4]} needed for the official layout")
    return {official: state[ours] for official, ours in mapping.items()}
