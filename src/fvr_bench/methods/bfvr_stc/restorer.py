"""The BFVR-STC restorer: ``E_l`` → lookup transformers → codebooks → ``D_h``, in windows.

:class:`BFVRSTCRestorer` is a plain ``nn.Module`` whose networks are injected (built from the
``architecture`` options by :func:`build_restorer`); its ``restore`` is what ``run`` calls.
:func:`load_restorer` (the ``restorer:`` node of ``conf/method/bfvr_stc.yaml``) builds it on
the meta device and loads a weights file into it memory-mapped, straight into its dtype:

* an export of the train command (``<stage dir>/restorer.safetensors`` + ``restorer.json``,
  or ``python -m fvr_bench export``);
* a Lightning checkpoint of stage 2a/2b/deflicker (EMA weights preferred; the keys of the
  training module, ``restorer.*``, or of the former one-module layout);
* the official release ``ckpt-bfvr.pth`` (mapped by :mod:`.official`).

Video tensors at the ``restore`` boundary are ``(B, T, 3, H, W)`` in [0, 1]; inside, the
networks use ``(B, 3, T, H, W)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fvr_bench import weights
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.base import NetworkRestorer, crop_to, pad_to_multiple, parse_dtype, plain, resize_video
from fvr_bench.methods.bfvr_stc.autoencoder import Downsample3D, VideoDecoder, VideoEncoder
from fvr_bench.methods.bfvr_stc.quantizer import SpatioTemporalQuantizer
from fvr_bench.methods.bfvr_stc.transformer import LookupTransformer
from fvr_bench.methods.bfvr_stc.windows import restore_in_windows
from fvr_bench.state_dicts import load_state, read_file, state_of

log = logging.getLogger(__name__)

SUPPORTED_TASKS = ("bfr", "deflicker")
MOTION_RESIDUAL_MODES = ("corrected", "official")
PARTS = ("lq_encoder", "quantizer", "decoder", "spatial_transformer", "temporal_transformer")
EXPORT_CONFIG = "restorer.json"



# ---------------------------------------------------------------------- networks


def autoencoder_parts(autoencoder: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``architecture.autoencoder`` → the keyword arguments of :class:`VideoEncoder` and of
    :class:`VideoDecoder`: everything shared except the attention placement, which the
    official network sets differently on the two sides (decoder levels 3 and 2, encoder 3)."""
    autoencoder = plain(autoencoder)
    shared = {k: v for k, v in autoencoder.items() if k not in ("encoder_attention_levels", "decoder_attention_levels")}
    return ({**shared, "attention_levels": autoencoder["encoder_attention_levels"]},
            {**shared, "attention_levels": autoencoder["decoder_attention_levels"]})


def _construct(cls, what: str, **kwargs):
    try:
        return cls(**kwargs)
    except TypeError as error:  # an unknown option: a typo in the config is an error, not ignored
        raise ConfigError(f"architecture.{what}: {error}") from error


def build_encoder(autoencoder: Mapping[str, Any]) -> VideoEncoder:
    """An encoder (``E_h`` or ``E_l``) of ``architecture.autoencoder``."""
    return _construct(VideoEncoder, "autoencoder", **autoencoder_parts(autoencoder)[0])


def build_decoder(autoencoder: Mapping[str, Any]) -> VideoDecoder:
    return _construct(VideoDecoder, "autoencoder", **autoencoder_parts(autoencoder)[1])


def build_quantizer(autoencoder: Mapping[str, Any], quantizer: Mapping[str, Any]) -> SpatioTemporalQuantizer:
    return _construct(SpatioTemporalQuantizer, "quantizer", emb_dim=int(plain(autoencoder)["emb_dim"]), **plain(quantizer))


def build_lookup_transformer(autoencoder: Mapping[str, Any], quantizer: Mapping[str, Any],
                             transformer: Mapping[str, Any]) -> LookupTransformer:
    options = {k: v for k, v in plain(transformer).items() if k != "motion_residual"}
    return _construct(LookupTransformer, "transformer", codebook_size=int(plain(quantizer)["codebook_size"]),
                      in_dim=int(plain(autoencoder)["emb_dim"]), **options)


