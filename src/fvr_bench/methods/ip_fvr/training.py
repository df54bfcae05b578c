"""IP-FVR training: the per-identity LoRA stage (paper §3.2–3.3) and the image-prompt stage.

``stage=identity identity=<name>``: LoRA adapters (peft) on the UNet's spatial and temporal
attention projections, trained on the identity's (lq, hq) clips for 100 steps with

    L = L_rec + reward_weight · L_id_reward
    L_rec       = ‖v − v_θ(z_t, t, c_text, c_lq, c_i)‖²            (paper Eq. 3, VEnhancer's v-prediction)
    L_id_reward = 1 − exp(R_f), R = discounted suffix sums of the per-clip normalised ArcFace
                  similarities of the decoded x̂₀ frames to the reference (Eq. 5–8)

The reward's gradient path (the paper does not give one): x̂₀ = α_t z_t − σ_t v at the same
sampled t as L_rec, decoded by the frozen VAE, embedded by a frozen face encoder that sees
each (aligned) frame resized to its input size — differentiable end to end. The adapters are
written to ``<identity_dir>/<name>/`` (``lora.safetensors`` + ``lora.json``), which ``run``
applies with ``method.identity=<name>``.

``stage=image_prompt``: the decoupled cross-attention K/V and the image-token projection on a
frozen base (the paper uses a "pre-trained decoupled cross-attention module" it does not
release); L_rec only; written to ``<run dir>/ip_fvr_image_prompt.safetensors``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.methods.base import TrainingModule
from fvr_bench.methods.ip_fvr.face2text import with_quality
from fvr_bench.methods.ip_fvr.image_prompt import image_prompt_state, join_context
from fvr_bench.methods.ip_fvr.lora import (
    add_identity_lora,
    lora_config,
    lora_meta,
    lora_state,
    save_identity_lora,
)
from fvr_bench.methods.ip_fvr.restorer import IPFVRRestorer, plain
from fvr_bench.methods.ip_fvr.reward import IdentityReward

log = logging.getLogger(__name__)

STAGES = ("identity", "image_prompt")


class AlignedFrameArcFace(nn.Module):
    """The reward's differentiable face encoder: IR-SE50 on each frame resized to 112² — training
    clips are aligned face crops, so detection and warping (not differentiable) are skipped.
    ``(N, 3, H, W)`` in [0, 1] → ``(N, 512)`` unit embeddings; frozen."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(frames.float(), size=(112, 112), mode="bilinear", align_corners=False,
                                            antialias=True)
        return torch.nn.functional.normalize(self.network((x - 0.5) / 0.5).float(), dim=-1)


def reward_embedder(face_embedder) -> nn.Module:
    """The image prompt's face embedder when it is differentiable (a module, e.g. the tiny
    random one), else IR-SE50 of the same weights on whole aligned frames."""
    if isinstance(face_embedder, nn.Module):
        return face_embedder
    backend = face_embedder._backend()  # ArcFaceReferenceEmbedder → fvr_bench.faces ArcFaceIRSE50
    return AlignedFrameArcFace(backend.network(torch.device("cpu")))


