"""SVFR's networks, built from the SVD-xt folder or from constructor arguments (test sizes).

* UNet: diffusers ``UNetSpatioTemporalConditionModel`` with 12 input channels (noisy latent |
  LQ latent | reference latent). SVD-xt's ``unet/config.json`` gives the architecture; the
  task prompt goes through its added-time embedding, so the config must have
  ``projection_class_embeddings_input_dim == 3 · addition_time_embed_dim``.
* VAE: ``AutoencoderKLTemporalDecoder`` (``vae/``, fp16 variant when present).
* Scheduler: ``EulerDiscreteScheduler`` (``scheduler/``, or a config mapping).

Everything a weights file will overwrite is built on the meta device (no float32 copy of a
1.5 B-parameter UNet is ever materialised just to be replaced).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fvr_bench import weights as weight_registry
from fvr_bench.errors import ConfigError, WeightsMissingError

# SVD-xt's unet/config.json (stabilityai/stable-video-diffusion-img2vid-xt) — what the release's unet.pth
# was trained from; for meta-device layout checks and the paper-scale benchmark (random weights)
SVD_XT_UNET = {"sample_size": 96, "in_channels": 8, "out_channels": 4,
                   "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
                   "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
                   "block_out_channels": [320, 640, 1280, 1280], "addition_time_embed_dim": 256,
                   "projection_class_embeddings_input_dim": 768, "layers_per_block": 2, "cross_attention_dim": 1024,
                   "transformer_layers_per_block": 1, "num_attention_heads": [5, 10, 20, 20], "num_frames": 25}
# SVD-xt's vae/config.json (AutoencoderKLTemporalDecoder): 8× spatial, 4 latent channels
SVD_XT_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
                  "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4, "sample_size": 768,
                  "scaling_factor": 0.18215, "force_upcast": True}

IN_CHANNELS = 12        # noisy | LQ | reference latents
SVD_IN_CHANNELS = 8     # SVD-xt's own conv_in (noisy | conditioning frame)
TASK_DIMS = 3           # BFR, colorization, inpainting


def locate_svd_dir(svd_dir: str | Path | None) -> Path:
    """The SVD-xt diffusers folder (``svd_dir`` or the weights registry's ``svd_xt_diffusers``)."""
    path = weight_registry.find("svd_xt_diffusers", svd_dir)
    if path is None or not path.is_dir():
        raise WeightsMissingError(weight_registry.missing_message("svd_xt_diffusers", svd_dir))
    return path


def unet_config(unet: Mapping | None, svd_dir: Path | None) -> dict[str, Any]:
    """UNet constructor arguments: ``unet`` (test sizes) or SVD-xt's ``unet/config.json``, with 12 input channels."""
    if unet is not None:
        config = dict(unet)
    else:
        path = svd_dir / "unet" / "config.json"
        if not path.is_file():
            raise WeightsMissingError(f"{path} is missing: the SVD-xt folder must hold unet/config.json")
        config = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    config["in_channels"] = IN_CHANNELS
    projection = config.get("projection_class_embeddings_input_dim", 768)
    if projection != TASK_DIMS * config.get("addition_time_embed_dim", 256):
        raise ConfigError(f"svfr: the UNet's projection_class_embeddings_input_dim ({projection}) must be 3 × "
                          f"addition_time_embed_dim: the 3-task prompt replaces SVD's 3 added-time ids")
    return config


def build_unet(config: Mapping[str, Any], device: str | torch.device = "cpu", seed: int = 0) -> nn.Module:
    """A ``UNetSpatioTemporalConditionModel``: seeded random weights on ``device``, or parameter
    placeholders on ``"meta"`` (to be loaded with ``assign=True``)."""
    from diffusers import UNetSpatioTemporalConditionModel

    if str(device) == "meta":
        with torch.device("meta"):
            return UNetSpatioTemporalConditionModel(**config)
    torch.manual_seed(seed)
    return UNetSpatioTemporalConditionModel(**config)


def widen_conv_in(unet: nn.Module) -> nn.Module:
    """SVD-xt's 8-channel ``conv_in`` → 12 channels, the 4 new input channels zero (as the
    official code does): at the start the reference latent has no effect."""
    old = unet.conv_in
    if old.in_channels == IN_CHANNELS:
        return unet
    if old.in_channels != SVD_IN_CHANNELS:
        raise ConfigError(f"svfr: cannot widen a conv_in of {old.in_channels} input channels (SVD-xt has 8)")
    new = nn.Conv2d(IN_CHANNELS, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :SVD_IN_CHANNELS] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.to(old.weight.device, old.weight.dtype)
    unet.conv_in = new
    unet.register_to_config(in_channels=IN_CHANNELS)
    return unet


def pretrained_svd_unet(svd_dir: Path) -> nn.Module:
    """SVD-xt's own UNet weights (float32), conv_in widened to 12: where training starts."""
    from diffusers import UNetSpatioTemporalConditionModel

    variant = "fp16" if any((svd_dir / "unet").glob("*.fp16.*")) else None
    unet = UNetSpatioTemporalConditionModel.from_pretrained(svd_dir, subfolder="unet", variant=variant,
                                                            torch_dtype=torch.float32)
    return widen_conv_in(unet)


def build_vae(vae: Mapping | None, svd_dir: Path | None, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """``AutoencoderKLTemporalDecoder``: SVD-xt's ``vae/`` (fp16 variant when present) or seeded random of ``vae`` size."""
    from diffusers import AutoencoderKLTemporalDecoder

    if vae is not None:
        torch.manual_seed(seed + 1)
        return AutoencoderKLTemporalDecoder(**dict(vae))
    variant = "fp16" if any((svd_dir / "vae").glob("*.fp16.*")) else None
    return AutoencoderKLTemporalDecoder.from_pretrained(svd_dir, subfolder="vae", variant=variant, torch_dtype=dtype)


def build_scheduler(scheduler: Mapping | None, svd_dir: Path | None):
    """``EulerDiscreteScheduler`` from a config mapping or SVD-xt's ``scheduler/``."""
    from diffusers import EulerDiscreteScheduler

    if scheduler is not None:
        return EulerDiscreteScheduler.from_config(dict(scheduler))
    return EulerDiscreteScheduler.from_pretrained(svd_dir, subfolder="scheduler")


__all__ = ["IN_CHANNELS", "SVD_XT_UNET", "SVD_XT_VAE", "build_scheduler", "build_unet", "build_vae", "locate_svd_dir", "pretrained_svd_unet",
           "unet_config", "widen_conv_in"]