def minmax_stretch(video: torch.Tensor) -> torch.Tensor:
    """The official inference's output stretch: ``(x − min) / (max − min)`` per clip.

    ``video`` ``(B, T, C, H, W)``; min and max are taken over each clip's whole ``T·C·H·W``
    (``scripts/infer_bfvr.py`` ``transform_tensor_to_imgs`` does it on its one 24-frame clip
    before writing uint8). A constant clip (max = min, where the official code divides 0 by
    0 and casts NaN to uint8) is returned unchanged: there is no range to stretch; the
    denominator is clamped away from 0 so no division by zero is ever evaluated.
    """
    flat = video.flatten(1)
    low = flat.min(dim=1).values.view(-1, *([1] * (video.dim() - 1)))
    span = flat.max(dim=1).values.view(-1, *([1] * (video.dim() - 1))) - low
    stretched = (video - low) / span.clamp_min(torch.finfo(video.dtype).tiny)
    return torch.where(span > 0, stretched, video)


# ---------------------------------------------------------------------- the restorer


class BFVRSTCRestorer(NetworkRestorer):
    """BFVR-STC inference: LQ encoder, quantizer (codebooks + temporal attention), lookup
    transformers and decoder, injected. ``window``/``overlap``: frames per pass and blended
    frames; ``bf16``: autocast on CUDA; ``minmax_stretch``: the official output stretch
    (compat); ``motion_residual``: ``corrected`` or ``official`` (the released stage-II
    code's scrambled residual, which the release was trained with); ``architecture``: the
    options the networks were built from (recorded in exports)."""

    def __init__(self, lq_encoder: VideoEncoder, quantizer: SpatioTemporalQuantizer, decoder: VideoDecoder,
                 spatial_transformer: LookupTransformer, temporal_transformer: LookupTransformer, *, window: int = 24,
                 overlap: int = 8, bf16: bool = False, minmax_stretch: bool = False, motion_residual: str = "corrected",
                 name: str = "bfvr_stc", architecture: Mapping | None = None) -> None:
        super().__init__()
        if motion_residual not in MOTION_RESIDUAL_MODES:
            raise ConfigError(f"architecture.transformer.motion_residual={motion_residual!r}: "
                              f"one of {', '.join(MOTION_RESIDUAL_MODES)}")
        self.name = name
        self.lq_encoder, self.quantizer, self.decoder = lq_encoder, quantizer, decoder
        self.spatial_transformer, self.temporal_transformer = spatial_transformer, temporal_transformer
        self.restore_settings = {"window": int(window), "overlap": int(overlap), "bf16": bool(bf16),
                                 "minmax_stretch": bool(minmax_stretch)}
        self.official_motion_residual = motion_residual == "official"
        self.architecture = dict(plain(architecture) or {})
        self.spatial_factor = 2 ** (len(lq_encoder.levels) - 1)
        self.temporal_factor = 2 ** sum(isinstance(level.resample, Downsample3D) for level in lq_encoder.levels)
        self.size_multiple = self.spatial_factor

    def export_config(self) -> dict[str, Any]:
        return {"method": "bfvr_stc", "architecture": self.architecture}

    def temporal_query(self, latent: torch.Tensor) -> torch.Tensor:
        return self.quantizer.temporal_query(latent, official_stage2_residual=self.official_motion_residual)

    def code_logits(self, lq_video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, 3, T, H, W)`` LQ → LQ latent ``(B, D, t, h, w)``, spatial and temporal logits ``(B, t, h, w, K)``."""
        latent = self.lq_encoder(lq_video)
        return latent, self.spatial_transformer(latent), self.temporal_transformer(self.temporal_query(latent))

    def restore_clip(self, lq_video: torch.Tensor) -> torch.Tensor:
        """One window: ``(B, 3, T, H, W)`` LQ (T a multiple of 2, H and W of 8) → ``(B, 3, T, H, W)``."""
        _, spatial_logits, temporal_logits = self.code_logits(lq_video)
        latent = self.quantizer.lookup(spatial_logits.argmax(dim=-1), temporal_logits.argmax(dim=-1))
        return self.decoder(latent.to(lq_video.dtype))

    def restore(self, lq: torch.Tensor, *, task: str = "bfr", reference: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, out_size: tuple[int, int] | None = None,
                clip_ids: list[str] | None = None) -> torch.Tensor:
        """``(B, T, 3, h, w)`` in [0, 1] → ``(B, T, 3, H, W)`` in [0, 1].

        The network works at the output resolution (its LQ input is the degraded clip resized
        back up), so a smaller input is first resized bicubically to ``out_size``. Sizes are
        reflect-padded to multiples of 8 and cropped back; frames go through overlapping
        windows of ``restore.window`` (default 24, the training length) blended linearly.
        ``restore.minmax_stretch`` (compat, default off): stretch each restored clip to
        [0, 1] as the official inference script does (:func:`minmax_stretch`).
        """
        if task not in SUPPORTED_TASKS:
            raise ConfigError(f"BFVR-STC restores tasks {', '.join(SUPPORTED_TASKS)}, not {task!r}")
        if out_size is not None and tuple(lq.shape[-2:]) != tuple(out_size):
            lq = resize_video(lq, tuple(out_size), mode="bicubic")
        padded, size = pad_to_multiple(lq, self.spatial_factor)
        reference_param = self.decoder.conv_out.weight
        video = padded.transpose(1, 2).to(reference_param.device, reference_param.dtype)
        use_bf16 = self.restore_settings["bf16"] and video.device.type == "cuda"
        precision = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        with torch.no_grad(), precision:
            out = restore_in_windows(video, self.restore_clip, self.restore_settings["window"],
                                     self.restore_settings["overlap"], self.temporal_factor)
        out = crop_to(out.float().transpose(1, 2), size)
        if self.restore_settings["minmax_stretch"]:
            # after cropping: the reflect padding is not part of the clip whose range is stretched
            out = minmax_stretch(out)
        return out.clamp(0.0, 1.0)


def build_restorer(architecture: Mapping, restore: Mapping | None = None, name: str = "bfvr_stc") -> BFVRSTCRestorer:
    """A restorer of ``architecture`` (``autoencoder``, ``quantizer``, ``transformer``) with
    freshly initialised networks, on the current default device (``torch.device('meta')`` for
    shapes only). ``restore``: ``window``, ``overlap``, ``bf16``, ``minmax_stretch``."""
    architecture = plain(architecture)
    unknown = sorted(set(architecture) - {"autoencoder", "quantizer", "transformer"})
    if unknown:
        raise ConfigError(f"architecture: unknown group(s) {unknown}; known: autoencoder, quantizer, transformer")
    autoencoder, quantizer, transformer = architecture["autoencoder"], architecture["quantizer"], architecture["transformer"]
    return BFVRSTCRestorer(
        lq_encoder=build_encoder(autoencoder), quantizer=build_quantizer(autoencoder, quantizer),
        decoder=build_decoder(autoencoder),
        spatial_transformer=build_lookup_transformer(autoencoder, quantizer, transformer),
        temporal_transformer=build_lookup_transformer(autoencoder, quantizer, transformer),
        motion_residual=transformer.get("motion_residual", "corrected"), name=name, architecture=architecture,
        **dict(plain(restore) or {}))


# ---------------------------------------------------------------------- loading


def read_restorer_weights(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """``(state dict, is the official release layout)`` of a weights file (memory-mapped)."""
    from fvr_bench.methods.bfvr_stc.official import official_state

    raw = read_file(path)
    if "params_ema" in raw or "params" in raw:
        return official_state(raw, path), True
    return state_of(raw, str(path)), False


def inference_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The restorer's entries of a state dict: a training module's ``restorer.*`` (prefix
    dropped), or the top-level parts of an export / of the former one-module checkpoints;
    training-only entries (``hq_encoder``, discriminator, LPIPS) are left out."""
    if any(key.startswith("restorer.") for key in state):
        return {key[len("restorer."):]: value for key, value in state.items() if key.startswith("restorer.")}
    return {key: value for key, value in state.items() if key.split(".")[0] in PARTS}


