"""SVFR training (paper §4): diffusion loss + Unified Latent Regularisation + facial landmark prior.

One step on a batch of B clips, each under V task degradations (``train.stages.<s>.task_views``):

    z₀    = 0.18215 · VAE(GT)                     (the same target for every view of a clip)
    c_lq  = VAE mode of each view's LQ, unscaled  (as at inference)
    ref   = VAE mode of one GT frame + its 49 ID tokens, both dropped for 50 % of the videos
    σ ~ log-normal, z_σ = z₀ + σ·n, v = UNet([c_in·z_σ | c_lq | ref], 0.25·ln σ, ID tokens, task multi-hot)
    L = L_noise(v; EDM weighting) + λ1·L_ULR(T_l(mid)) + λ2·Wing(P_lm(mid), GT landmarks)

``mid`` is the UNet mid-block output ``(B·V·T, C, h, w)``, captured with a forward hook (the
UNet is diffusers' own class, unchanged). The training reference is a GT frame (the paper does
not say which; ``reference_frame``), since pass 1's output is an inference-time device.

Checkpoint keys: ``restorer.unet.*``, ``restorer.identity.projection.*``, ``latent_transformer.*``,
``landmark_head.*``; the frozen VAE and ArcFace are left out (they come from their files).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.methods.base import TrainingModule
from fvr_bench.methods.svfr.heads import LandmarkHead, LatentTransformer
from fvr_bench.methods.svfr.objectives import (
    SVFRObjective,
    add_noise,
    scale_input,
    ulr_views,
)
from fvr_bench.methods.svfr.restorer import SVFRRestorer, plain
from fvr_bench.methods.svfr.sampling import ID_TOKENS
from fvr_bench.methods.svfr.tasks import SVFR_TASKS
from fvr_bench.state_dicts import EMA_KEY

log = logging.getLogger(__name__)

TRAINABLE = {"unet": "restorer.unet", "id_projection": "restorer.identity.projection"}
FROZEN = ("restorer.vae", "restorer.identity.arcface")
REFERENCE_FRAMES = ("random", "first")


class SVFRTraining(TrainingModule):
    """``restorer``: the :class:`.restorer.SVFRRestorer` being trained (float32 master weights);
    ``objective``: :class:`.objectives.SVFRObjective` (Eq. 4 and its ablation switches).

    latent_transformer_width / latent_pool: T_l (:class:`.heads.LatentTransformer`);
    landmark_hidden: P_lm's MLP width; reference_dropout: share of videos trained without the
    reference latent and ID tokens (paper: 50 %); reference_frame: ``random`` | ``first`` GT
    frame as the training reference; trained: ``unet`` and/or ``id_projection`` (the heads
    always train); lr / weight_decay: AdamW.
    """

    def __init__(self, restorer: SVFRRestorer, objective: SVFRObjective, lr: float = 1e-5, weight_decay: float = 0.01,
                 latent_transformer_width: int | None = None, latent_pool: str = "frame", landmark_hidden: int = 512,
                 reference_dropout: float = 0.5, reference_frame: str = "random",
                 trained: Sequence[str] = ("unet", "id_projection"), gradient_checkpointing: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        if reference_frame not in REFERENCE_FRAMES:
            raise ConfigError(f"svfr training: reference_frame={reference_frame!r}; one of {', '.join(REFERENCE_FRAMES)}")
        if not 0 <= float(reference_dropout) <= 1:
            raise ConfigError(f"svfr training: reference_dropout must be in [0, 1], got {reference_dropout}")
        self.trained = list(plain(trained))
        unknown = [t for t in self.trained if t not in TRAINABLE]
        if unknown:
            raise ConfigError(f"svfr training: unknown trained part(s) {unknown}; known: {', '.join(TRAINABLE)}")
        self.restorer, self.objective = restorer, objective
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.reference_dropout, self.reference_frame = float(reference_dropout), reference_frame
        self.seed = int(seed)
        mid_channels = int(restorer.unet.config.block_out_channels[-1])
        self.latent_transformer = LatentTransformer(mid_channels, latent_transformer_width, pool=latent_pool)
        self.landmark_head = LandmarkHead(mid_channels, hidden=int(landmark_hidden))
        restorer.requires_grad_(False)
        for part in self.trained:
            self.get_submodule(TRAINABLE[part]).requires_grad_(True)
        if gradient_checkpointing:
            restorer.unet.enable_gradient_checkpointing()
        self._mid: torch.Tensor | None = None
        restorer.unet.mid_block.register_forward_hook(self._keep_mid)
        self.strict_loading = False  # checkpoints leave the frozen VAE and ArcFace out

    def _keep_mid(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._mid = output

    def train(self, mode: bool = True) -> SVFRTraining:
        """The frozen VAE and ArcFace stay in eval mode."""
        super().train(mode)
        for part in FROZEN:
            self.get_submodule(part).eval()
        return self

    # ------------------------------------------------------------------ one batch

    def _id_tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference frames ``(B, 3, S, S)`` in [0, 1] → ID tokens ``(B, 49, D)`` (zeros where no
        face is found; gradients reach the ID projection) and ``(B,)`` bool: face found."""
        dim = self.restorer.identity.projection.final_norm.normalized_shape[0]
        tokens, found = [], []
        for frame in frames:
            value, _ = self.restorer.identity.tokens(frame)
            found.append(value is not None)
            tokens.append(value[0].float() if value is not None else frames.new_zeros(ID_TOKENS, dim))
        return torch.stack(tokens), torch.tensor(found, device=frames.device)

    def losses(self, batch: Mapping[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Eq. 4 on one batch → ``{"loss", "noise", "ulr"?, "prior"?}`` (see the module docstring)."""
        if "tasks" not in batch:
            raise ConfigError("svfr training needs task views (train.stages.<s>.task_views in conf/method/svfr.yaml): "
                              "each sample must hold one clip under >= 2 task degradations")
        gt, lq = batch["gt"].float(), batch["lq"].float()
        clips, views, frames = lq.shape[:3]
        videos = clips * views
        r = self.restorer
        device = gt.device
        scale = r.vae.config.scaling_factor
        with torch.no_grad():
            x0 = (r.encode(gt.flatten(0, 1) * 2 - 1) * scale).unflatten(0, (clips, frames))
            x0 = x0.repeat_interleave(views, dim=0)                                       # (BV, T, 4, h, w)
            lq_latents = r.encode(lq.flatten(0, 2) * 2 - 1).unflatten(0, (videos, frames))  # (BV, T, 4, h, w)
            if self.reference_frame == "random":
                index = torch.randint(frames, (clips,), generator=generator)
            else:
                index = torch.zeros(clips, dtype=torch.long)
            ref_frames = gt[torch.arange(clips), index.to(device)]                          # (B, 3, S, S)
            ref_latents = r.encode(ref_frames * 2 - 1).repeat_interleave(views, dim=0)    # (BV, 4, h, w)
            keep = (torch.rand(videos, generator=generator) >= self.reference_dropout).to(device)
        tokens, found = self._id_tokens(ref_frames)
        tokens = tokens.repeat_interleave(views, dim=0) * keep.view(-1, 1, 1).to(tokens)
        ref_latents = ref_latents * keep.view(-1, 1, 1, 1).to(ref_latents)
        sigma = self.objective.sample_sigmas(videos, generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        noisy = add_noise(x0, noise, sigma)
        sample = torch.cat([scale_input(noisy, sigma), lq_latents,
                            ref_latents[:, None].expand(-1, frames, -1, -1, -1)], dim=2)
        task = batch["tasks"][..., : len(SVFR_TASKS)].reshape(videos, -1).float()
        self._mid = None
        output = r.unet(sample, 0.25 * sigma.log(), encoder_hidden_states=tokens, added_time_ids=task,
                        return_dict=False)[0]
        noise_loss = self.objective.noise_loss(output.float(), x0, noisy, sigma)
        mid = self._mid.float()  # (BV·T, C, h', w')
        ulr_features = ulr_ids = None
        if self.objective.ulr:
            features = self.latent_transformer(mid, frames=frames)
            per_frame = self.latent_transformer.pool == "frame"
            ulr_features, ulr_ids = ulr_views(features, clips, views, frames if per_frame else 1)
        landmark_pred = landmark_target = landmark_valid = None
        if self.objective.prior:
            if "landmarks" not in batch:
                raise ConfigError("svfr training: the facial prior needs GT landmarks (train.stages.<s>.landmarks: "
                                  "dlib68), or turn it off (objective.prior: false)")
            landmark_pred = self.landmark_head(mid)                                      # (BV·T, 68, 2)
            landmark_target = batch["landmarks"].float().repeat_interleave(views, dim=0).flatten(0, 1)
            landmark_valid = batch["landmarks_valid"].bool().repeat_interleave(views, dim=0).flatten(0, 1)
            landmark_valid = landmark_valid[:, None].expand(-1, landmark_pred.shape[1])
        parts = self.objective.combine(noise_loss, ulr_features, landmark_pred, landmark_target, landmark_valid,
                                       ulr_clip_ids=ulr_ids)
        parts["reference_kept"] = keep.float().mean()
        parts["faces_found"] = found.float().mean()
        return parts

    # ------------------------------------------------------------------ Lightning

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        parts = self.losses(batch, self.step_generator(self.seed))
        self.log_dict({f"train/{name}": value.detach() for name, value in parts.items()},
                      prog_bar=True, batch_size=batch["gt"].shape[0])
        return parts["loss"]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for entry in ("state_dict", EMA_KEY):
            if isinstance(checkpoint.get(entry), dict):
                checkpoint[entry] = {k: v for k, v in checkpoint[entry].items()
                                     if not any(k.startswith(p + ".") for p in FROZEN)}

    def init_from_previous_stage(self, state_dict: Mapping[str, torch.Tensor], previous_stage: str) -> None:
        """A later stage (e.g. a fine-tune at another size) starts from every trained tensor of the previous one."""
        own = self.state_dict()
        wanted = {k: v for k, v in state_dict.items() if k in own}
        misfit = [k for k in wanted if tuple(wanted[k].shape) != tuple(own[k].shape)]
        if misfit or not wanted:
            raise ConfigError(f"svfr: the weights of stage {previous_stage} do not fit this configuration "
                              f"({misfit[:3] or 'no matching tensors'})")
        self.load_state_dict(wanted, strict=False)
        log.info("svfr initialised from stage %s (%d tensors)", previous_stage, len(wanted))


__all__ = ["SVFRTraining"]
