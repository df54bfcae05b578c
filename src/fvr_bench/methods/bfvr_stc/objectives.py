"""The per-stage loss objects of BFVR-STC training (``train.stages.<s>.module.objective``).

* :class:`CodebookLearning` (stage 1): L1 + LPIPS + 0.4·hinge GAN (from iteration 2001) +
  codebook loss + 0.1·MPR on the HQ autoencoder ``E_h → quantizer → D_h``, with the DINOv2
  discriminator heads trained in alternation (manual optimisation).
* :class:`CodeLookup` (stages 2a / 2b / deflicker, which differ in their data only): the LQ
  encoder and the lookup transformers predict the code indices of the frozen stage-I network
  on the ground truth: CE(spatial) + CE(temporal) + 10·feature loss.

An objective is an ``nn.Module`` (its networks — discriminator, LPIPS — are part of the
training checkpoint, never of the restorer) with ``step(module, batch)`` (one training step
on the training module, returning the loss to log / backpropagate), ``optimizers(module, lr,
betas)`` and ``manual_optimization``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fvr_bench import weights
from fvr_bench.methods.bfvr_stc.discriminator import DinoDiscriminator
from fvr_bench.methods.bfvr_stc.losses import hinge_discriminator_loss, hinge_generator_loss, index_cross_entropy


def build_discriminator(pretrained: bool = True, weights_path: str | Path | None = None,
                        **options: Any) -> DinoDiscriminator:
    """The DINOv2 discriminator; ``pretrained``: its backbone from the registry
    (``dinov2_vits14``, or ``weights_path``); false: random (tests)."""
    discriminator = DinoDiscriminator(**options)
    if pretrained:
        discriminator.load_backbone(weights.locate("dinov2_vits14", weights_path))
    return discriminator


def frames_of(video: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W)`` → ``(B·T, 3, H, W)``."""
    return video.transpose(1, 2).reshape(-1, video.shape[1], *video.shape[-2:])


class CodebookLearning(nn.Module):
    """Stage I: the generator step (E_h, codebooks, temporal attention, D_h), then the
    discriminator-head step; ``discriminator_lr`` null = the stage's lr."""

    manual_optimization = True

    def __init__(self, discriminator: DinoDiscriminator, perceptual: nn.Module, l1_weight: float = 1.0,
                 perceptual_weight: float = 1.0, gan_weight: float = 0.4, gan_start_step: int = 2001,
                 codebook_weight: float = 1.0, mpr_weight: float = 0.1, discriminator_lr: float | None = None) -> None:
        super().__init__()
        self.discriminator, self.perceptual = discriminator, perceptual
        self.weights = {"l1": float(l1_weight), "lpips": float(perceptual_weight), "gan_g": float(gan_weight),
                        "codebook": float(codebook_weight), "mpr": float(mpr_weight)}
        self.gan_start_step = int(gan_start_step)
        self.discriminator_lr = discriminator_lr

    def losses(self, module, gt: torch.Tensor, adversarial: bool) -> dict[str, Any]:
        """Generator side on GT ``(B, 3, T, H, W)``: every term, the weighted ``loss``, the
        ``reconstruction`` and the quantizer output ``quantized``."""
        reconstruction, quantized = module.reconstruct(gt)
        # a zero-weighted LPIPS would still cost a VGG16 forward and backward per frame
        lpips = self.perceptual(reconstruction, gt) if self.weights["lpips"] > 0 else torch.zeros((), device=gt.device)
        terms = {"l1": (reconstruction - gt).abs().mean(), "lpips": lpips,
                 "codebook": quantized.codebook_loss, "mpr": quantized.mpr}
        terms["gan_g"] = (hinge_generator_loss(self.discriminator(frames_of(reconstruction))) if adversarial
                          else torch.zeros((), device=gt.device))
        terms["loss"] = sum(self.weights[name] * terms[name] for name in ("l1", "lpips", "codebook", "mpr"))
        if adversarial:
            terms["loss"] = terms["loss"] + self.weights["gan_g"] * terms["gan_g"]
        return {**terms, "reconstruction": reconstruction, "quantized": quantized}

    def step(self, module, batch: Mapping[str, Any]) -> torch.Tensor:
        gt, _ = module.videos(batch)
        generator_opt, discriminator_opt = module.optimizers()
        adversarial = self.weights["gan_g"] > 0 and module.global_step >= self.gan_start_step

        module.toggle_optimizer(generator_opt)
        out = self.losses(module, gt, adversarial)
        generator_opt.zero_grad()
        module.manual_backward(out["loss"])
        generator_opt.step()
        module.untoggle_optimizer(generator_opt)

        if adversarial:
            module.toggle_optimizer(discriminator_opt)
            real = self.discriminator(frames_of(gt))
            fake = self.discriminator(frames_of(out["reconstruction"].detach()))
            discriminator_loss = hinge_discriminator_loss(real, fake)
            discriminator_opt.zero_grad()
            module.manual_backward(discriminator_loss)
            # The raw optimizer: Lightning counts every LightningOptimizer.step() as a global
            # step, which would make max_steps (and the GAN start) count 2 per iteration.
            discriminator_opt.optimizer.step()
            module.untoggle_optimizer(discriminator_opt)
            module.log("train/d_loss", discriminator_loss.detach())

        module.log_dict({f"train/{name}": out[name].detach() for name in ("loss", "l1", "lpips", "codebook", "mpr", "gan_g")})
        module.track_usage(out["quantized"].spatial_indices, out["quantized"].temporal_indices)
        return out["loss"].detach()

    def optimizers(self, module, lr: float, betas: Sequence[float]) -> list[torch.optim.Optimizer]:
        own = {id(p) for p in self.parameters()}
        generator = [p for p in module.parameters() if p.requires_grad and id(p) not in own]
        return [torch.optim.Adam(generator, lr=lr, betas=tuple(betas)),
                torch.optim.Adam(self.discriminator.heads.parameters(), lr=float(self.discriminator_lr or lr),
                                 betas=tuple(betas))]

    def check_precision(self, trainer) -> None:
        from fvr_bench.errors import ConfigError

        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ConfigError("BFVR-STC stage 1 steps its discriminator outside Lightning's loss scaler; use "
                              "train.stages.1.precision=32-true or bf16-mixed, not 16-mixed")


