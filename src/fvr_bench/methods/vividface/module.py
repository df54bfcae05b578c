"""VividFace as a Lightning module: one-step flow restoration on Wan2.1, two training stages.

Restoration (one DiT evaluation per window):

    z_l = E(x_l)                        LQ frames (bicubic-resized to the output size) → normalised latents
    ẑ_h = z_l + s · v_θ(z_l, t*, c)    t* = 400 of 1000, c = empty-prompt UMT5 embedding, s = velocity_scale
    x̂_h = D(ẑ_h)

Training: stage "1" regresses ẑ_h on the GT latent z_h with the face-focused switch loss
(:mod:`.losses`, latent face mask of :func:`.masks.align_mask_to_latents`); stage "2"
decodes ẑ_h through the frozen VAE decoder and applies the switch loss on pixels (pixel face
mask) + λ·DISTS. The whole DiT is trained, or LoRA adapters on its attention projections
(``lora_rank``). Latents and masks can be pre-extracted to disk (:meth:`pre_extract`).

Stage "vae" is not in the paper (which starts from the pretrained Wan VAE): it trains a VAE
built from constructor arguments as an autoencoder on GT windows (L1 + small KL), for runs
without the Wan weights; stage 1 then starts from it (``init_from: vae``) and keeps it frozen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from fvr_bench import weights
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.base import (
    TrainingModule,
    crop_to,
    pad_to_multiple,
    resize_video,
)
from fvr_bench.methods.vividface.backbone import (
    WAN_ENTRY,
    BackboneConfig,
    EmptyPromptEmbedding,
    build_transformer,
    build_vae,
    cast_transformer,
    decode_latents,
    encode_frames,
    locate_wan_dir,
    parse_dtype,
    tiny_text_encoder,
    wan_text_encoder,
)
from fvr_bench.methods.vividface.latents import LatentCache
from fvr_bench.state_dicts import read_state
from fvr_bench.methods.vividface.losses import MaskSwitch, dists_loss, face_focused_mse
from fvr_bench.methods.vividface.masks import (
    FACE_CLASSES,
    PARSERS,
    align_mask_to_latents,
    build_parser,
    face_masks,
)
from fvr_bench.methods.vividface.windows import (
    check_window,
    latent_frame_count,
    pad_to_vae_length,
    restore_in_windows,
)

log = logging.getLogger(__name__)

STAGES = ("vae", "1", "2")
VAE_STAGE = "vae"  # autoencoder pre-training of a constructor-built VAE (not in the paper)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # self- and cross-attention projections of every block
SPATIAL_MULTIPLE = 16  # VAE 8× × DiT patch 2


def _plain(value):
    """DictConfig / ListConfig (what Hydra passes with ``_recursive_=False``) → plain containers."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _base_layer_key(key: str) -> str | None:
    """``…to_q.weight`` → ``…to_q.base_layer.weight``: where a plain weight lives once peft wraps the layer."""
    for suffix in (".weight", ".bias"):
        if key.endswith(suffix):
            return key[: -len(suffix)] + ".base_layer" + suffix
    return None


