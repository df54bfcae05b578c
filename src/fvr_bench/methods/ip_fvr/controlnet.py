"""VEnhancer's ``VideoControlNet`` rebuilt from diffusers' 3D UNet pieces.

The ControlNet is a trainable copy of the base UNet's encoder side (conv_in, transformer_in,
time embedding, down blocks, mid block — same classes, same config, same VEnhancer quirks, see
:mod:`.backbone`). It sees the same noisy latent, timestep and text as the base UNet, plus the
conditioning that VEnhancer adds:

* the noise-augmented LQ latents (``hint``), through a zero-initialised 3×3 conv added to the
  conv_in features before ``transformer_in``;
* the noise-augmentation level ``t_hint`` and the up-scaling factor ``s``, as two zero-initialised
  additions to the time embedding.

Its outputs pass through zero-initialised 1×1 convs and are added by the base UNet to every skip
connection and to the mid-block output (diffusers' ``down_block_additional_residuals`` /
``mid_block_additional_residual``). At initialisation every output is exactly zero, so the base
UNet is unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import UNet3DConditionModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_3d_blocks import (
    UNetMidBlock3DCrossAttn,
    get_down_block,
)
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.methods.ip_fvr.backbone import (
    apply_venhancer_quirks,
    check_latent_size,
    is_venhancer_model,
)

# the UNet3DConditionModel arguments the encoder side depends on (the rest — up blocks,
# out_channels, sample_size — only concern the decoder)
_ENCODER_KEYS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "downsample_padding",
                 "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
                 "attention_head_dim", "num_attention_heads", "time_cond_proj_dim")


def _unet3d_defaults() -> dict[str, Any]:
    params = inspect.signature(UNet3DConditionModel.__init__).parameters
    return {k: params[k].default for k in _ENCODER_KEYS}


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _zero_conv(channels: int) -> nn.Conv2d:
    return _zero(nn.Conv2d(channels, channels, kernel_size=1))


def _per_batch(value: Any, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar, a 0-d tensor, or a (1,) / (B,) tensor → a (B,) tensor on ``device``."""
    t = value if torch.is_tensor(value) else torch.tensor(value)
    t = t.to(device).reshape(-1)
    if t.numel() not in (1, batch):
        raise ConfigError(f"ip_fvr: a per-sample condition has {t.numel()} values for a batch of {batch}")
    return t.expand(batch)


