"""IP-FVR's base video UNet: diffusers ``UNet3DConditionModel`` with VEnhancer's quirks.

VEnhancer's ``Vid2VidSDUNet`` (the ModelScope video-to-video UNet) and diffusers'
``UNet3DConditionModel`` (the ModelScope text-to-video port) share the block layout: conv_in →
8-head temporal transformer → 4 levels of [ResNet + temporal conv (+ spatial + temporal
transformer)] with 3 downsamplers → mid block → mirrored decoder. ``build_unet`` builds the stock
diffusers model and then applies what VEnhancer does differently (``venhancer_quirks=True``):

(a) **Downsample padding (2, 1)**: every ``Downsample2D`` conv (3×3, stride 2) pads H by 2 and
    W by 1 instead of 1 and 1, so a level's height grows by one: ``H → H/2 + 1``.
(b) **Row-crop upsample**: nearest ×2, then the first and last rows are dropped
    (``x[..., 1:-1, :]``), then the 3×3 conv: ``H → 2H − 2``, which undoes (a) exactly. The
    replacement module keeps the conv under the name ``conv``, so state-dict keys do not change.
(c) **Linear proj_in / proj_out** in the spatial transformers (VEnhancer ``use_linear=True``).
    diffusers 0.42's 3D blocks already default to ``use_linear_projection=True``; the quirk
    converts any 1×1-conv projection that another diffusers version may build (same weights,
    reshaped ``[C, C, 1, 1] → [C, C]``), so the result does not depend on that default.

Attention heads need no change: ``UNet3DConditionModel`` hands ``attention_head_dim`` to its
blocks as ``num_attention_heads``, and the blocks pass it on positionally *as the head width*
(``Transformer2DModel(C // n, n)``; the naming mix-up of diffusers issue #2011). With
``attention_head_dim=64`` every block transformer therefore has ``C / 64`` heads of 64 and
``transformer_in`` 8 heads of 64 (512 wide) — exactly VEnhancer's ``head_dim=64``.

Legal latent sizes with (a)+(b): with ``n`` downsamplers every level's height and width must be
even before it is downsampled. Width: ``w % 2**n == 0``. Height: ``h`` even for ``n = 1``,
``h ≡ 2 (mod 2**n)`` for ``n ≥ 2`` (paper scale, n = 3: ``h ≡ 2 (mod 8)``, pixels ``H ≡ 16
(mod 64)``, e.g. 720 → latent 90, 528 → 66; 512 → 64 is *not* legal). See
:func:`legal_latent_size` and :func:`nearest_legal_latent_size`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet3DConditionModel
from diffusers.models.downsampling import Downsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import nn

from fvr_bench.errors import ConfigError

# VEnhancer's Vid2VidSDUNet defaults as UNet3DConditionModel arguments (dim 320, dim_mult
# [1, 2, 4, 4], 2 res blocks, attention at the 3 upper levels, context 1024, head_dim 64, GroupNorm 32).
# attention_head_dim ends up as the head width (see the module docstring): 5/10/20/20 heads of 64.
VENHANCER_UNET: Mapping[str, Any] = MappingProxyType({
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    "up_block_types": ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
    "norm_num_groups": 32,
})

# Tests: two levels (one downsampler), 8/16 channels. GroupNorm 4 divides both widths;
# attention_head_dim 4 → transformer_in 8 heads × 4 (32 wide) and block transformers 2 / 4 heads of 4.
TINY_UNET: Mapping[str, Any] = MappingProxyType({
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (8, 16),
    "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
    "layers_per_block": 1,
    "cross_attention_dim": 8,
    "attention_head_dim": 4,
    "norm_num_groups": 4,
})

DOWNSAMPLE_PADDING = (2, 1)     # (H, W), VEnhancer Downsample


# ----------------------------------------------------------------------------------------------
# legal sizes
# ----------------------------------------------------------------------------------------------

def legal_latent_size(h: int, w: int, num_downsamples: int) -> bool:
    """Whether a latent of ``h × w`` round-trips through ``num_downsamples`` VEnhancer
    down/up-samplings, i.e. every skip connection meets a decoder tensor of its own size.

    A level of height ``x`` is downsampled to ``x // 2 + 1`` (padding 2, stride 2, kernel 3;
    exact for even ``x``) and upsampled back to ``2·(x//2 + 1) − 2``, which equals ``x`` only
    when ``x`` is even. Widths halve (padding 1) and double, so they must be even at each level.
    ``num_downsamples`` = ``len(block_out_channels) − 1`` (3 at paper scale).
    """
    if h <= 0 or w <= 0 or num_downsamples < 0:
        return False
    for _ in range(num_downsamples):
        if h % 2 or w % 2:
            return False
        h, w = h // 2 + 1, w // 2
    return True


def nearest_legal_latent_size(h: int, w: int, num_downsamples: int) -> tuple[int, int]:
    """The smallest legal ``(h', w')`` with ``h' ≥ h`` and ``w' ≥ w`` (pad the latent — or the
    frames, ×8 — up to it). Closed form: ``w' = ceil(w / 2**n)·2**n``; ``h'`` the next even
    number for ``n = 1``, the next ``h' ≡ 2 (mod 2**n)`` for ``n ≥ 2``."""
    step = 2 ** num_downsamples
    w_legal = -(-max(w, 1) // step) * step
    h_legal = max(h, 1)
    while not legal_latent_size(h_legal, w_legal, num_downsamples):
        h_legal += 1
    return h_legal, w_legal


def check_latent_size(h: int, w: int, num_downsamples: int) -> None:
    """Raise ``ConfigError`` with the nearest legal size when ``h × w`` is not legal."""
    if not legal_latent_size(h, w, num_downsamples):
        hl, wl = nearest_legal_latent_size(h, w, num_downsamples)
        raise ConfigError(
            f"ip_fvr: latent size {h}×{w} does not fit VEnhancer's resampling ({num_downsamples} "
            f"downsamplers with padding (2, 1) and row-cropping upsamplers): the width must be a "
            f"multiple of {2 ** num_downsamples} and the height ≡ 2 (mod {2 ** num_downsamples}) "
            f"(even for 1 downsampler). Pad to {hl}×{wl} (frames {8 * hl}×{8 * wl} px).")


# ----------------------------------------------------------------------------------------------
# the quirks
# ----------------------------------------------------------------------------------------------

class RowCropUpsample2D(Upsample2D):
    """VEnhancer's ``Upsample``: nearest ×2, drop the first and last rows, 3×3 conv.

    Input (N, C, h, w) → output (N, C_out, 2h − 2, 2w). ``output_size`` (what diffusers' up
    blocks pass as ``upsample_size`` when the input is not a multiple of ``2**n``) is not used
    to resize — at a legal size it already equals the result — but checked, so an illegal size
    fails here with a clear message instead of in a later ``torch.cat``.
    """

    @classmethod
    def replacing(cls, up: nn.Module) -> RowCropUpsample2D:
        """A ``RowCropUpsample2D`` that takes over ``up``'s conv (same module, same weights)."""
        if getattr(up, "use_conv_transpose", False) or not getattr(up, "use_conv", False) or up.name != "conv":
            raise ConfigError("ip_fvr: only a conv Upsample2D (name 'conv') can take VEnhancer's row crop")
        # built on meta: its own conv is thrown away at once, so never allocate it
        with torch.device("meta"):
            new = cls(up.channels, use_conv=True, out_channels=up.out_channels, name="conv")
        new.conv = up.conv
        new.train(up.training)
        return new

    def forward(self, hidden_states: torch.Tensor, output_size: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert hidden_states.shape[1] == self.channels
        dtype = hidden_states.dtype
        # nearest upsampling in float32 for bfloat16 inputs (as diffusers' Upsample2D does on old torch)
        x = hidden_states.float() if dtype == torch.bfloat16 else hidden_states
        x = F.interpolate(x, scale_factor=2.0, mode="nearest").to(dtype)
        x = x[..., 1:-1, :]
        if output_size is not None and tuple(x.shape[-2:]) != tuple(int(s) for s in output_size):
            raise ConfigError(
                f"ip_fvr: row-crop upsampling gives {tuple(x.shape[-2:])} but the skip connection is "
                f"{tuple(output_size)}: the latent size is not legal for VEnhancer's resampling "
                f"(see fvr_bench.methods.ip_fvr.backbone.legal_latent_size)")
        return self.conv(x)


def apply_downsample_padding(module: nn.Module, padding: tuple[int, int] = DOWNSAMPLE_PADDING) -> int:
    """Quirk (a): set every ``Downsample2D`` conv's padding to ``padding`` (H, W). Returns the count."""
    count = 0
    for m in module.modules():
        if isinstance(m, Downsample2D):
            if not isinstance(m.conv, nn.Conv2d):
                raise ConfigError("ip_fvr: VEnhancer's downsampler is a conv; this Downsample2D is a pool")
            # F.conv2d reads Conv2d.padding at call time; Downsample2D.padding only gates its
            # extra asymmetric pad for padding == 0, which must stay off
            m.conv.padding = tuple(padding)
            m.padding = tuple(padding)
            count += 1
    return count


def apply_row_crop_upsample(unet: nn.Module) -> int:
    """Quirk (b): replace each ``up_blocks[i].upsamplers[0]`` by a :class:`RowCropUpsample2D`."""
    count = 0
    for block in getattr(unet, "up_blocks", ()):
        ups = getattr(block, "upsamplers", None)
        if ups is None:
            continue
        for k, up in enumerate(ups):
            if not isinstance(up, RowCropUpsample2D):
                ups[k] = RowCropUpsample2D.replacing(up)
            count += 1
    return count


def apply_linear_projection(module: nn.Module) -> int:
    """Quirk (c): make every spatial ``Transformer2DModel`` use Linear proj_in / proj_out.

    A 1×1 Conv2d projection is replaced by a Linear holding the same weights, and the
    transformer's flag is flipped so its forward projects after flattening to tokens (B·F, h·w, C).
    Already-linear transformers (the diffusers 0.42 default) are left as they are.
    """
    count = 0
    for m in module.modules():
        if not isinstance(m, Transformer2DModel) or not m.is_input_continuous:
            continue
        for name in ("proj_in", "proj_out"):
            conv = getattr(m, name)
            if isinstance(conv, nn.Conv2d):
                if conv.kernel_size != (1, 1):
                    raise ConfigError(f"ip_fvr: {name} is a {conv.kernel_size} conv, expected 1×1")
                w = conv.weight
                lin = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                                device=w.device, dtype=w.dtype)
                with torch.no_grad():
                    lin.weight.copy_(w.reshape(conv.out_channels, conv.in_channels))
                    if conv.bias is not None:
                        lin.bias.copy_(conv.bias)
                lin.train(conv.training)
                setattr(m, name, lin)
        m.use_linear_projection = True
        # keep the model's own config truthful (Transformer2DModel is a ConfigMixin)
        m.register_to_config(use_linear_projection=True)
        count += 1
    return count


def apply_venhancer_quirks(module: nn.Module) -> None:
    """The three quirks on a UNet or on a ControlNet encoder (which has no upsamplers)."""
    apply_downsample_padding(module)
    apply_row_crop_upsample(module)
    apply_linear_projection(module)


def is_venhancer_model(module: nn.Module) -> bool:
    """Whether ``module`` carries the quirks (its downsamplers pad (2, 1))."""
    return any(isinstance(m, Downsample2D) and tuple(m.conv.padding) == DOWNSAMPLE_PADDING for m in module.modules())


def _check_size_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook on a quirked UNet: reject illegal latent sizes before any compute."""
    sample = args[0] if args else kwargs.get("sample")
    if sample is not None:
        check_latent_size(int(sample.shape[-2]), int(sample.shape[-1]), len(module.down_blocks) - 1)


def build_unet(config: Mapping[str, Any], venhancer_quirks: bool = True) -> UNet3DConditionModel:
    """The base video UNet: ``UNet3DConditionModel(**config)``, then VEnhancer's quirks.

    ``config``: ``UNet3DConditionModel`` arguments (:data:`VENHANCER_UNET`, :data:`TINY_UNET`).
    Built on the current default device: wrap in ``with torch.device("meta"):`` for a
    weight-less layout (then load with ``assign=True``).

    Forward as diffusers': ``sample`` (B, 4, F, h, w) latents, ``timestep`` (B,) or scalar in
    [0, 1000), ``encoder_hidden_states`` (B, L, D) text tokens → ``.sample`` (B, 4, F, h, w)
    (v-prediction for VEnhancer). With quirks, ``(h, w)`` must pass :func:`legal_latent_size`
    (a pre-hook raises ``ConfigError`` otherwise). ``venhancer_quirks=False`` returns the stock
    diffusers model, untouched.
    """
    unet = UNet3DConditionModel(**dict(config))
    if venhancer_quirks:
        apply_venhancer_quirks(unet)
        unet.register_forward_pre_hook(_check_size_hook, with_kwargs=True)
    return unet
