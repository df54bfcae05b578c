"""The VividFace restorer: one-step flow restoration on Wan2.1, in windows.

    z_l = E(x_l)                        LQ frames (bicubic-resized to the output size) → normalised latents
    ẑ_h = z_l + s · v_θ(z_l, t*, c)    t* = 400 of 1000, c = empty-prompt UMT5 embedding, s = velocity_scale
    x̂_h = D(ẑ_h)

:class:`VividFaceRestorer` is a plain ``nn.Module`` whose networks are injected: the Wan DiT
(``WanTransformer3DModel``, LoRA-wrapped when ``lora.rank`` is set), the Wan VAE
(``AutoencoderKLWan``) and the cached empty-prompt embedding. :func:`build_restorer` builds it
for training (float32); :func:`load_restorer` (the ``restorer:`` node of
``conf/method/vividface.yaml``, what ``run`` builds) builds it for inference, straight in the
target dtype: what a weights file provides is built on the meta device and loaded
memory-mapped with ``assign=True``; what the Wan folder provides comes from
``from_pretrained(torch_dtype=…, low_cpu_mem_usage=True)``. A paper-size DiT is never
materialised in float32. Weights files: an export (``restorer.safetensors`` + ``restorer.json``),
a Lightning checkpoint of stage 1 or 2 (``restorer.*`` keys, or the former one-module layout
``transformer.*`` / ``vae.*``), or a plain state dict of that layout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.base import NetworkRestorer, crop_to, pad_to_multiple, parse_dtype, plain, resize_video
from fvr_bench.methods.vividface.backbone import (
    BackboneConfig,
    EmptyPromptEmbedding,
    build_transformer,
    build_vae,
    cast_transformer,
    decode_latents,
    empty_transformer,
    empty_vae,
    encode_frames,
    locate_wan_dir,
    tiny_text_encoder,
    wan_text_encoder,
)
from fvr_bench.methods.vividface.windows import check_window, pad_to_vae_length, restore_in_windows
from fvr_bench.state_dicts import read_state

log = logging.getLogger(__name__)

PARTS = ("transformer", "vae")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # self- and cross-attention projections of every block
SPATIAL_MULTIPLE = 16  # VAE 8× × DiT patch 2
EXPORT_CONFIG = "restorer.json"



def _base_layer_key(key: str) -> str | None:
    """``…to_q.weight`` → ``…to_q.base_layer.weight``: where a plain weight lives once peft wraps the layer."""
    for suffix in (".weight", ".bias"):
        if key.endswith(suffix):
            return key[: -len(suffix)] + ".base_layer" + suffix
    return None


def lora_settings(lora: Mapping | None) -> dict[str, Any]:
    """``method.lora`` → ``{"rank": int | None, "alpha": float | None}`` (rank 0 = none)."""
    lora = dict(plain(lora) or {})
    unknown = sorted(set(lora) - {"rank", "alpha"})
    if unknown:
        raise ConfigError(f"vividface: unknown lora option(s) {unknown}; known: rank, alpha")
    rank = lora.get("rank")
    rank = None if rank in (None, 0) else int(rank)
    alpha = lora.get("alpha")
    return {"rank": rank, "alpha": None if rank is None or alpha is None else float(alpha)}


def add_lora(transformer, lora: Mapping) -> None:
    """peft LoRA adapters (alpha = rank unless given) on the DiT's attention projections."""
    from peft import LoraConfig

    rank, alpha = lora["rank"], lora["alpha"]
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=float(alpha) if alpha else float(rank), init_lora_weights=True,
                                       target_modules=list(LORA_TARGETS)))