class VideoControlNet(nn.Module):
    """VEnhancer's VideoControlNet on diffusers modules.

    Attributes (the encoder copy keeps ``UNet3DConditionModel``'s names, so
    ``from_unet`` / checkpoint conversion map one-to-one):

    ``conv_in``, ``time_proj``, ``time_embedding``, ``transformer_in``, ``down_blocks``,
    ``mid_block``
        As in the base UNet. VEnhancer: ``input_blocks.0.0`` (conv), ``input_blocks.0.1``
        (temporal transformer), ``time_embed.{0,2}`` → ``time_embedding.linear_{1,2}``,
        ``input_blocks.1…`` → ``down_blocks.*``, ``middle_block.*`` → ``mid_block.*``.
    ``hint_embedding``: ``Conv2d(hint_channels → C0, 3, padding=1)``, zero-initialised.
        VEnhancer ``input_hint_block`` (``Conv2d(4 → 320)``; its width is hard-wired to 320 = C0).
    ``hint_time_embedding``: ``Linear(4·C0 → 4·C0)``, zero-initialised. VEnhancer
        ``hint_time_zero_linear``. Its input is this ControlNet's own time embedding of the
        noise level: ``time_embedding(time_proj(t_hint))`` (VEnhancer
        ``time_embed(sinusoidal_embedding(t_hint))``: the same MLP as for ``t``, no extra weights).
    ``scale_embedding``: ``Sequential(Linear(C0 → 4·C0), SiLU, Linear(4·C0 → 4·C0))``, last
        Linear zero-initialised, fed ``time_proj(s)`` (the C0-dim [cos, sin] sinusoid). VEnhancer
        ``scale_cond`` — same indices: ``scale_cond.0`` → ``scale_embedding.0``, ``scale_cond.2`` →
        ``scale_embedding.2``.
    ``controlnet_down_blocks``: ``ModuleList`` of zero 1×1 ``Conv2d(C_i → C_i)``, one per encoder
        output (conv_in/transformer_in, every resnet, every downsampler): ``1 + levels·layers +
        (levels − 1)`` = 12 at paper scale. VEnhancer ``zero_convs.{i}.0`` (each wrapped in a
        one-element ``TimestepEmbedSequential``) → ``controlnet_down_blocks.{i}``.
    ``controlnet_mid_block``: zero 1×1 ``Conv2d(C_last → C_last)``. VEnhancer
        ``middle_block_out.0`` — built there as ``Conv2d(4·dim → 4·dim)``; 4·320 = 1280 = C_last
        at paper scale, so the shapes agree (at other widths C_last is the one that works).

    Where the conditions apply: VEnhancer adds the hint and both embeddings only on key
    frames (``mask_cond == 0``), its hint tensor holding the key frames only. Here ``hint`` has
    every frame and ``hint_mask`` (B, F) selects the frames (``None``: every frame — face
    restoration has no interpolated frames). Values of ``hint`` on unselected frames are ignored.
    """

    def __init__(self, config: Mapping[str, Any], venhancer_quirks: bool = True, hint_channels: int = 4):
        super().__init__()
        cfg = _unet3d_defaults()
        cfg.update({k: config[k] for k in _ENCODER_KEYS if k in config})
        if cfg["num_attention_heads"] is not None:
            raise ConfigError("ip_fvr: UNet3DConditionModel takes no num_attention_heads; use attention_head_dim")
        if cfg["time_cond_proj_dim"] is not None:
            raise ConfigError("ip_fvr: VEnhancer has no timestep-conditioning projection (time_cond_proj_dim)")
        self.config = dict(cfg)
        self.venhancer_quirks = bool(venhancer_quirks)
        channels = tuple(cfg["block_out_channels"])
        if len(cfg["down_block_types"]) != len(channels):
            raise ConfigError("ip_fvr: down_block_types and block_out_channels differ in length")
        c0, time_dim = channels[0], channels[0] * 4
        heads = cfg["attention_head_dim"]
        heads = (heads,) * len(channels) if isinstance(heads, int) else tuple(heads)
        self.num_downsamples = len(channels) - 1

        # --- the encoder copy (the same construction as UNet3DConditionModel's) ---
        self.conv_in = nn.Conv2d(cfg["in_channels"], c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, True, 0)
        self.time_embedding = TimestepEmbedding(c0, time_dim, act_fn=cfg["act_fn"])
        self.transformer_in = TransformerTemporalModel(
            num_attention_heads=8, attention_head_dim=cfg["attention_head_dim"], in_channels=c0, num_layers=1,
            norm_num_groups=cfg["norm_num_groups"])
        self.down_blocks = nn.ModuleList()
        out_c = c0
        for i, block_type in enumerate(cfg["down_block_types"]):
            in_c, out_c = out_c, channels[i]
            last = i == len(channels) - 1
            self.down_blocks.append(get_down_block(
                block_type, num_layers=cfg["layers_per_block"], in_channels=in_c, out_channels=out_c,
                temb_channels=time_dim, add_downsample=not last, resnet_eps=cfg["norm_eps"],
                resnet_act_fn=cfg["act_fn"], resnet_groups=cfg["norm_num_groups"],
                cross_attention_dim=cfg["cross_attention_dim"], num_attention_heads=heads[i],
                downsample_padding=cfg["downsample_padding"], dual_cross_attention=False))
        self.mid_block = UNetMidBlock3DCrossAttn(
            in_channels=channels[-1], temb_channels=time_dim, resnet_eps=cfg["norm_eps"], resnet_act_fn=cfg["act_fn"],
            output_scale_factor=cfg["mid_block_scale_factor"], cross_attention_dim=cfg["cross_attention_dim"],
            num_attention_heads=heads[-1], resnet_groups=cfg["norm_num_groups"], dual_cross_attention=False)
        if venhancer_quirks:
            apply_venhancer_quirks(self)

        # --- VEnhancer's conditioning inputs, all zero at init ---
        self.hint_embedding = _zero(nn.Conv2d(hint_channels, c0, kernel_size=3, padding=1))
        self.hint_time_embedding = _zero(nn.Linear(time_dim, time_dim))
        self.scale_embedding = nn.Sequential(nn.Linear(c0, time_dim), nn.SiLU(), _zero(nn.Linear(time_dim, time_dim)))

        # --- outputs ---
        self.controlnet_down_blocks = nn.ModuleList(_zero_conv(c) for c in controlnet_residual_channels(cfg))
        self.controlnet_mid_block = _zero_conv(channels[-1])

    # ------------------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @classmethod
    def from_unet(cls, unet: UNet3DConditionModel, hint_channels: int = 4) -> VideoControlNet:
        """A ControlNet whose encoder is a copy of ``unet``'s (weights copied, quirks as in
        ``unet``), with all added parts zero. Built on ``unet``'s device and dtype (meta → meta)."""
        device = unet.conv_in.weight.device
        with torch.device(device):
            net = cls(dict(unet.config), venhancer_quirks=is_venhancer_model(unet), hint_channels=hint_channels)
        net.to(dtype=unet.conv_in.weight.dtype)
        prefixes = ("conv_in.", "time_embedding.", "transformer_in.", "down_blocks.", "mid_block.")
        encoder = {k: v for k, v in unet.state_dict().items() if k.startswith(prefixes)}
        missing, unexpected = net.load_state_dict(encoder, strict=False)
        own = ("hint_embedding.", "hint_time_embedding.", "scale_embedding.", "controlnet_down_blocks.",
               "controlnet_mid_block.")
        wrong = [k for k in missing if not k.startswith(own)] + list(unexpected)
        if wrong:
            raise ConfigError(f"ip_fvr: the UNet's encoder does not match the ControlNet's: {wrong[:5]}")
        net.train(unet.training)
        return net

    # ------------------------------------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        hint: torch.Tensor | None = None,
        hint_timestep: torch.Tensor | float | None = None,
        scale: torch.Tensor | float | None = None,
        hint_mask: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The residuals for the base UNet.

        Args:
            sample: (B, C_in, F, h, w) noisy latents, the base UNet's own input.
            timestep: (B,) or scalar diffusion step in [0, 1000).
            encoder_hidden_states: (B, L, D) text tokens (VEnhancer: 77 × 1024).
            hint: (B, hint_channels, F, h, w) noise-augmented LQ latents (VEnhancer: the LQ
                latents diffused to ``t_hint``); ``None``: no hint.
            hint_timestep: (B,) or scalar noise-augmentation step ``t_hint`` (VEnhancer
                ``noise_aug − 1``, 199 or 249); ``None``: not added.
            scale: (B,) or scalar up-scaling factor ``s`` (float; VEnhancer v1 passes the
                up-scale truncated to an int, later versions a fixed 8); ``None``: not added.
            hint_mask: (B, F) bool, frames that receive the hint and the two embeddings;
                ``None``: every frame.
            conditioning_scale: multiplies every residual.

        Returns:
            ``(down_residuals, mid_residual)``: a tuple of (B·F, C_i, h_i, w_i) tensors, one per
            encoder output in the order of ``UNet3DConditionModel``'s skip connections, and the
            (B·F, C_last, h_n, w_n) mid residual — for
            ``unet(..., down_block_additional_residuals=down_residuals,
            mid_block_additional_residual=mid_residual)``.
        """
        batch, _, frames, h, w = sample.shape
        if self.venhancer_quirks:
            check_latent_size(h, w, self.num_downsamples)
        device, dtype = sample.device, self.dtype

        if hint_mask is None:
            frame_mask = torch.ones(batch * frames, dtype=torch.bool, device=device)
        else:
            if tuple(hint_mask.shape) != (batch, frames):
                raise ConfigError(f"ip_fvr: hint_mask must be (B, F) = {(batch, frames)}, got {tuple(hint_mask.shape)}")
            frame_mask = hint_mask.to(device=device, dtype=torch.bool).reshape(batch * frames)
        per_frame = frame_mask[:, None]                          # (B·F, 1)

        # time embedding, per frame (B·F, 4·C0) so the conditions can be added frame by frame
        t = _per_batch(timestep, batch, device)
        emb = self.time_embedding(self.time_proj(t).to(dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        if hint_timestep is not None:
            t_hint = _per_batch(hint_timestep, batch, device)
            e_hint = self.hint_time_embedding(self.time_embedding(self.time_proj(t_hint).to(dtype)))
            emb = torch.where(per_frame, emb + e_hint.repeat_interleave(frames, dim=0), emb)
        if scale is not None:
            s = _per_batch(scale, batch, device).float()
            e_scale = self.scale_embedding(self.time_proj(s).to(dtype))
            emb = torch.where(per_frame, emb + e_scale.repeat_interleave(frames, dim=0), emb)
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)

        # (B, C, F, h, w) → (B·F, C, h, w), as the UNet's 2D layers see it
        x = sample.permute(0, 2, 1, 3, 4).reshape(batch * frames, -1, h, w)
        x = self.conv_in(x)
        if hint is not None:
            if hint.shape[0] != batch or tuple(hint.shape[2:]) != (frames, h, w):
                raise ConfigError(f"ip_fvr: hint {tuple(hint.shape)} does not match the sample {tuple(sample.shape)}")
            hint_2d = hint.permute(0, 2, 1, 3, 4).reshape(batch * frames, -1, h, w).to(dtype)
            # VEnhancer adds the hint after conv_in, before the first temporal transformer
            x = torch.where(per_frame[:, :, None, None], x + self.hint_embedding(hint_2d), x)
        x = self.transformer_in(x, num_frames=frames, return_dict=False)[0]

        residuals: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=context, num_frames=frames)
            else:
                x, res = block(hidden_states=x, temb=emb, num_frames=frames)
            residuals += res
        x = self.mid_block(x, emb, encoder_hidden_states=context, num_frames=frames)

        convs = self.controlnet_down_blocks
        down = tuple(conv(r) * conditioning_scale for conv, r in zip(convs, residuals, strict=True))
        mid = self.controlnet_mid_block(x) * conditioning_scale
        return down, mid


def controlnet_residual_channels(config: Mapping[str, Any]) -> Sequence[int]:
    """The channels of each down residual, in skip-connection order: conv_in/transformer_in,
    then per level every resnet and the downsampler (not on the last level) — 12 entries at
    paper scale: 320 ×4, 640 ×3, 1280 ×3, 1280 ×2."""
    cfg = _unet3d_defaults()
    cfg.update({k: config[k] for k in _ENCODER_KEYS if k in config})
    channels = tuple(cfg["block_out_channels"])
    out = [channels[0]]
    for i, c in enumerate(channels):
        out += [c] * (cfg["layers_per_block"] + (0 if i == len(channels) - 1 else 1))
    return out