def check_export_config(path: Path, architecture: Mapping) -> None:
    """An export's ``restorer.json`` must describe the configured architecture."""
    config_file = path.with_name(EXPORT_CONFIG)
    if path.suffix != ".safetensors" or not config_file.is_file():
        return
    recorded = json.loads(config_file.read_text()).get("architecture") or {}
    for group in sorted(set(recorded) | set(architecture)):
        for key in sorted(set(recorded.get(group) or {}) | set(architecture.get(group) or {})):
            mine, theirs = (architecture.get(group) or {}).get(key), (recorded.get(group) or {}).get(key)
            if mine != theirs and key != "motion_residual":
                raise ConfigError(f"{path}: exported with architecture.{group}.{key}={theirs!r} ({config_file}); this "
                                  f"config has {mine!r} — use the config the weights were trained with")


def load_restorer(architecture: Mapping, restore: Mapping | None = None, checkpoint: str | Path | None = None,
                  allow_random_weights: bool = False, name: str = "bfvr_stc",
                  dtype: str = "float32") -> BFVRSTCRestorer:
    """The BFVR-STC restorer in eval mode (the ``run`` entry point).

    ``checkpoint``: an export (``restorer.safetensors``), a Lightning checkpoint of stage
    2a/2b/deflicker (EMA weights preferred), a plain state dict, or the official release
    ``ckpt-bfvr.pth`` (recognised by its ``params_ema``/``params`` entry and mapped onto this
    implementation). None: the official release from the weights registry
    (``bfvr_stc_official``). Nothing found → :class:`WeightsMissingError` before any network
    is built, unless ``allow_random_weights`` (tests and smoke runs; a warning says the output
    is meaningless). The networks are built on the meta device and take the file's tensors
    (memory-mapped) cast once to ``dtype``.
    """
    architecture = plain(architecture)
    target_dtype = parse_dtype(dtype, "method.restorer.dtype")
    path: Path | None = Path(checkpoint).expanduser() if checkpoint else None
    if path is None:
        found = weights.find("bfvr_stc_official")
        if found is None and not allow_random_weights:
            raise WeightsMissingError(
                "BFVR-STC needs trained weights: set method.checkpoint=<a restorer.safetensors or a stage "
                "2a/2b/deflicker checkpoint of `python -m fvr_bench train method=bfvr_stc`>, or provide the official "
                "release.\n" + weights.missing_message("bfvr_stc_official"))
        path = found
    elif not path.is_file():
        raise WeightsMissingError(f"BFVR-STC checkpoint not found: {path} (method.checkpoint)")

    if path is None:
        log.warning("BFVR-STC restorer with RANDOM weights (allow_random_weights=true, no checkpoint): "
                    "outputs are meaningless — for tests and smoke runs only")
        return build_restorer(architecture, restore, name).to(target_dtype).eval()

    state, official = read_restorer_weights(path)
    if official:
        architecture = {**architecture, "transformer": {**architecture["transformer"], "motion_residual": "official"}}
    else:
        check_export_config(path, architecture)
    with torch.device("meta"):
        restorer = build_restorer(architecture, restore, name)
    if official:
        from fvr_bench.methods.bfvr_stc.official import from_official

        state, ignored = from_official(state, restorer)
        log.info("official BFVR-STC weights %s mapped (unused official entries: %d); the temporal transformer gets the "
                 "official code's motion residual it was trained with", path, len(ignored))
    else:
        state = inference_state(state)
        absent = sorted({key.split(".")[0] for key in restorer.state_dict()} - {key.split(".")[0] for key in state})
        if absent:
            hint = (" — a stage-1 checkpoint has no LQ encoder or lookup transformers; use a stage 2a/2b/deflicker one"
                    if {"spatial_transformer", "temporal_transformer", "lq_encoder"} & set(absent) else "")
            raise ConfigError(f"{path}: lacks weights of {', '.join(absent)}{hint}")
    load_state(restorer, state, str(path), dtype=target_dtype, assign=True)
    return restorer.eval()