def canonical_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The restorer's entries of a state dict: a training module's ``restorer.*`` (prefix
    dropped), else the keys as they are (an export, or the former one-module checkpoints)."""
    if any(key.startswith("restorer.") for key in state):
        return {key[len("restorer."):]: value for key, value in state.items() if key.startswith("restorer.")}
    return dict(state)


class VividFaceRestorer(NetworkRestorer):
    """VividFace inference on an injected ``transformer`` (Wan DiT), ``vae`` (Wan VAE) and
    ``text_embedding`` ``(1, L, D)`` (the empty prompt's, a non-persistent buffer).

    timestep:        t* on Wan's 0-1000 scale; velocity_scale: s in ẑ_h = z_l + s·v.
    window_frames, window_overlap: inference windows (1 + 4k frames) and their cross-fade.
    backbone:        the :class:`.backbone.BackboneConfig` mapping the networks were built from
                     (their constructor arguments are recorded in exports).
    lora:            ``{"rank", "alpha"}`` of the DiT's adapters (rank None: none).
    vae_from_wan:    the VAE is the Wan folder's (pretrained, never trained or saved here).

    Tensor conventions: frames ``(B, T, 3, H, W)`` in [0, 1]; latents ``(B, 16, 1 + (T−1)/4, H/8, W/8)``
    normalised.
    """

    size_multiple = SPATIAL_MULTIPLE

    def __init__(self, transformer, vae, text_embedding: torch.Tensor, *, timestep: float = 400.0,
                 velocity_scale: float = 1.0, window_frames: int = 81, window_overlap: int = 16,
                 name: str = "vividface", backbone: Mapping | None = None, lora: Mapping | None = None,
                 vae_from_wan: bool = False, backbone_source: str = "") -> None:
        super().__init__()
        if not 0 < float(timestep) <= 1000:
            raise ConfigError(f"vividface: restore.timestep must be in (0, 1000], got {timestep}")
        check_window(int(window_frames), int(window_overlap))
        self.name = name
        self.transformer, self.vae = transformer, vae
        self.register_buffer("text_embedding", text_embedding.float(), persistent=False)
        self.timestep, self.velocity_scale = float(timestep), float(velocity_scale)
        self.window_frames, self.window_overlap = int(window_frames), int(window_overlap)
        self.backbone = dict(plain(backbone) or {})
        self.lora = lora_settings(lora)
        self.vae_from_wan = bool(vae_from_wan)
        self.backbone_source = backbone_source

    @property
    def lora_rank(self) -> int | None:
        return self.lora["rank"]

    def export_config(self) -> dict[str, Any]:
        """The architecture an export's weights belong to (checked when it is loaded)."""
        return {"method": "vividface",
                "backbone": {"transformer": self.backbone.get("transformer"), "vae": self.backbone.get("vae"),
                             "max_sequence_length": self.backbone.get("max_sequence_length")},
                "lora": dict(self.lora)}

    # ------------------------------------------------------------------ weights

    def weight_names(self, parts: Iterable[str] = PARTS) -> list[str]:
        """The parameters of ``parts`` a weights file holds: the VAE's, and the DiT's (only its
        LoRA adapters' with ``lora.rank``, the base coming from the Wan folder or the seed)."""
        names = []
        for name, _ in self.named_parameters():
            part = name.split(".")[0]
            if part not in parts:
                continue
            if part == "transformer" and self.lora_rank and ".lora_" not in name:
                continue
            names.append(name)
        return names

    def run_weight_names(self) -> list[str]:
        """What ``run`` needs from a weights file: the DiT (or LoRA) weights, and the VAE's unless
        it is the Wan folder's."""
        return self.weight_names(("transformer",) if self.vae_from_wan else PARTS)

    def load_weights(self, state: Mapping[str, torch.Tensor], source: str, required: Iterable[str] = (),
                     wan_vae_in_file: bool = False) -> list[str]:
        """Load restorer weights (keys ``transformer.*`` / ``vae.*``); returns the keys loaded.

        Keys of unwrapped layers are mapped onto peft's ``base_layer`` when the DiT has LoRA;
        each tensor is cast to the dtype of the tensor it replaces (``assign=True``: networks
        built on the meta device take the file's tensors). Unknown keys are an error (with a
        hint when they are LoRA weights and ``lora.rank`` is unset), and so are VAE weights
        when the VAE is the Wan folder's (unless ``wan_vae_in_file``: an export of this configuration,
        whose VAE is the folder's); every name of ``required`` must be present.
        """
        own = self.state_dict(keep_vars=True)
        mapped, unexpected = {}, []
        for key, value in state.items():
            target = key if key in own else _base_layer_key(key)
            if target in own:
                mapped[target] = value
            else:
                unexpected.append(key)
        if unexpected:
            hint = ""
            lora = [k for k in unexpected if ".lora_A." in k]
            if lora and not self.lora_rank:
                hint = f"; it holds LoRA weights of rank {state[lora[0]].shape[0]}: set method.lora.rank to it"
            raise ConfigError(f"{source}: {len(unexpected)} weight(s) this VividFace configuration does not have "
                              f"(e.g. {unexpected[:3]}){hint}")
        if self.vae_from_wan and not wan_vae_in_file and any(key.startswith("vae.") for key in mapped):
            raise ConfigError(f"{source}: holds VAE weights trained in this project (stage vae), but this configuration "
                              f"uses the pretrained Wan VAE; set method.backbone.vae to the VAE arguments it was trained with")
        missing = [name for name in required if name not in mapped]
        if missing:
            hint = ""
            if self.lora_rank and not any(".lora_" in k for k in mapped):
                hint = "; it has no LoRA weights: set method.lora.rank: null"
            elif mapped and all(key.startswith("vae.") for key in mapped):
                hint = "; it holds only a VAE (a stage-vae checkpoint): train stage 1 from it and use that checkpoint"
            elif any(name.startswith("vae.") for name in missing) and not any(key.startswith("vae.") for key in mapped):
                hint = "; it has no VAE weights, and this configuration's VAE is not the Wan folder's (backbone.vae is set)"
            raise ConfigError(f"{source}: {len(missing)} trained weight(s) missing (e.g. {missing[:3]}){hint}")
        if not any(key.startswith(PARTS) for key in mapped):
            raise ConfigError(f"{source}: holds no VividFace DiT or VAE weights")
        misfit = [key for key in mapped if tuple(mapped[key].shape) != tuple(own[key].shape)]
        if misfit:
            key = misfit[0]
            raise ConfigError(f"{source}: weights do not fit this configuration (lora.rank / backbone size?): {key} is "
                              f"{tuple(mapped[key].shape)} in the file, {tuple(own[key].shape)} here")
        cast = {key: value.to(own[key].dtype) if value.is_floating_point() else value for key, value in mapped.items()}
        self.load_state_dict(cast, strict=False, assign=True)
        return sorted(mapped)

    def for_inference(self, dtype: torch.dtype | str = torch.bfloat16, vae_dtype: torch.dtype | str = torch.bfloat16,
                      compile_transformer: bool = False) -> VividFaceRestorer:
        """Eval mode, no gradients, DiT in ``dtype`` (Wan's float32 islands kept), VAE in
        ``vae_dtype``; optionally ``torch.compile`` the DiT in place."""
        self.eval().requires_grad_(False)
        cast_transformer(self.transformer, parse_dtype(dtype, "method.restorer.dtype"))
        nn.Module.to(self.vae, parse_dtype(vae_dtype, "method.restorer.vae_dtype"))  # the VAE has no float32 islands
        if compile_transformer:
            self.transformer.compile()
        return self

    # ------------------------------------------------------------------ the one step

    def one_step(self, lq_latents: torch.Tensor) -> torch.Tensor:
        """``ẑ_h = z_l + s · v_θ(z_l, t*, c)``; latents ``(B, 16, t, h, w)`` → same shape, float32."""
        dtype = self.transformer.patch_embedding.weight.dtype
        batch = lq_latents.shape[0]
        timestep = torch.full((batch,), self.timestep, device=lq_latents.device, dtype=torch.float32)
        text = self.text_embedding.to(lq_latents.device, dtype).expand(batch, -1, -1)
        velocity = self.transformer(hidden_states=lq_latents.to(dtype), timestep=timestep,
                                    encoder_hidden_states=text, return_dict=False)[0]
        return lq_latents.float() + self.velocity_scale * velocity.float()

    @torch.no_grad()
    def restore_window(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, t, 3, H, W)`` in [0, 1], H and W multiples of 16 → restored, same shape."""
        length = frames.shape[1]
        latents = encode_frames(self.vae, pad_to_vae_length(frames))
        return decode_latents(self.vae, self.one_step(latents))[:, :length]

    @torch.no_grad()
    def restore(self, lq: torch.Tensor, *, task: str = "bfr", reference=None, mask=None, out_size=None,
                clip_ids=None) -> torch.Tensor:
        """LQ ``(B, T, 3, h, w)`` in [0, 1] → ``(B, T, 3, H, W)`` in [0, 1] (``out_size`` or the input size).

        Frames are bicubic-resized to the output size first (as the paper does), padded to a
        multiple of 16, restored in overlapping windows of ``window_frames`` and cropped back.
        """
        if task != "bfr":
            raise ConfigError(f"vividface restores blind face restoration (task 'bfr') only, not '{task}'")
        if lq.ndim != 5 or lq.shape[2] != 3:
            raise ValueError(f"vividface: expected LQ (B, T, 3, h, w), got {tuple(lq.shape)}")
        size = tuple(int(s) for s in out_size) if out_size is not None else tuple(lq.shape[-2:])
        frames = resize_video(lq.float().to(self.text_embedding.device), size, mode="bicubic")
        frames, original = pad_to_multiple(frames, self.size_multiple)
        restored = restore_in_windows(frames, self.restore_window, self.window_frames, self.window_overlap)
        return crop_to(restored, original).clamp(0.0, 1.0)


# ---------------------------------------------------------------------- building


def _backbone(backbone: Mapping | None, allow_random_weights: bool) -> BackboneConfig:
    config = BackboneConfig.from_mapping(plain(backbone))
    if config.random_parts and not allow_random_weights:
        raise ConfigError(
            f"vividface: backbone.{'/'.join(config.random_parts)} given as constructor arguments builds RANDOM "
            f"weights (tests and benchmarks only); set allow_random_weights: true, or null to load the Wan folder"
        )
    return config


def _text_embedding(config: BackboneConfig, wan_dir: Path | None, text_dim: int, seed: int) -> torch.Tensor:
    load_encoder = (lambda: tiny_text_encoder(config.text_encoder, seed)) if config.text_encoder is not None \
        else (lambda: wan_text_encoder(wan_dir))
    return EmptyPromptEmbedding(config.cache_path(), config.max_sequence_length, text_dim, load_encoder).get()


def _assemble(config: BackboneConfig, wan_dir: Path | None, transformer, vae, restore: Mapping | None,
              lora: dict, name: str, seed: int) -> VividFaceRestorer:
    text = _text_embedding(config, wan_dir, transformer.config.text_dim, seed)
    source = str(wan_dir) if wan_dir is not None else "random (constructor arguments)"
    return VividFaceRestorer(transformer, vae, text, name=name, backbone=config.__dict__, lora=lora,
                             vae_from_wan=config.vae is None, backbone_source=source, **dict(plain(restore) or {}))


def build_restorer(backbone: Mapping | None, restore: Mapping | None = None, lora: Mapping | None = None,
                   name: str = "vividface", allow_random_weights: bool = False, seed: int = 0) -> VividFaceRestorer:
    """The restorer to train, in float32: the DiT and VAE from the Wan folder (pretrained) or
    from ``backbone`` constructor arguments (seeded random weights, ``allow_random_weights``),
    LoRA adapters added when ``lora.rank`` is set. ``restore``: ``timestep``, ``velocity_scale``,
    ``window_frames``, ``window_overlap``."""
    config = _backbone(backbone, allow_random_weights)
    lora = lora_settings(lora)
    wan_dir = locate_wan_dir(config)  # before anything big is built: a missing folder stops here
    transformer = build_transformer(config, wan_dir, seed)
    vae = build_vae(config, wan_dir, seed)
    if lora["rank"] is not None:
        add_lora(transformer, lora)
    return _assemble(config, wan_dir, transformer, vae, restore, lora, name, seed)


def check_export_config(path: Path, config: BackboneConfig, lora: Mapping) -> bool:
    """An export's ``restorer.json`` must describe the configured networks; True for an export so checked."""
    config_file = path.with_name(EXPORT_CONFIG)
    if path.suffix != ".safetensors" or not config_file.is_file():
        return False
    recorded = json.loads(config_file.read_text())
    normal = lambda value: json.loads(json.dumps(value))
    mine = {"backbone.transformer": config.transformer, "backbone.vae": config.vae, "lora.rank": lora["rank"]}
    theirs = {"backbone.transformer": (recorded.get("backbone") or {}).get("transformer"),
              "backbone.vae": (recorded.get("backbone") or {}).get("vae"),
              "lora.rank": (recorded.get("lora") or {}).get("rank")}
    for key in mine:
        if normal(mine[key]) != normal(theirs[key]):
            raise ConfigError(f"{path}: exported with method.{key}={theirs[key]!r} ({config_file}); this config has "
                              f"{mine[key]!r} — use the config the weights were trained with")
    return True


def load_restorer(backbone: Mapping | None, restore: Mapping | None = None, lora: Mapping | None = None,
                  checkpoint: str | Path | None = None, name: str = "vividface", allow_random_weights: bool = False,
                  seed: int = 0, dtype: str = "bfloat16", vae_dtype: str = "bfloat16",
                  compile_transformer: bool = False) -> VividFaceRestorer:
    """The ``run`` entry point: the fine-tuned restorer in eval mode, DiT in ``dtype`` (Wan's
    float32 islands kept), VAE in ``vae_dtype``.

    Checks everything it will read — the checkpoint and the Wan folder — before building any
    network, and stops with one WeightsMissingError listing what is missing and where it goes.
    ``allow_random_weights: true`` (tests only) allows running without a checkpoint. A part
    the weights file holds is built on the meta device (constructor arguments or the folder's
    config) and takes the file's tensors, memory-mapped, cast once to its dtype; a part it
    does not hold comes from the Wan folder (``from_pretrained`` in the target dtype) or, built
    from constructor arguments, from the seed (random, tests).
    """
    problems = []
    path = Path(checkpoint).expanduser() if checkpoint else None
    if path is None:
        if not allow_random_weights:
            problems.append(
                "a fine-tuned VividFace checkpoint is required: method.checkpoint=<the restorer.safetensors (or "
                "checkpoints/last.ckpt) of `python -m fvr_bench train method=vividface stage=2`> "
                "(see methods/vividface/README.md)")
    elif not path.is_file():
        problems.append(f"method.checkpoint={checkpoint} does not exist")
    config = BackboneConfig.from_mapping(plain(backbone))
    wan_dir = None
    try:
        wan_dir = locate_wan_dir(config)
    except WeightsMissingError as error:
        problems.append(f"{error} (or set method.backbone.wan_dir=<folder>)")
    if problems:
        raise WeightsMissingError("vividface cannot run:\n- " + "\n- ".join(problems))
    config = _backbone(backbone, allow_random_weights)
    lora = lora_settings(lora)
    target, target_vae = parse_dtype(dtype, "method.restorer.dtype"), parse_dtype(vae_dtype, "method.restorer.vae_dtype")

    state: dict[str, torch.Tensor] = {}
    export = False
    if path is not None:
        export = check_export_config(path, config, lora)  # `export` of a Wan-VAE config: holds the folder's VAE
        state = canonical_state(read_state(path))
    file_dit = any(key.startswith("transformer.") and ".lora_" not in key for key in state)
    file_vae = any(key.startswith("vae.") for key in state)
    if file_dit:
        transformer = empty_transformer(config, wan_dir)
    else:  # Wan folder straight in the target dtype, or the seeded random base of a tiny config
        transformer = build_transformer(config, wan_dir, seed, target if config.transformer is None else torch.float32)
    if file_vae and (config.vae is not None or export):
        vae = empty_vae(config, wan_dir)
    else:
        vae = build_vae(config, wan_dir, seed, target_vae if config.vae is None else torch.float32)
    if lora["rank"] is not None:
        add_lora(transformer, lora)
    restorer = _assemble(config, wan_dir, transformer, vae, restore, lora, name, seed)
    # casting first is free on the meta device; the file's tensors are then cast once, to these dtypes
    restorer.for_inference(target, target_vae)
    if path is not None:
        restorer.load_weights(state, str(path), required=restorer.run_weight_names(), wan_vae_in_file=export)
        on_meta = [key for key, value in restorer.state_dict(keep_vars=True).items() if value.is_meta]
        if on_meta:
            raise ConfigError(f"{path}: {len(on_meta)} weight(s) of the networks it provides missing (e.g. {on_meta[:3]})")
    else:
        log.warning("vividface: no checkpoint — RANDOM / not fine-tuned weights (allow_random_weights), tests only")
    return restorer.for_inference(target, target_vae, compile_transformer)


__all__ = ["VividFaceRestorer", "build_restorer", "load_restorer"]