class IPFVRTraining(TrainingModule):
    """``restorer``: :class:`.restorer.IPFVRRestorer` (float32); ``stage``: identity | image_prompt.

    identity: the LoRA's name (required for stage identity); identity_dir: where it is saved;
    lora_rank / lora_alpha / lora_targets: the adapters (not in the paper: 16 / rank /
    spatial + temporal); reward_weight, gamma, reward_frame: the identity reward (paper weight 1,
    γ not given: 0.9); lr, weight_decay: AdamW; seed: draws of t and the noise per step.
    """

    def __init__(self, restorer: IPFVRRestorer, stage: str, lr: float = 1e-4, identity: str | None = None,
                 identity_dir: str | None = None, lora_rank: int = 16, lora_alpha: float | None = None,
                 lora_targets: Sequence[str] = ("spatial", "temporal"), reward_weight: float = 1.0, gamma: float = 0.9,
                 reward_frame: str = "random", weight_decay: float = 0.0, prompt: str | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ConfigError(f"ip_fvr training: stage {stage!r}; one of {', '.join(STAGES)}")
        if restorer.image_encoder is None:
            raise ConfigError("ip_fvr training needs the image prompt (method.image_prompt is none)")
        self.restorer, self.stage = restorer, stage
        self.lr, self.weight_decay, self.seed = float(lr), float(weight_decay), int(seed)
        self.reward_weight = float(reward_weight)
        self.prompt = prompt
        restorer.requires_grad_(False)
        if stage == "identity":
            if not identity:
                raise ConfigError("ip_fvr stage identity needs identity=<name> (the person whose LoRA is trained)")
            self.identity, self.identity_dir = str(identity), Path(identity_dir or ".")
            self.lora = lora_config(int(lora_rank), lora_alpha, tuple(plain(lora_targets)))
            add_identity_lora(restorer.unet, self.identity, self.lora)
            self.reward = IdentityReward(reward_embedder(restorer.image_encoder.face_embedder), gamma=gamma,
                                         frame=reward_frame)
        else:
            self.identity = None
            for name, module in restorer.unet.named_modules():
                if name.endswith("attn2.processor") and hasattr(module, "to_k_ip"):
                    module.requires_grad_(True)
            restorer.image_encoder.projection.requires_grad_(True)
        if not any(p.requires_grad for p in self.parameters()):
            raise ConfigError(f"ip_fvr stage {stage}: nothing to train")
        self.strict_loading = False  # checkpoints hold the trained tensors only

    def train(self, mode: bool = True) -> IPFVRTraining:
        super().train(mode)
        for part in (self.restorer.vae, self.restorer.text, self.restorer.controlnet):
            part.eval()
        return self

    def losses(self, batch: Mapping[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``{"loss", "rec", "reward"?}`` on a batch of ``gt`` / ``lq`` ``(B, T, 3, S, S)`` in [0, 1]
        (+ ``reference`` ``(B, 3, Sr, Sr)``; without it a GT frame is the reference)."""
        r = self.restorer
        gt, lq = batch["gt"].float(), batch["lq"].float()
        clips = gt.shape[0]
        schedule = r.schedule
        references = batch.get("reference")
        if references is None:
            references = gt[:, 0]
        losses_rec, losses_reward = [], []
        for b in range(clips):
            with torch.no_grad():
                x0 = r.encode(gt[b] * 2 - 1, generator)                            # (1, 4, T, h, w)
                lq_latents = r.encode(lq[b] * 2 - 1, generator)
                hint_noise = torch.randn(lq_latents.shape, generator=generator).to(lq_latents)
                hint = schedule.diffuse(lq_latents, r.settings.noise_aug - 1, hint_noise)
                text = r.text.encode([with_quality(self.prompt or r.face2text.default_prompt)])
            t = int(torch.randint(0, len(schedule.sigmas) - 1, (1,), generator=generator))
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            x_t = schedule.diffuse(x0, t, noise)
            reference = references[b : b + 1]
            image = r.image_encoder(reference).to(text)
            context = join_context(text, image)
            timestep = torch.full((1,), t, device=x_t.device)
            down, mid = r.controlnet(x_t, timestep, text, hint=hint, hint_timestep=torch.full((1,), r.settings.noise_aug - 1),
                                     scale=torch.full((1,), r.settings.s_cond))
            v = r.unet(x_t, timestep, encoder_hidden_states=context, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid, return_dict=False)[0].float()
            target = schedule.v_from_x0_eps(x0, noise, t)
            losses_rec.append(torch.mean((v - target) ** 2))
            if self.stage == "identity" and self.reward_weight:
                x0_hat = schedule.x0_from_v(x_t, t, v)
                frames = ((r.decode(x0_hat) + 1) / 2).clamp(0, 1)
                losses_reward.append(self.reward(frames, reference.clamp(0, 1), generator=generator)["loss"])
        parts = {"rec": torch.stack(losses_rec).mean()}
        parts["loss"] = parts["rec"]
        if losses_reward:
            parts["reward"] = torch.stack(losses_reward).mean()
            parts["loss"] = parts["loss"] + self.reward_weight * parts["reward"]
        return parts

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        parts = self.losses(batch, self.step_generator(self.seed))
        self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, prog_bar=True, batch_size=batch["gt"].shape[0])
        return parts["loss"]

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr,
                                 weight_decay=self.weight_decay)

    def on_train_end(self) -> None:
        """Write what the stage trained: the identity's LoRA, or the image-prompt weights."""
        if self._trainer is not None and not self.trainer.is_global_zero:
            return
        self.save_trained(Path(self.trainer.default_root_dir) if self._trainer is not None else Path("."))

    def save_trained(self, run_dir: Path) -> Path:
        r = self.restorer
        if self.stage == "identity":
            meta = lora_meta(self.lora, base_model=r.sources.get("venhancer", ""),
                             training={"steps": int(self.global_step), "lr": self.lr, "reward_weight": self.reward_weight})
            path = save_identity_lora(self.identity_dir, self.identity, lora_state(r.unet, self.identity), meta)
            log.info("identity LoRA %s written to %s (run with method.identity=%s)", self.identity, path, self.identity)
            return path
        from safetensors.torch import save_file

        from fvr_bench.io import atomic_write_with

        state = {k: v.detach().cpu().contiguous() for k, v in image_prompt_state(r.unet, r.image_encoder.projection).items()}
        path = run_dir / "ip_fvr_image_prompt.safetensors"
        atomic_write_with(path, lambda tmp: save_file(state, tmp))
        log.info("image-prompt weights written to %s (run with method.image_prompt=%s)", path, path)
        return path

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints hold only the trained tensors (LoRA or image prompt), not the 2 B frozen ones."""
        trained = {name for name, p in self.named_parameters() if p.requires_grad}
        if isinstance(checkpoint.get("state_dict"), dict):
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}

    def init_from_previous_stage(self, state_dict: Mapping[str, torch.Tensor], previous_stage: str) -> None:
        """stage identity after stage image_prompt: take the trained image-prompt weights."""
        own = self.state_dict()
        wanted = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
        if not wanted:
            raise ConfigError(f"ip_fvr: stage {previous_stage}'s weights hold nothing this stage uses")
        self.load_state_dict(wanted, strict=False)


__all__ = ["IPFVRTraining"]
