"""Stage-I discriminator: frozen DINOv2 ViT-S/14 features + trainable linear heads.

Official ``VQGANDiscriminator3D``: every frame is resized (nearest) to 224², the frozen
DINOv2 backbone gives the normalised CLS token (384-d for ViT-S/14), and three linear
heads ``384 → 1``, ``384 → 2``, ``384 → 4`` each give one logit per frame (the mean of
their outputs); the three logit vectors are concatenated, so the hinge losses average
over all of them.

The backbone is timm's ``vit_small_patch14_dinov2`` architecture built with
``pretrained=False``; the weights are Meta's ``dinov2_vits14_pretrain.pth`` (registry entry
``dinov2_vits14``), converted by timm's ``checkpoint_filter_fn`` (drops ``mask_token``,
resamples the 37×37 position grid to the 16×16 grid of a 224² input). Tests use random
backbone weights (``pretrained: false``) and smaller ``backbone_overrides``.

Two corrections to the official code, each with a switch to reproduce it:

* ``gradient_through_backbone`` (default true): the official forward runs the backbone
  under ``torch.no_grad()``, so the generator's adversarial term has no gradient at all
  (the GAN weight 0.4 then changes nothing). Here the backbone is frozen (no parameter
  updates) but differentiable with respect to its input.
* ``imagenet_normalize`` (default true): the official code feeds [0, 1] frames to DINOv2,
  which was trained on ImageNet-normalised input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoDiscriminator(nn.Module):
    """Frames ``(N, 3, H, W)`` in [0, 1] → logits ``(len(head_outputs)·N,)``."""

    def __init__(self, backbone: str = "vit_small_patch14_dinov2", image_size: int = 224,
                 head_outputs: Sequence[int] = (1, 2, 4), backbone_overrides: dict | None = None,
                 imagenet_normalize: bool = True, gradient_through_backbone: bool = True, resize_mode: str = "nearest") -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.imagenet_normalize = imagenet_normalize
        self.gradient_through_backbone = gradient_through_backbone
        self.resize_mode = resize_mode
        try:
            self.backbone = timm.create_model(backbone, pretrained=False, img_size=self.image_size, num_classes=0,
                                              **dict(backbone_overrides or {}))
        except (RuntimeError, TypeError) as error:
            raise ConfigError(f"module.discriminator.backbone={backbone!r} with overrides {backbone_overrides}: {error}") from error
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        features = self.backbone.num_features
        self.heads = nn.ModuleList(nn.Linear(features, n) for n in head_outputs)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> DinoDiscriminator:
        """The backbone stays in eval mode: it is a fixed feature extractor."""
        super().train(mode)
        self.backbone.eval()
        return self

    def load_backbone(self, path: str | Path) -> None:
        """Load DINOv2's released state dict (official key names) into the timm backbone."""
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ConfigError(f"{path}: expected a DINOv2 state dict, got {type(state).__name__}")
        try:
            converted = checkpoint_filter_fn(dict(state), self.backbone)
            missing, unexpected = self.backbone.load_state_dict(converted, strict=False)
        except (RuntimeError, KeyError, ValueError) as error:  # shapes of another ViT size
            raise ConfigError(f"{path}: not a DINOv2 checkpoint of this backbone ({error}); "
                              f"module.discriminator.backbone must match the file") from error
        if missing or unexpected:
            raise ConfigError(f"{path}: not a DINOv2 checkpoint of this backbone (missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}); module.discriminator.backbone must match the file")
        self.backbone.requires_grad_(False)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] → the normalised CLS token ``(N, num_features)``."""
        x = F.interpolate(frames, size=(self.image_size, self.image_size), mode=self.resize_mode)
        if self.imagenet_normalize:
            x = (x - self.mean) / self.std
        context = contextlib.nullcontext() if self.gradient_through_backbone else torch.no_grad()
        with context:
            return self.backbone(x).float()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        tokens = self.features(frames)
        return torch.cat([head(tokens).mean(dim=1) for head in self.heads], dim=0)
