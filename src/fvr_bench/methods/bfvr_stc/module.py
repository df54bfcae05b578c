"""BFVR-STC as a Lightning module: stage I (3D VQGAN + codebooks), stage II (lookup
transformers), restore with overlapping windows, and the restorer loader.

Stages (``stage=`` of the train command; ``inference`` is what :func:`load_restorer` builds):

* ``1``: HQ encoder ``E_h``, spatial-temporal quantizer, decoder ``D_h`` and the DINOv2
  discriminator heads, trained on HQ clips with manual optimisation (generator step, then
  discriminator step): L1 + LPIPS + 0.4·hinge GAN (from iteration 2001) + codebook loss + 0.1·MPR.
* ``2a`` / ``2b`` / ``deflicker``: the LQ encoder ``E_l`` (initialised from ``E_h``) and the two
  lookup transformers learn to predict the code indices of the frozen stage-I network on the
  ground truth from the degraded clip: CE(spatial) + CE(temporal) + 10·feature loss. The three
  stages differ in their data only (noise-free degradation, full degradation, brightness flicker).
* ``inference``: ``E_l``, quantizer, transformers and ``D_h`` only.

Video tensors at the Lightning boundary are ``(B, T, 3, H, W)`` in [0, 1] (the project
contract); inside, the networks use ``(B, 3, T, H, W)``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from fvr_bench import weights
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.base import (
    RestorerModule,
    crop_to,
    pad_to_multiple,
    resize_video,
)
from fvr_bench.methods.bfvr_stc.autoencoder import VideoDecoder, VideoEncoder
from fvr_bench.methods.bfvr_stc.discriminator import DinoDiscriminator
from fvr_bench.methods.bfvr_stc.losses import (
    build_perceptual_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    index_cross_entropy,
)
from fvr_bench.methods.bfvr_stc.quantizer import CodebookUsage, SpatioTemporalQuantizer
from fvr_bench.methods.bfvr_stc.transformer import LookupTransformer
from fvr_bench.methods.bfvr_stc.windows import restore_in_windows

log = logging.getLogger(__name__)

STAGE_I = "1"
STAGE_II = ("2a", "2b", "deflicker")
INFERENCE = "inference"
SUPPORTED_TASKS = ("bfr", "deflicker")
MOTION_RESIDUAL_MODES = ("corrected", "official")

# Paper-scale defaults; the config (conf/method/bfvr_stc.yaml) states them again, and any key
# it sets must be one of these (a typo is an error, not a silently ignored option).
DEFAULTS: dict[str, dict[str, Any]] = {
    "autoencoder": {"nf": 32, "emb_dim": 256, "ch_mult": [1, 2, 4, 8], "num_res_blocks": 2,
                    "encoder_attention_levels": [3], "decoder_attention_levels": [2, 3],
                    "temporal_downsample_levels": [0], "norm_groups": 32},
    "quantizer": {"codebook_size": 1024, "beta": 0.25, "temporal_norm_groups": 16, "mpr_form": "paper"},
    "transformer": {"dim": 256, "heads": 2, "layers": 9, "mlp_dim": 512, "latent_grid": [64, 64],
                    "motion_residual": "corrected"},
    "discriminator": {"backbone": "vit_small_patch14_dinov2", "image_size": 224, "head_outputs": [1, 2, 4],
                      "backbone_overrides": {}, "imagenet_normalize": True, "gradient_through_backbone": True,
                      "resize_mode": "nearest", "weights_path": None},
    "loss": {"l1_weight": 1.0, "perceptual_weight": 1.0, "gan_weight": 0.4, "gan_start_step": 2001,
             "codebook_weight": 1.0, "mpr_weight": 0.1, "spatial_ce_weight": 1.0, "temporal_ce_weight": 1.0,
             "feature_weight": 10.0, "perceptual_lin_path": None, "perceptual_backbone_path": None},
    "optimizer": {"learning_rates": {"1": 7e-5, "2a": 2e-5, "2b": 2e-5, "deflicker": 2e-5}, "betas": [0.9, 0.99],
                  "discriminator_lr": None},
    "restore": {"window": 24, "overlap": 8, "bf16": False, "minmax_stretch": False},
}


def plain(value: Any) -> Any:
    """DictConfig/ListConfig (what Hydra passes with ``_recursive_=false``) → dicts/lists."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def autoencoder_parts(autoencoder: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``module.autoencoder`` → the keyword arguments of :class:`VideoEncoder` and of
    :class:`VideoDecoder`: everything shared except the attention placement, which the
    official network sets differently on the two sides (decoder levels 3 and 2, encoder 3)."""
    shared = {k: v for k, v in autoencoder.items() if k not in ("encoder_attention_levels", "decoder_attention_levels")}
    return ({**shared, "attention_levels": autoencoder["encoder_attention_levels"]},
            {**shared, "attention_levels": autoencoder["decoder_attention_levels"]})


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


def settings(group: str, given: Mapping | None) -> dict[str, Any]:
    """The defaults of ``module.<group>`` updated with ``given``; unknown keys are refused."""
    given = dict(plain(given) or {})
    unknown = sorted(set(given) - set(DEFAULTS[group]))
    if unknown:
        raise ConfigError(f"module.{group}: unknown option(s) {unknown}; known: {sorted(DEFAULTS[group])}")
    return {**DEFAULTS[group], **given}


class BFVRSTCModule(RestorerModule):
    """BFVR-STC (Wang et al., CVPR 2025), every stage and the restorer.

    ``autoencoder``/``quantizer``/``transformer``/``discriminator``/``loss``/``optimizer``/
    ``restore``: option groups, see :data:`DEFAULTS` (paper scale). ``pretrained_losses``:
    DINOv2 and LPIPS-VGG weights from the registry (false → random, tests only). The
    learning rate: ``lr`` if given, else ``stage_options["lr"]`` (the ``train.stages.<s>``
    mapping the train command passes), else ``optimizer.learning_rates[stage]``.
    """

    name = "bfvr_stc"

    def __init__(self, stage: str = "2b", autoencoder: Mapping | None = None, quantizer: Mapping | None = None,
                 transformer: Mapping | None = None, discriminator: Mapping | None = None, loss: Mapping | None = None,
                 optimizer: Mapping | None = None, restore: Mapping | None = None, pretrained_losses: bool = True,
                 usage_log_every: int = 100, lr: float | None = None, name: str = "bfvr_stc",
                 stage_options: Mapping | None = None) -> None:
        super().__init__()
        stage = str(stage)
        if stage not in (STAGE_I, *STAGE_II, INFERENCE):
            raise ConfigError(f"stage={stage!r}: BFVR-STC has stages {', '.join((STAGE_I, *STAGE_II))}")
        # plain, complete option groups before save_hyperparameters() reads them
        autoencoder, quantizer = settings("autoencoder", autoencoder), settings("quantizer", quantizer)
        transformer, discriminator = settings("transformer", transformer), settings("discriminator", discriminator)
        loss, optimizer, restore = settings("loss", loss), settings("optimizer", optimizer), settings("restore", restore)
        stage_options = dict(plain(stage_options) or {})
        self.save_hyperparameters()
        self.name = name
        self.stage = stage
        self.loss_settings, self.optimizer_settings, self.restore_settings = loss, optimizer, restore
        self.usage_log_every = int(usage_log_every)
        self.learning_rate = lr if lr is not None else stage_options.get("lr")
        if transformer["motion_residual"] not in MOTION_RESIDUAL_MODES:
            raise ConfigError(f"module.transformer.motion_residual={transformer['motion_residual']!r}: "
                              f"one of {', '.join(MOTION_RESIDUAL_MODES)}")
        self.official_motion_residual = transformer["motion_residual"] == "official"

        levels = len(autoencoder["ch_mult"])
        self.spatial_factor = 2 ** (levels - 1)
        self.temporal_factor = 2 ** len(autoencoder["temporal_downsample_levels"])
        self.size_multiple = self.spatial_factor
        codebook_size, emb_dim = int(quantizer["codebook_size"]), int(autoencoder["emb_dim"])

        encoder_args, decoder_args = autoencoder_parts(autoencoder)
        if stage != INFERENCE:
            self.hq_encoder = VideoEncoder(**encoder_args)
        self.quantizer = SpatioTemporalQuantizer(codebook_size, emb_dim, quantizer["beta"], quantizer["temporal_norm_groups"],
                                                 quantizer["mpr_form"])
        self.decoder = VideoDecoder(**decoder_args)
        if stage != STAGE_I:
            self.lq_encoder = VideoEncoder(**encoder_args)
            transformer_args = {k: transformer[k] for k in ("dim", "heads", "layers", "mlp_dim", "latent_grid")}
            self.spatial_transformer = LookupTransformer(codebook_size, in_dim=emb_dim, **transformer_args)
            self.temporal_transformer = LookupTransformer(codebook_size, in_dim=emb_dim, **transformer_args)
        if stage == STAGE_I:
            self.automatic_optimization = False  # generator and discriminator alternate (manual_backward)
            self.discriminator = self._build_discriminator(discriminator, pretrained_losses)
            self.perceptual = build_perceptual_loss(pretrained_losses, loss["perceptual_lin_path"], loss["perceptual_backbone_path"])
        if stage in STAGE_II:
            self.lq_encoder.load_state_dict(self.hq_encoder.state_dict())
            for frozen in (self.hq_encoder, self.quantizer, self.decoder):
                frozen.requires_grad_(False)
        self.usage = CodebookUsage(codebook_size)

    # ------------------------------------------------------------------ construction

    @staticmethod
    def _build_discriminator(options: dict[str, Any], pretrained: bool) -> DinoDiscriminator:
        args = {k: v for k, v in options.items() if k != "weights_path"}
        discriminator = DinoDiscriminator(**args)
        if pretrained:
            discriminator.load_backbone(weights.locate("dinov2_vits14", options["weights_path"]))
        return discriminator

    def train(self, mode: bool = True) -> BFVRSTCModule:
        """Frozen stage-I parts stay in eval mode during stage II."""
        super().train(mode)
        if self.stage in STAGE_II:
            for frozen in (self.hq_encoder, self.quantizer, self.decoder):
                frozen.eval()
        return self

    def frozen_prefixes(self) -> tuple[str, ...]:
        """Top-level parts whose weights a stage does not train."""
        return ("hq_encoder", "quantizer", "decoder") if self.stage in STAGE_II else ()

    # ------------------------------------------------------------------ networks

    def reconstruct(self, video: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Stage I: ``(B, 3, T, H, W)`` → reconstruction ``(B, 3, T, H, W)`` and the quantizer output."""
        quantized = self.quantizer(self.hq_encoder(video))
        return self.decoder(quantized.latent), quantized

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

    # ------------------------------------------------------------------ restore

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
        if not hasattr(self, "lq_encoder"):
            raise ConfigError("a stage-1 BFVR-STC module has no LQ encoder or lookup transformers; restore needs a "
                              "stage 2a/2b/deflicker checkpoint (method.checkpoint=...)")
        if out_size is not None and tuple(lq.shape[-2:]) != tuple(out_size):
            lq = resize_video(lq, tuple(out_size), mode="bicubic")
        padded, size = pad_to_multiple(lq, self.spatial_factor)
        reference_param = self.decoder.conv_out.weight
        video = padded.transpose(1, 2).to(reference_param.device, reference_param.dtype)
        use_bf16 = bool(self.restore_settings["bf16"]) and video.device.type == "cuda"
        precision = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        with precision:
            out = restore_in_windows(video, self.restore_clip, int(self.restore_settings["window"]),
                                     int(self.restore_settings["overlap"]), self.temporal_factor)
        out = crop_to(out.float().transpose(1, 2), size)
        if self.restore_settings["minmax_stretch"]:
            # after cropping: the reflect padding is not part of the clip whose range is stretched
            out = minmax_stretch(out)
        return out.clamp(0.0, 1.0)

    # ------------------------------------------------------------------ training

    def _videos(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """GT and LQ of a batch as ``(B, 3, T, S, S)``; LQ resized to the GT size when smaller."""
        gt, lq = batch["gt"], batch.get("lq", batch["gt"])
        if lq.shape[-2:] != gt.shape[-2:]:
            lq = resize_video(lq, tuple(gt.shape[-2:]), mode="bicubic")
        frames, height, width = gt.shape[1], *gt.shape[-2:]
        if frames % self.temporal_factor or height % self.spatial_factor or width % self.spatial_factor:
            raise ConfigError(f"BFVR-STC trains on clips whose frame count is a multiple of {self.temporal_factor} and "
                              f"size a multiple of {self.spatial_factor}; got {frames}×{height}×{width} "
                              f"(train.stages.{self.stage}.frames / size)")
        return gt.transpose(1, 2), lq.transpose(1, 2)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        if self.stage == STAGE_I:
            return self._stage_one_step(batch)
        if self.stage in STAGE_II:
            return self._stage_two_step(batch)
        raise ConfigError("the inference module cannot be trained; pass stage=1, 2a, 2b or deflicker")

    def stage_one_losses(self, gt: torch.Tensor, adversarial: bool) -> dict[str, torch.Tensor]:
        """Generator side of stage I on GT ``(B, 3, T, H, W)``: every term, the weighted
        ``loss``, the ``reconstruction`` and the quantizer output ``quantized``."""
        weights_ = self.loss_settings
        reconstruction, quantized = self.reconstruct(gt)
        # a zero-weighted LPIPS would still cost a VGG16 forward and backward per frame
        lpips = (self.perceptual(reconstruction, gt) if weights_["perceptual_weight"] > 0
                 else torch.zeros((), device=gt.device))
        terms = {"l1": (reconstruction - gt).abs().mean(), "lpips": lpips,
                 "codebook": quantized.codebook_loss, "mpr": quantized.mpr}
        terms["gan_g"] = (hinge_generator_loss(self.discriminator(frames_of(reconstruction))) if adversarial
                          else torch.zeros((), device=gt.device))
        terms["loss"] = (weights_["l1_weight"] * terms["l1"] + weights_["perceptual_weight"] * terms["lpips"]
                         + weights_["codebook_weight"] * terms["codebook"] + weights_["mpr_weight"] * terms["mpr"]
                         + (weights_["gan_weight"] * terms["gan_g"] if adversarial else 0.0))
        return {**terms, "reconstruction": reconstruction, "quantized": quantized}

    def _stage_one_step(self, batch: Mapping[str, Any]) -> torch.Tensor:
        weights_ = self.loss_settings
        gt, _ = self._videos(batch)
        generator_opt, discriminator_opt = self.optimizers()
        adversarial = weights_["gan_weight"] > 0 and self.global_step >= int(weights_["gan_start_step"])

        self.toggle_optimizer(generator_opt)
        out = self.stage_one_losses(gt, adversarial)
        generator_opt.zero_grad()
        self.manual_backward(out["loss"])
        generator_opt.step()
        self.untoggle_optimizer(generator_opt)

        if adversarial:
            self.toggle_optimizer(discriminator_opt)
            real = self.discriminator(frames_of(gt))
            fake = self.discriminator(frames_of(out["reconstruction"].detach()))
            discriminator_loss = hinge_discriminator_loss(real, fake)
            discriminator_opt.zero_grad()
            self.manual_backward(discriminator_loss)
            # The raw optimizer: Lightning counts every LightningOptimizer.step() as a global
            # step, which would make max_steps (and the GAN start) count 2 per iteration.
            discriminator_opt.optimizer.step()
            self.untoggle_optimizer(discriminator_opt)
            self.log("train/d_loss", discriminator_loss.detach())

        self.log_dict({f"train/{name}": out[name].detach() for name in ("loss", "l1", "lpips", "codebook", "mpr", "gan_g")})
        self._track_usage(out["quantized"].spatial_indices, out["quantized"].temporal_indices)
        return out["loss"].detach()

    def stage_two_losses(self, gt: torch.Tensor, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage II on GT and LQ ``(B, 3, T, H, W)``: the terms, the weighted ``loss``, the
        index accuracies and the GT indices (``spatial_indices``, ``temporal_indices``)."""
        weights_ = self.loss_settings
        with torch.no_grad():
            target = self.quantizer(self.hq_encoder(gt), with_mpr=False)
        latent, spatial_logits, temporal_logits = self.code_logits(lq)
        terms = {"ce_spatial": index_cross_entropy(spatial_logits, target.spatial_indices),
                 "ce_temporal": index_cross_entropy(temporal_logits, target.temporal_indices),
                 "feature": (latent.float() - target.latent.float()).square().mean()}
        terms["loss"] = (weights_["spatial_ce_weight"] * terms["ce_spatial"] + weights_["temporal_ce_weight"] * terms["ce_temporal"]
                         + weights_["feature_weight"] * terms["feature"])
        with torch.no_grad():
            terms["accuracy_spatial"] = (spatial_logits.argmax(-1) == target.spatial_indices).float().mean()
            terms["accuracy_temporal"] = (temporal_logits.argmax(-1) == target.temporal_indices).float().mean()
        return {**terms, "spatial_indices": target.spatial_indices, "temporal_indices": target.temporal_indices}

    def _stage_two_step(self, batch: Mapping[str, Any]) -> torch.Tensor:
        gt, lq = self._videos(batch)
        out = self.stage_two_losses(gt, lq)
        self.log_dict({f"train/{name}": out[name].detach() for name in
                       ("loss", "ce_spatial", "ce_temporal", "feature", "accuracy_spatial", "accuracy_temporal")})
        self._track_usage(out["spatial_indices"], out["temporal_indices"])
        return out["loss"]

    def _track_usage(self, spatial_indices: torch.Tensor, temporal_indices: torch.Tensor) -> None:
        """Log the share of each codebook used in this batch, and every ``usage_log_every``
        steps the share used over the window and its histogram (``codebook_usage/step_N.pt``
        in the logger's folder) — the quantity of the paper's codebook-utilisation figures."""
        size = self.usage.counts.shape[1]
        self.log_dict({"train/codes_used_spatial": spatial_indices.unique().numel() / size,
                       "train/codes_used_temporal": temporal_indices.unique().numel() / size})
        self.usage.update(spatial_indices, temporal_indices)
        if self.usage_log_every <= 0 or (self.global_step + 1) % self.usage_log_every:
            return
        spatial, temporal = self.usage.fraction_used()
        self.log_dict({"train/codebook_usage_spatial": spatial, "train/codebook_usage_temporal": temporal})
        log_dir = getattr(self.trainer, "log_dir", None) if self._trainer is not None else None
        if log_dir and self.trainer.is_global_zero:
            folder = Path(log_dir) / "codebook_usage"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"step": self.global_step + 1, "spatial": self.usage.counts[0].cpu(),
                        "temporal": self.usage.counts[1].cpu()}, folder / f"step_{self.global_step + 1:07d}.pt")
        self.usage.reset()

    def configure_optimizers(self):
        settings_ = self.optimizer_settings
        rates = {str(k): v for k, v in settings_["learning_rates"].items()}
        lr = float(self.learning_rate if self.learning_rate is not None else rates[self.stage])
        betas = tuple(float(b) for b in settings_["betas"])
        if self.stage == STAGE_I:
            generator = [*self.hq_encoder.parameters(), *self.quantizer.parameters(), *self.decoder.parameters()]
            discriminator_lr = float(settings_["discriminator_lr"] or lr)
            return [torch.optim.Adam(generator, lr=lr, betas=betas),
                    torch.optim.Adam(self.discriminator.heads.parameters(), lr=discriminator_lr, betas=betas)]
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(trainable, lr=lr, betas=betas)

    def on_train_start(self) -> None:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if self.stage == STAGE_I and scaler is not None:
            raise ConfigError("BFVR-STC stage 1 steps its discriminator outside Lightning's loss scaler; use "
                              "train.stages.1.precision=32-true or bf16-mixed, not 16-mixed")

    # ------------------------------------------------------------------ stage handover

    def init_from_previous_stage(self, state_dict: Mapping[str, torch.Tensor], previous_stage: str) -> None:
        """Copy the weights of the previous stage (or of the official release) into this one.

        From stage 1 into stage II: ``E_h``, the codebooks and ``D_h`` (frozen here) and
        ``E_l`` ← ``E_h``; the lookup transformers start fresh. Between stage-II stages:
        everything. Parameters present in both with different shapes mean a different
        configuration and stop with the list.
        """
        from fvr_bench.methods.bfvr_stc.official import (
            from_official,
            is_official_layout,
        )

        state = dict(state_dict)
        if is_official_layout(state):
            state, _ = from_official(state, self)
        own = self.state_dict()
        if hasattr(self, "lq_encoder") and not any(k.startswith("lq_encoder.") for k in state):
            state.update({"lq_encoder." + k[len("hq_encoder."):]: v for k, v in state.items() if k.startswith("hq_encoder.")})
        mismatched = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
        if mismatched:
            raise ConfigError(f"weights of stage {previous_stage} do not fit this configuration: "
                              f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in mismatched[:4]]}")
        needed = ("hq_encoder", "quantizer", "decoder") if self.stage in STAGE_II else ()
        absent = [part for part in needed if hasattr(self, part) and not any(k.startswith(part + ".") for k in state)]
        if absent:
            raise ConfigError(f"the weights of stage {previous_stage} hold no {', '.join(absent)}; "
                              f"stage {self.stage} starts from a trained stage-1 network")
        loadable = {k: v for k, v in state.items() if k in own}
        self.load_state_dict(loadable, strict=False)
        fresh = sorted({k.split(".")[0] for k in own if k not in loadable})
        log.info("stage %s initialised from stage %s (%d tensors); newly initialised: %s", self.stage, previous_stage,
                 len(loadable), ", ".join(fresh) or "nothing")


def frames_of(video: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W)`` → ``(B·T, 3, H, W)``."""
    return video.transpose(1, 2).reshape(-1, video.shape[1], *video.shape[-2:])


# ---------------------------------------------------------------------- restorer


INFERENCE_PARTS = ("lq_encoder", "quantizer", "decoder", "spatial_transformer", "temporal_transformer")


def load_restorer(module: Mapping, checkpoint: str | Path | None = None, allow_random_weights: bool = False,
                  name: str | None = None) -> BFVRSTCModule:
    """The BFVR-STC restorer in eval mode, from the method config's ``module`` options.

    ``checkpoint``: a Lightning checkpoint of stage 2a/2b/deflicker (EMA weights preferred),
    a plain state dict, or the official release ``ckpt-bfvr.pth`` (recognised by its
    ``params_ema``/``params`` entry and mapped onto this implementation). None: the official
    release from the weights registry (``bfvr_stc_official``). Nothing found →
    :class:`WeightsMissingError` before any network is built, unless
    ``allow_random_weights`` (tests and smoke runs; a warning says the output is meaningless).
    """
    options = dict(plain(module) or {})
    options.pop("_target_", None)
    options.pop("stage", None)
    if name is not None:
        options["name"] = name
    path: Path | None = Path(checkpoint).expanduser() if checkpoint else None
    if path is None:
        found = weights.find("bfvr_stc_official")
        if found is None and not allow_random_weights:
            raise WeightsMissingError(
                "BFVR-STC needs trained weights: set method.checkpoint=<a stage 2a/2b/deflicker checkpoint of "
                "`python -m fvr_bench train method=bfvr_stc`>, or provide the official release.\n"
                + weights.missing_message("bfvr_stc_official"))
        path = found
    elif not path.is_file():
        raise WeightsMissingError(f"BFVR-STC checkpoint not found: {path} (method.checkpoint)")

    if path is None:
        log.warning("BFVR-STC restorer with RANDOM weights (allow_random_weights=true, no checkpoint): "
                    "outputs are meaningless — for tests and smoke runs only")
        return BFVRSTCModule(stage=INFERENCE, **options).eval()

    state, official = read_restorer_weights(path)
    if official:
        options.setdefault("transformer", {})
        options["transformer"] = {**dict(plain(options["transformer"]) or {}), "motion_residual": "official"}
    restorer = BFVRSTCModule(stage=INFERENCE, **options)
    if official:
        from fvr_bench.methods.bfvr_stc.official import from_official

        state, ignored = from_official(state, restorer)
        log.info("official BFVR-STC weights %s mapped (unused official entries: %d); the temporal transformer gets the "
                 "official code's motion residual it was trained with", path, len(ignored))
    load_inference_weights(restorer, state, path)
    return restorer.eval()


def read_restorer_weights(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """``(state dict, is the official release layout)`` of a checkpoint file."""
    from fvr_bench.methods.bfvr_stc.official import official_state
    from fvr_bench.training.checkpoints import load_checkpoint, load_weights

    raw = load_checkpoint(path)
    if isinstance(raw, dict) and ("params_ema" in raw or "params" in raw):
        return official_state(raw, path), True
    return dict(load_weights(path)), False


def load_inference_weights(restorer: BFVRSTCModule, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Load the inference parts; training-only entries (``hq_encoder``, discriminator, LPIPS)
    are skipped; anything the restorer needs and the file lacks is an error naming the file."""
    own = restorer.state_dict()
    needed = {k: v for k, v in state.items() if k.split(".")[0] in INFERENCE_PARTS}
    missing = sorted(set(own) - set(needed))
    if missing:
        parts = sorted({k.split(".")[0] for k in missing})
        hint = (" — a stage-1 checkpoint has no LQ encoder or lookup transformers; use a stage 2a/2b/deflicker one"
                if {"spatial_transformer", "temporal_transformer"} & set(parts) else "")
        raise ConfigError(f"{path}: lacks weights of {', '.join(parts)} (e.g. {missing[:3]}){hint}")
    unexpected = sorted(set(needed) - set(own))
    if unexpected:
        raise ConfigError(f"{path}: holds weights this method config has no place for (e.g. {unexpected[:3]}); "
                          f"use the config the checkpoint was trained with")
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in needed.items() if v.shape != own[k].shape]
    if mismatched:
        raise ConfigError(f"{path}: weights do not fit this method config (file vs config shapes {mismatched[:3]}); "
                          f"use the config the checkpoint was trained with")
    restorer.load_state_dict(needed, strict=True)
