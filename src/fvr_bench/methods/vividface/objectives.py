"""The per-stage loss objects of VividFace training (``train.stages.<s>.module.objective``).

* :class:`LatentFaceLoss` (stage "1"): the one step ẑ_h regressed on the GT latent z_h with the
  face-focused switch loss (:mod:`.losses`) and the latent face mask of
  :func:`.masks.align_mask_to_latents`.
* :class:`PixelFaceLoss` (stage "2"): ẑ_h decoded through the frozen VAE decoder; the switch
  loss on pixels (pixel face mask) + ``dists_weight``·DISTS.
* :class:`VAEReconstruction` (stage "vae", not in the paper): a VAE built from constructor
  arguments trained as an autoencoder on GT windows (L1 + ``kl_weight``·KL).

An objective has ``loss(module, batch, use_mask)`` → (loss, parts), ``draw()`` (the switch's
b ~ Bernoulli(p); the VAE objective has no switch) and, when it trains on pre-extractable
inputs, ``extract(module, gt, lq)`` (what :meth:`.training.VividFaceTraining.training_inputs`
caches). Its loss networks (DISTS) are kept out of the module tree: never in checkpoints.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from fvr_bench import weights
from fvr_bench.errors import ConfigError
from fvr_bench.methods.base import resize_video
from fvr_bench.methods.vividface.backbone import decode_latents, encode_frames
from fvr_bench.methods.vividface.losses import MaskSwitch, dists_loss, face_focused_mse
from fvr_bench.methods.vividface.masks import align_mask_to_latents, face_masks

log = logging.getLogger(__name__)


class VAEReconstruction(nn.Module):
    """Stage "vae": L1 + ``kl_weight``·KL on GT windows (per-sample sums, as LDM-style VAEs weigh it)."""

    uses_mask = False
    extract = None  # reads frames: nothing to pre-extract

    def __init__(self, kl_weight: float = 1e-6) -> None:
        super().__init__()
        self.kl_weight = float(kl_weight)
        if self.kl_weight < 0:
            raise ConfigError(f"vividface: kl_weight must be >= 0, got {kl_weight}")

    def draw(self) -> bool:
        return False

    def reseed(self, seed: int) -> None:
        return None

    def loss(self, module, batch: dict, use_mask: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """GT ``(B, 1 + 4k, 3, S, S)`` in [0, 1] → (loss, parts).

        The VAE sees ``(B, 3, T, S, S)`` in [−1, 1]; a posterior **sample** is decoded (the
        reparameterised training of a VAE). Loss = mean |x − x̂| (in [−1, 1]) + ``kl_weight`` ·
        KL(q(z|x) ‖ N(0, I)) summed over the latent and divided by the pixel count: the per-sample
        sums of LDM-style VAE training, both divided by the same number.
        """
        gt = batch["gt"]
        module.check_training_clip(gt)
        vae = module.restorer.vae
        video = gt.float().permute(0, 2, 1, 3, 4) * 2.0 - 1.0
        posterior = vae.encode(video).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        l1 = (reconstruction - video).abs().mean()
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar)
        kl_per_pixel = kl.flatten(1).sum(1).mean() / video[0].numel()
        loss = l1 + self.kl_weight * kl_per_pixel
        return loss, {"l1": l1.detach(), "kl": kl_per_pixel.detach()}


class LatentFaceLoss(nn.Module):
    """Stage "1": ``b·‖M⊙(ẑ_h − z_h)‖² + (1 − b)·‖ẑ_h − z_h‖²`` with the latent face mask M and
    ``b ~ Bernoulli(mask_probability)`` drawn once per step (:class:`.losses.MaskSwitch`)."""

    uses_mask = True

    def __init__(self, mask_probability: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.mask_switch = MaskSwitch(mask_probability, seed)

    def draw(self) -> bool:
        return self.mask_switch.draw()

    def reseed(self, seed: int) -> None:
        self.mask_switch.reseed(seed)

    @torch.no_grad()
    def extract(self, module, gt: torch.Tensor, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """``lq_latent``, ``gt_latent`` ``(B, 16, T', S/8, S/8)`` and ``mask`` (latent face mask, one
        channel ``(B, 1, T', S/8, S/8)``) from GT ``(B, T, 3, S, S)`` and LQ (bicubic-resized to S first)."""
        vae = module.restorer.vae
        lq = resize_video(lq.float(), tuple(gt.shape[-2:]), mode="bicubic")
        pixel_mask = face_masks(module.parser, gt)
        return {"lq_latent": encode_frames(vae, lq), "gt_latent": encode_frames(vae, gt.float()),
                "mask": align_mask_to_latents(pixel_mask, channels=1)}

    def loss(self, module, batch: dict, use_mask: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = module.training_inputs(batch)
        prediction = module.restorer.one_step(inputs["lq_latent"])
        mask = inputs["mask"].expand_as(prediction)
        loss = face_focused_mse(prediction, inputs["gt_latent"], mask, use_mask)
        return loss, {"latent_mse": loss.detach()}


class PixelFaceLoss(LatentFaceLoss):
    """Stage "2": ẑ_h decoded by the frozen VAE; the switch loss on frames with the pixel face
    mask + ``dists_weight``·DISTS (``pretrained``: its released weights; false: random, tests)."""

    def __init__(self, mask_probability: float = 0.5, dists_weight: float = 0.1, pretrained: bool = True,
                 seed: int = 0) -> None:
        super().__init__(mask_probability, seed)
        self.dists_weight = float(dists_weight)
        self.pretrained = bool(pretrained)
        self._loss_networks: dict[str, nn.Module] = {}  # not submodules: never in checkpoints

    def dists(self, device: torch.device) -> nn.Module:
        net = self._loss_networks.get("dists")
        if net is None:
            from fvr_bench.metrics.perceptual import build_dists_net

            if self.pretrained:
                alpha_beta = torch.load(weights.locate("dists_alpha_beta"), map_location="cpu", weights_only=True)
                backbone = torch.load(weights.locate("torchvision_vgg16"), map_location="cpu", weights_only=True)
            else:
                log.warning("vividface: DISTS loss with RANDOM weights (pretrained_losses: false) — tests only")
                alpha_beta = backbone = None
            net = self._loss_networks["dists"] = build_dists_net(alpha_beta, backbone)
        return net.to(device)

    @torch.no_grad()
    def extract(self, module, gt: torch.Tensor, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """``lq_latent`` and ``mask`` (pixel face mask ``(B, T, 1, S, S)`` bool)."""
        lq = resize_video(lq.float(), tuple(gt.shape[-2:]), mode="bicubic")
        return {"lq_latent": encode_frames(module.restorer.vae, lq), "mask": face_masks(module.parser, gt)}

    def loss(self, module, batch: dict, use_mask: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = module.training_inputs(batch)
        prediction = module.restorer.one_step(inputs["lq_latent"])
        gt = batch["gt"].float()
        frames = decode_latents(module.restorer.vae, prediction)[:, : gt.shape[1]]
        pixel = face_focused_mse(frames, gt, inputs["mask"], use_mask)
        parts = {"pixel_mse": pixel.detach()}
        loss = pixel
        if self.dists_weight > 0:
            perceptual = dists_loss(self.dists(gt.device), frames, gt)
            parts["dists"] = perceptual.detach()
            loss = loss + self.dists_weight * perceptual
        return loss, parts