class CodeLookup(nn.Module):
    """Stage II: CE(spatial indices) + CE(temporal indices) + ``feature_weight``·‖E_l(y) − z_q(x)‖²."""

    manual_optimization = False

    def __init__(self, spatial_ce_weight: float = 1.0, temporal_ce_weight: float = 1.0,
                 feature_weight: float = 10.0) -> None:
        super().__init__()
        self.weights = {"ce_spatial": float(spatial_ce_weight), "ce_temporal": float(temporal_ce_weight),
                        "feature": float(feature_weight)}

    def losses(self, module, gt: torch.Tensor, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """On GT and LQ ``(B, 3, T, H, W)``: the terms, the weighted ``loss``, the index
        accuracies and the GT indices (``spatial_indices``, ``temporal_indices``)."""
        restorer = module.restorer
        with torch.no_grad():
            target = restorer.quantizer(module.hq_encoder(gt), with_mpr=False)
        latent, spatial_logits, temporal_logits = restorer.code_logits(lq)
        terms = {"ce_spatial": index_cross_entropy(spatial_logits, target.spatial_indices),
                 "ce_temporal": index_cross_entropy(temporal_logits, target.temporal_indices),
                 "feature": (latent.float() - target.latent.float()).square().mean()}
        terms["loss"] = sum(self.weights[name] * terms[name] for name in ("ce_spatial", "ce_temporal", "feature"))
        with torch.no_grad():
            terms["accuracy_spatial"] = (spatial_logits.argmax(-1) == target.spatial_indices).float().mean()
            terms["accuracy_temporal"] = (temporal_logits.argmax(-1) == target.temporal_indices).float().mean()
        return {**terms, "spatial_indices": target.spatial_indices, "temporal_indices": target.temporal_indices}

    def step(self, module, batch: Mapping[str, Any]) -> torch.Tensor:
        gt, lq = module.videos(batch)
        out = self.losses(module, gt, lq)
        module.log_dict({f"train/{name}": out[name].detach() for name in
                         ("loss", "ce_spatial", "ce_temporal", "feature", "accuracy_spatial", "accuracy_temporal")})
        module.track_usage(out["spatial_indices"], out["temporal_indices"])
        return out["loss"]

    def optimizers(self, module, lr: float, betas: Sequence[float]) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr, betas=tuple(betas))

    def check_precision(self, trainer) -> None:
        return None