def state_fingerprint(module: torch.nn.Module) -> str:
    """SHA-1 of a module's tensors (names, dtypes, shapes and values): tells two sets of weights
    of the same architecture apart, e.g. a random VAE from the one trained in stage ``vae``."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, without a copy
    return digest.hexdigest()


class VividFaceModule(TrainingModule):
    """VividFace on ``WanTransformer3DModel`` + ``AutoencoderKLWan``.

    Tensor conventions: frames ``(B, T, 3, H, W)`` in [0, 1]; latents ``(B, 16, 1 + (T−1)/4, H/8, W/8)``
    normalised. Training clips need T = 1 + 4k and H, W multiples of 16.

    stage:             "vae" (VAE pre-training, constructor-built VAEs only: L1 + ``kl_weight``·KL),
                       "1" (latent loss), "2" (pixel + DISTS loss) or None (inference only).
    backbone:          :class:`.backbone.BackboneConfig` mapping (Wan folder, or tiny constructor arguments).
    timestep:          t* on Wan's 0-1000 scale; velocity_scale: s in ẑ_h = z_l + s·v.
    mask_probability:  p of the face-focused switch; dists_weight: λ of stage 2's DISTS term;
    kl_weight:         weight of the KL term of stage "vae" (per-sample sums, as LDM-style VAEs weigh it);
                       pretrained_losses: DISTS with released weights (False: random, tests).
    mask_parser, bisenet_path, face_classes, parser_input_size: the face parser (:mod:`.masks`).
    lora_rank, lora_alpha: LoRA on the DiT's attention projections instead of full fine-tuning.
    gradient_checkpointing: diffusers' block checkpointing of the DiT while training.
    lr, weight_decay:  AdamW (the train command's ``stage_options.lr`` wins over ``lr``).
    window_frames, window_overlap: inference windows (1 + 4k frames) and their cross-fade.
    inference_dtype, vae_dtype, compile_transformer: inference precision and ``torch.compile``.
    latent_cache_dir, latent_cache_dtype: where pre-extracted inputs are read (:mod:`.latents`).
    allow_random_weights: permit random backbones / no checkpoint (tests and benchmarks only).
    seed:              random initialisation of test-size networks and the switch's generator.
    """

    name = "vividface"
    size_multiple = SPATIAL_MULTIPLE

    @property
    def restorer(self) -> VividFaceModule:
        """Not yet split (see methods/vividface/README.md): the module restores itself."""
        return self

    def prepare(self, dataloader, cache_dir) -> None:
        """The train command's hook before fitting (``pre_extract: true``): :meth:`pre_extract`."""
        self.pre_extract(dataloader, cache_dir)

    def __init__(
        self,
        stage: str | int | None = None,
        backbone: Mapping | None = None,
        timestep: float = 400.0,
        velocity_scale: float = 1.0,
        mask_probability: float = 0.5,
        dists_weight: float = 0.1,
        kl_weight: float = 1e-6,
        pretrained_losses: bool = True,
        mask_parser: str = "auto",
        bisenet_path: str | None = None,
        face_classes: Sequence[int] = FACE_CLASSES,
        parser_input_size: int = 512,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        gradient_checkpointing: bool = True,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        window_frames: int = 81,
        window_overlap: int = 16,
        inference_dtype: str = "bfloat16",
        vae_dtype: str = "bfloat16",
        compile_transformer: bool = False,
        latent_cache_dir: str | None = None,
        latent_cache_dtype: str = "float16",
        allow_random_weights: bool = False,
        seed: int = 0,
        stage_options: Mapping | None = None,
    ) -> None:
        super().__init__()
        backbone = _plain(backbone)
        face_classes = list(_plain(face_classes))
        stage_options = _plain(stage_options)
        stage = None if stage is None else str(stage)
        self.save_hyperparameters()
        # the checkpoint holds only the weights not read from the Wan folder (see on_save_checkpoint);
        # Lightning must not demand the rest back, on_load_checkpoint checks those it holds
        self.strict_loading = False
        if stage not in (None, *STAGES):
            raise ConfigError(f"vividface: stage must be one of {STAGES} (or None for inference), got '{stage}'")
        if mask_parser not in PARSERS:
            raise ConfigError(f"vividface: mask_parser must be one of {PARSERS}, got '{mask_parser}'")
        if int(parser_input_size) < 32:
            raise ConfigError(f"vividface: parser_input_size must be at least 32 (BiSeNet downsamples 32×), got {parser_input_size}")
        if not 0 < float(timestep) <= 1000:
            raise ConfigError(f"vividface: timestep must be in (0, 1000], got {timestep}")
        check_window(int(window_frames), int(window_overlap))
        self.stage = stage
        self.timestep = float(timestep)
        self.velocity_scale = float(velocity_scale)
        self.dists_weight = float(dists_weight)
        self.kl_weight = float(kl_weight)
        if self.kl_weight < 0:
            raise ConfigError(f"vividface: kl_weight must be >= 0, got {kl_weight}")
        # the train command passes the stage's mapping; its lr wins over the module default
        self.lr = float((stage_options or {}).get("lr") or lr)
        self.lora_rank = None if lora_rank in (None, 0) else int(lora_rank)
        self.window_frames, self.window_overlap = int(window_frames), int(window_overlap)
        self.inference_dtype = parse_dtype(inference_dtype, "inference_dtype")
        self.vae_dtype = parse_dtype(vae_dtype, "vae_dtype")
        self.cache_dtype = parse_dtype(latent_cache_dtype, "latent_cache_dtype")
        self.mask_switch = MaskSwitch(mask_probability, seed)

        config = BackboneConfig.from_mapping(backbone)
        if config.random_parts and not allow_random_weights:
            raise ConfigError(
                f"vividface: backbone.{'/'.join(config.random_parts)} given as constructor arguments builds RANDOM "
                f"weights (tests and benchmarks only); set allow_random_weights: true, or null to load the Wan folder"
            )
        # the VAE is trained here (stage "vae") only when it is built from constructor arguments;
        # the Wan VAE is pretrained and stays as released
        self.vae_from_wan = config.vae is None
        if stage == VAE_STAGE and self.vae_from_wan:
            raise ConfigError(
                "vividface stage vae trains a VAE built from constructor arguments (runs without the Wan weights); "
                "this configuration loads the pretrained Wan VAE (method.module.backbone.vae: null) — train stage 1 directly"
            )
        wan_dir = locate_wan_dir(config)  # before anything big is built: a missing folder stops here
        self.backbone_source = str(wan_dir) if wan_dir is not None else "random (constructor arguments)"
        self.transformer = build_transformer(config, wan_dir, seed)
        self.vae = build_vae(config, wan_dir, seed)
        load_encoder = (lambda: tiny_text_encoder(config.text_encoder, seed)) if config.text_encoder is not None \
            else (lambda: wan_text_encoder(wan_dir))
        text = EmptyPromptEmbedding(config.cache_path(), config.max_sequence_length, self.transformer.config.text_dim,
                                    load_encoder).get()
        self.register_buffer("text_embedding", text, persistent=False)

        trains_dit = stage in ("1", "2")
        self.transformer.requires_grad_(trains_dit and self.lora_rank is None)
        if self.lora_rank is not None:
            self._add_lora(self.lora_rank, lora_alpha)
        if trains_dit and gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        if stage == VAE_STAGE:
            self.vae.train().requires_grad_(True)

        self._parser_settings = {"kind": mask_parser, "bisenet_path": bisenet_path, "face_classes": face_classes,
                                     "input_size": parser_input_size, "allow_random_weights": allow_random_weights}
        self._parser = None
        self._loss_networks: dict[str, torch.nn.Module] = {}  # not submodules: never in checkpoints
        # opened on first use, after init_from_previous_stage may have replaced the VAE it is keyed on
        self._latent_cache_dir = latent_cache_dir if stage in ("1", "2") else None
        self._latent_cache: LatentCache | None = None

    # ------------------------------------------------------------------ construction helpers

    def _add_lora(self, rank: int, alpha: float | None) -> None:
        from peft import LoraConfig

        config = LoraConfig(r=rank, lora_alpha=float(alpha) if alpha else float(rank), init_lora_weights=True,
                            target_modules=list(LORA_TARGETS))
        self.transformer.add_adapter(config)
        for name, parameter in self.transformer.named_parameters():
            parameter.requires_grad_(self.stage in ("1", "2") and ".lora_" in name)

    @property
    def parser(self):
        """The face parser, built on first use (its name goes to the logs, cache and checkpoint)."""
        if self._parser is None:
            self._parser = build_parser(**self._parser_settings)
            log.info("vividface: face masks from the %s parser", self._parser.name)
        return self._parser

    @property
    def latent_cache(self) -> LatentCache | None:
        """The pre-extracted inputs this stage reads (``latent_cache_dir`` or :meth:`pre_extract`'s), or None."""
        if self._latent_cache is None and self._latent_cache_dir:
            self._latent_cache = self._open_cache(self._latent_cache_dir)
        return self._latent_cache

    def _open_cache(self, cache_dir: str | os.PathLike) -> LatentCache:
        vae_config = {k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")}
        meta = {
            "format": 2,
            "stage": self.stage,
            # not the folder's path: moving the Wan folder must not invalidate the cache
            "vae": "pretrained (Wan folder)" if self.vae_from_wan else "constructor arguments (random or stage vae)",
            "vae_config_sha1": hashlib.sha1(json.dumps(vae_config, sort_keys=True, default=str).encode()).hexdigest(),
            # the weights themselves: a VAE trained further (or another seed) must not reuse latents
            "vae_weights_sha1": state_fingerprint(self.vae),
            "mask_parser": self.parser.name,
            "face_classes": self._parser_settings["face_classes"],
            "storage_dtype": str(self.cache_dtype).removeprefix("torch."),
        }
        return LatentCache(Path(cache_dir) / f"stage{self.stage}", meta, self.cache_dtype)

    def trained_parameter_names(self) -> list[str]:
        """What a checkpoint of this configuration holds: everything not read from the Wan folder.

        Stage "vae": the VAE's weights. Otherwise every DiT weight (or only the LoRA weights),
        plus the VAE's when it was built from constructor arguments (trained in stage "vae", or
        random), so that ``run`` restores the VAE the DiT was trained with.
        """
        names = [name for name, _ in self.named_parameters()]
        vae = [name for name in names if name.startswith("vae.")]
        if self.stage == VAE_STAGE:
            return vae
        dit = [name for name in names if name.startswith("transformer.")]
        dit = [name for name in dit if ".lora_" in name] if self.lora_rank else dit
        return dit + ([] if self.vae_from_wan else vae)

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

    # ------------------------------------------------------------------ inference

    def prepare_for_inference(self) -> VividFaceModule:
        """Eval mode, no gradients, DiT in ``inference_dtype`` (Wan's float32 islands kept),
        VAE in ``vae_dtype``; optionally ``torch.compile`` the DiT in place."""
        self.eval().requires_grad_(False)
        cast_transformer(self.transformer, self.inference_dtype)
        self.vae.to(self.vae_dtype)
        if self.hparams.compile_transformer:
            self.transformer.compile()
        return self

    @torch.no_grad()
    def restore_window(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, t, 3, H, W)`` in [0, 1], H and W multiples of 16 → restored, same shape."""
        length = frames.shape[1]
        latents = encode_frames(self.vae, pad_to_vae_length(frames))
        return decode_latents(self.vae, self.one_step(latents))[:, :length]

    @torch.no_grad()
    def restore(self, lq: torch.Tensor, *, task: str = "bfr", reference=None, mask=None, out_size=None, clip_ids=None) -> torch.Tensor:
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

    # ------------------------------------------------------------------ training inputs

    def _check_training_clip(self, gt: torch.Tensor) -> None:
        t, h, w = gt.shape[1], gt.shape[-2], gt.shape[-1]
        if (t - 1) % 4 or h % SPATIAL_MULTIPLE or w % SPATIAL_MULTIPLE:
            raise ConfigError(
                f"vividface stage {self.stage}: training clips need 1 + 4k frames and sides that are multiples of "
                f"{SPATIAL_MULTIPLE} (set train.stages.{self.stage}.frames / size), got {t} frames of {h}×{w}"
            )

    @torch.no_grad()
    def extract(self, gt: torch.Tensor, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """What stage training reads, from GT ``(B, T, 3, S, S)`` and LQ ``(B, T, 3, s, s)`` in [0, 1].

        Stage 1: ``lq_latent``, ``gt_latent`` ``(B, 16, T', S/8, S/8)`` and ``mask`` (latent face
        mask, one channel ``(B, 1, T', S/8, S/8)``). Stage 2: ``lq_latent`` and ``mask`` (pixel face
        mask ``(B, T, 1, S, S)`` bool). LQ is bicubic-resized to the GT size first.
        """
        self._check_training_clip(gt)
        lq = resize_video(lq.float(), tuple(gt.shape[-2:]), mode="bicubic")
        pixel_mask = face_masks(self.parser, gt)
        out = {"lq_latent": encode_frames(self.vae, lq)}
        if self.stage == "1":
            out["gt_latent"] = encode_frames(self.vae, gt.float())
            out["mask"] = align_mask_to_latents(pixel_mask, channels=1)
        else:
            out["mask"] = pixel_mask
        return out

    def training_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """Cached entries for the batch's keys where present, the rest extracted now."""
        gt, lq = batch["gt"], batch["lq"]
        self._check_training_clip(gt)
        keys = list(batch.get("key") or [])
        entries = [self.latent_cache.load(k) for k in keys] if self.latent_cache is not None and keys else [None] * gt.shape[0]
        missing = [i for i, entry in enumerate(entries) if entry is None]
        if missing:
            index = torch.tensor(missing, device=gt.device)
            fresh = self.extract(gt.index_select(0, index), lq.index_select(0, index))
            for j, i in enumerate(missing):
                entries[i] = {name: tensor[j] for name, tensor in fresh.items()}
        inputs = {name: torch.stack([entry[name] for entry in entries]).to(gt.device) for name in entries[0]}
        expected = (self.vae.config.z_dim, latent_frame_count(gt.shape[1]), gt.shape[-2] // 8, gt.shape[-1] // 8)
        if tuple(inputs["lq_latent"].shape[1:]) != expected:
            where = f"latent cache {self.latent_cache.root}" if self.latent_cache is not None else "extraction"
            raise ConfigError(f"vividface: {where} gives latents {tuple(inputs['lq_latent'].shape[1:])}, this batch needs "
                              f"{expected}; the cache was made for other frames/size — use another cache_dir")
        return inputs

    @torch.no_grad()
    def pre_extract(self, dataloader, cache_dir: str | os.PathLike, device: str | torch.device | None = None) -> int:
        """Encode every sample of ``dataloader`` once and store it under ``cache_dir``.

        Resumable (keys already on disk are skipped; files are written atomically). Under DDP
        each rank takes the keys whose hash falls in its share (``RANK``/``WORLD_SIZE``).
        Only the VAE and the parser run, on ``device`` (default: this rank's GPU, else CPU).
        Returns the number of samples extracted by this call.
        """
        if self.stage not in ("1", "2"):
            raise ConfigError(f"vividface: pre_extract needs stage 1 or 2 (stage {self.stage} reads frames, "
                              f"set train.stages.{self.stage}.pre_extract: false)")
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
        cache = self._open_cache(cache_dir)
        home = next(self.vae.parameters()).device
        self.vae.to(device)
        extracted = 0
        try:
            for batch in dataloader:
                keys = list(batch["key"])
                todo = [i for i, key in enumerate(keys)
                        if int(hashlib.sha1(key.encode()).hexdigest(), 16) % world == rank and not cache.has(key)]
                if not todo:
                    continue
                index = torch.tensor(todo)
                fresh = self.extract(batch["gt"].index_select(0, index).to(device), batch["lq"].index_select(0, index).to(device))
                for j, i in enumerate(todo):
                    cache.save(keys[i], {name: tensor[j] for name, tensor in fresh.items()})
                extracted += len(todo)
        finally:
            self.vae.to(home)
        self._latent_cache, self._latent_cache_dir = cache, cache_dir
        log.info("vividface: %d samples pre-extracted to %s (mask parser: %s)", extracted, cache.root, self.parser.name)
        return extracted

    # ------------------------------------------------------------------ training

    def _dists(self, device: torch.device) -> torch.nn.Module:
        net = self._loss_networks.get("dists")
        if net is None:
            from fvr_bench.metrics.perceptual import build_dists_net

            if self.hparams.pretrained_losses:
                alpha_beta = torch.load(weights.locate("dists_alpha_beta"), map_location="cpu", weights_only=True)
                backbone = torch.load(weights.locate("torchvision_vgg16"), map_location="cpu", weights_only=True)
            else:
                log.warning("vividface: DISTS loss with RANDOM weights (pretrained_losses: false) — tests only")
                alpha_beta = backbone = None
            net = self._loss_networks["dists"] = build_dists_net(alpha_beta, backbone)
        return net.to(device)

    def vae_reconstruction_loss(self, gt: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage "vae": GT ``(B, 1 + 4k, 3, S, S)`` in [0, 1] → (loss, parts).

        The VAE sees ``(B, 3, T, S, S)`` in [−1, 1]; a posterior **sample** is decoded (the
        reparameterised training of a VAE). Loss = mean |x − x̂| (in [−1, 1]) + ``kl_weight`` ·
        KL(q(z|x) ‖ N(0, I)) summed over the latent and divided by the pixel count: the per-sample
        sums of LDM-style VAE training, both divided by the same number.
        """
        self._check_training_clip(gt)
        video = gt.float().permute(0, 2, 1, 3, 4) * 2.0 - 1.0
        posterior = self.vae.encode(video).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        l1 = (reconstruction - video).abs().mean()
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar)
        kl_per_pixel = kl.flatten(1).sum(1).mean() / video[0].numel()
        loss = l1 + self.kl_weight * kl_per_pixel
        return loss, {"l1": l1.detach(), "kl": kl_per_pixel.detach()}

    def compute_loss(self, batch: dict, use_mask: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's loss on a batch with the switch set to ``use_mask`` (ignored by stage "vae");
        returns (loss, parts)."""
        if self.stage == VAE_STAGE:
            return self.vae_reconstruction_loss(batch["gt"])
        inputs = self.training_inputs(batch)
        prediction = self.one_step(inputs["lq_latent"])
        if self.stage == "1":
            mask = inputs["mask"].expand_as(prediction)
            loss = face_focused_mse(prediction, inputs["gt_latent"], mask, use_mask)
            return loss, {"latent_mse": loss.detach()}
        gt = batch["gt"].float()
        frames = decode_latents(self.vae, prediction)[:, : gt.shape[1]]
        pixel = face_focused_mse(frames, gt, inputs["mask"], use_mask)
        parts = {"pixel_mse": pixel.detach()}
        loss = pixel
        if self.dists_weight > 0:
            perceptual = dists_loss(self._dists(gt.device), frames, gt)
            parts["dists"] = perceptual.detach()
            loss = loss + self.dists_weight * perceptual
        return loss, parts

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.stage is None:
            raise ConfigError("vividface: this module was built for inference (stage None)")
        use_mask = self.stage != VAE_STAGE and self.mask_switch.draw()
        loss, parts = self.compute_loss(batch, use_mask)
        batch_size = batch["gt"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if self.stage != VAE_STAGE:
            self.log("train/face_focused_step", float(use_mask), batch_size=batch_size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

    def on_fit_start(self) -> None:
        # every rank draws its own switch sequence, reproducibly
        self.mask_switch.reseed(self.hparams.seed + self.global_rank)

    def configure_optimizers(self):
        parameters = [p for p in self.parameters() if p.requires_grad]
        if not parameters:
            raise ConfigError("vividface: no trainable parameters (built for inference?)")
        return torch.optim.AdamW(parameters, lr=self.lr, weight_decay=float(self.hparams.weight_decay))

    # ------------------------------------------------------------------ weights

    def load_trained_weights(self, state_dict: Mapping[str, torch.Tensor], source: str, require_all: bool = True) -> list[str]:
        """Load DiT (or LoRA) weights, and VAE weights trained here, from a module state dict;
        returns the keys loaded.

        Keys of unwrapped layers are mapped onto peft's ``base_layer`` when this module has
        LoRA. Unknown keys are an error (with a hint when they are LoRA weights and
        ``lora_rank`` is unset), and so are VAE weights when this module's VAE is the Wan
        folder's; with ``require_all`` every weight of :meth:`trained_parameter_names` must be present.
        """
        own = self.state_dict()
        mapped, unexpected = {}, []
        for key, value in state_dict.items():
            target = key if key in own else _base_layer_key(key)
            if target in own:
                mapped[target] = value
            else:
                unexpected.append(key)
        if unexpected:
            hint = ""
            lora = [k for k in unexpected if ".lora_A." in k]
            if lora and not self.lora_rank:
                hint = f"; it holds LoRA weights of rank {state_dict[lora[0]].shape[0]}: set method.module.lora_rank to it"
            raise ConfigError(f"{source}: {len(unexpected)} weight(s) this VividFace configuration does not have "
                              f"(e.g. {unexpected[:3]}){hint}")
        if self.vae_from_wan and any(key.startswith("vae.") for key in mapped):
            raise ConfigError(f"{source}: holds VAE weights trained in this project (stage vae), but this configuration "
                              f"uses the pretrained Wan VAE; set method.module.backbone.vae to the VAE arguments it was trained with")
        missing = [name for name in self.trained_parameter_names() if name not in mapped]
        if require_all and missing:
            hint = ""
            if self.lora_rank and not any(".lora_" in k for k in mapped):
                hint = "; it has no LoRA weights: set method.module.lora_rank: null"
            elif mapped and all(key.startswith("vae.") for key in mapped):
                hint = "; it holds only a VAE (a stage-vae checkpoint): train stage 1 from it and use that checkpoint"
            elif any(name.startswith("vae.") for name in missing) and not any(key.startswith("vae.") for key in mapped):
                hint = "; it has no VAE weights, and this configuration's VAE is not the Wan folder's (backbone.vae is set)"
            raise ConfigError(f"{source}: {len(missing)} trained weight(s) missing (e.g. {missing[:3]}){hint}")
        if not any(key.startswith(("transformer.", "vae.")) for key in mapped):
            raise ConfigError(f"{source}: holds no VividFace DiT or VAE weights")
        try:
            self.load_state_dict(mapped, strict=False)
        except RuntimeError as error:
            raise ConfigError(f"{source}: weights do not fit this configuration (lora_rank / backbone size?): {error}") from error
        return sorted(mapped)

    def init_from_previous_stage(self, state_dict: Mapping[str, torch.Tensor], previous_stage: str) -> None:
        """Start this stage from the previous one's weights: from stage "vae" its whole VAE
        (every VAE weight required; the DiT keeps its initialisation), otherwise the DiT (or
        LoRA) weights and, when present, the VAE weights trained here."""
        source = f"stage {previous_stage} weights"
        if str(previous_stage) == VAE_STAGE:
            vae_weights = {key[len("vae."):]: value for key, value in state_dict.items() if key.startswith("vae.")}
            if not vae_weights:
                raise ConfigError(f"{source}: holds no VAE weights (keys 'vae.*'); is it a stage-vae checkpoint?")
            if self.vae_from_wan:
                raise ConfigError(f"{source}: a VAE trained in stage vae cannot replace the pretrained Wan VAE of this "
                                  f"configuration; set method.module.backbone.vae to the arguments it was trained with")
            try:
                self.vae.load_state_dict(vae_weights, strict=True)
            except RuntimeError as error:
                raise ConfigError(f"{source}: the VAE does not fit method.module.backbone.vae: {error}") from error
            loaded = [f"vae.{key}" for key in vae_weights]
        else:
            loaded = self.load_trained_weights(state_dict, source, require_all=False)
        if any(key.startswith("vae.") for key in loaded):
            self._latent_cache = None  # keyed on the VAE's weights: reopen with the new ones
        log.info("vividface stage %s: %d tensors initialised from stage %s", self.stage, len(loaded), previous_stage)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # what comes from the Wan folder (the VAE; with LoRA the base DiT) is not repeated in the checkpoint
        keep = set(self.trained_parameter_names())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["vividface"] = {"stage": self.stage, "lora_rank": self.lora_rank, "backbone": self.backbone_source,
                                   "vae": "pretrained (Wan folder)" if self.vae_from_wan else "in this checkpoint",
                                   "mask_parser": self._parser.name if self._parser is not None else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = [name for name in self.trained_parameter_names() if name not in checkpoint["state_dict"]]
        if missing:
            raise ConfigError(f"vividface checkpoint lacks {len(missing)} trained weight(s) (e.g. {missing[:3]}); "
                              f"was it saved with another lora_rank?")


def load_restorer(module: Mapping, checkpoint: str | None = None) -> VividFaceModule:
    """The ``run`` entry point: a VividFace module with fine-tuned weights, ready for inference.

    Checks everything it will read — the checkpoint and the Wan folder — before building any
    network, and stops with one WeightsMissingError listing what is missing and where it goes.
    ``module.allow_random_weights: true`` (tests only) allows running without a checkpoint.
    """
    settings = dict(_plain(module))
    problems = []
    if not checkpoint:
        if not settings.get("allow_random_weights", False):
            problems.append(
                "a fine-tuned VividFace checkpoint is required: method.checkpoint=<path to the .ckpt of "
                "`python -m fvr_bench train method=vividface stage=2`> (see methods/vividface/README.md)"
            )
    elif not Path(checkpoint).expanduser().is_file():
        problems.append(f"method.checkpoint={checkpoint} does not exist")
    try:
        locate_wan_dir(BackboneConfig.from_mapping(settings.get("backbone")))
    except WeightsMissingError as error:
        problems.append(f"{error} (or set method.module.backbone.wan_dir=<folder>)")
    if problems:
        raise WeightsMissingError("vividface cannot run:\n- " + "\n- ".join(problems))
    settings.pop("_target_", None)
    settings.pop("_recursive_", None)
    model = VividFaceModule(**{**settings, "stage": None})
    if checkpoint:
        model.load_trained_weights(read_state(checkpoint), source=str(checkpoint), require_all=True)
    else:
        log.warning("vividface: no checkpoint — RANDOM / not fine-tuned weights (allow_random_weights), tests only")
    return model.prepare_for_inference()


__all__ = ["WAN_ENTRY", "VividFaceModule", "load_restorer"]
