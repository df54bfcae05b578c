"""VEnhancer's official checkpoint (``venhancer_paper.pt`` / ``venhancer_v2.pt``) on the
diffusers-based IP-FVR backbone.

VEnhancer (``video_to_video/modules/unet_v2v.py``) saves one ``ControlledV2VUNet``: the base
``Vid2VidSDUNet`` (``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``)
with its ``VideoControlNet`` as a submodule (``VideoControlNet.*``), and loads it with
``torch.load`` → unwrap ``'state_dict'`` → ``load_state_dict(strict=True)``. Here the base goes
into :func:`fvr_bench.methods.ip_fvr.backbone.build_unet` (a diffusers ``UNet3DConditionModel``)
and the ControlNet into :class:`fvr_bench.methods.ip_fvr.controlnet.VideoControlNet`.

* :func:`venhancer_layout` — every key and shape VEnhancer's ``state_dict()`` holds, derived
  from its module tree; the tests' stand-in for the (≈8 GB) official file.
* :func:`from_venhancer` — a VEnhancer state dict → the two diffusers state dicts (each
  VEnhancer key used once; temporal ``Conv1d`` projections reshaped to ``Linear``).
* :func:`load_venhancer` — read a file and load both networks strictly.
* :func:`venhancer_kwargs` — a ``build_unet`` config as :func:`venhancer_layout` arguments;
  :func:`venhancer_routes` — the route table itself (VEnhancer prefix → network, diffusers prefix).

The mapping is the ModelScope-T2V → diffusers conversion (diffusers'
``scripts/convert_ms_text_to_video_to_diffusers.py``: LDM block indices → ``down_blocks`` /
``up_blocks`` ``resnets`` / ``temp_convs`` / ``attentions`` / ``temp_attentions`` /
``downsamplers`` / ``upsamplers``) extended to VEnhancer's ControlNet. Which VEnhancer block
index goes where is read from the diffusers networks' own structure (resnets per level, levels
with attention, down/upsamplers), so any configuration both sides share maps without a table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path

import torch
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.state_dicts import load_state, read_state

CONTROLNET_PREFIX = "VideoControlNet."
UNET, CONTROLNET = 0, 1
_NET_NAMES = ("UNet", "ControlNet")

# VEnhancer ResBlock child → diffusers ResnetBlock2D child. The ResBlock's own temporal conv
# (misspelled ``temopral_conv`` in VEnhancer) is a separate ``temp_convs`` entry in diffusers.
_RESBLOCK_CHILDREN = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)


# --------------------------------------------------------------------------------------------
# VEnhancer's checkpoint layout
# --------------------------------------------------------------------------------------------


class _Layout:
    """Collects ``key → shape`` in VEnhancer's registration order (the order of its state dict)."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}

    def tensor(self, key: str, *shape: int) -> None:
        if key in self.shapes:  # a construction bug here would silently shrink the fixture
            raise AssertionError(f"duplicate layout key {key}")
        self.shapes[key] = tuple(int(s) for s in shape)

    def linear(self, prefix: str, c_in: int, c_out: int, bias: bool = True) -> None:
        self.tensor(f"{prefix}.weight", c_out, c_in)
        if bias:
            self.tensor(f"{prefix}.bias", c_out)

    def norm(self, prefix: str, channels: int) -> None:
        self.tensor(f"{prefix}.weight", channels)
        self.tensor(f"{prefix}.bias", channels)

    def conv(self, prefix: str, c_in: int, c_out: int, *kernel: int) -> None:
        self.tensor(f"{prefix}.weight", c_out, c_in, *kernel)
        self.tensor(f"{prefix}.bias", c_out)

    def resblock(self, prefix: str, c_in: int, c_out: int, emb: int) -> None:
        """``ResBlock(use_scale_shift_norm=False, use_temporal_conv=True)``: no scale-shift, so
        ``emb_layers`` projects to ``c_out`` (not 2·c_out); a 1×1 skip only when channels change;
        ``TemporalConvBlock_v2`` = 4 × (GroupNorm, SiLU, [Dropout], Conv3d (3,1,1))."""
        self.norm(f"{prefix}.in_layers.0", c_in)
        self.conv(f"{prefix}.in_layers.2", c_in, c_out, 3, 3)
        self.linear(f"{prefix}.emb_layers.1", emb, c_out)
        self.norm(f"{prefix}.out_layers.0", c_out)
        self.conv(f"{prefix}.out_layers.3", c_out, c_out, 3, 3)
        if c_in != c_out:
            self.conv(f"{prefix}.skip_connection", c_in, c_out, 1, 1)
        for index, conv_at in ((1, 2), (2, 3), (3, 3), (4, 3)):  # conv1 has no Dropout before its conv
            self.norm(f"{prefix}.temopral_conv.conv{index}.0", c_out)
            self.conv(f"{prefix}.temopral_conv.conv{index}.{conv_at}", c_out, c_out, 3, 1, 1)

    def transformer_block(self, prefix: str, inner: int, context: int | None) -> None:
        """``BasicTransformerBlock``: attn1 (self), ff (GEGLU ×4), attn2 (cross, or self when
        ``context`` is None), three LayerNorms — in that registration order."""
        self._attention(f"{prefix}.attn1", inner, inner)
        self.linear(f"{prefix}.ff.net.0.proj", inner, inner * 4 * 2)
        self.linear(f"{prefix}.ff.net.2", inner * 4, inner)
        self._attention(f"{prefix}.attn2", inner, inner if context is None else context)
        for index in (1, 2, 3):
            self.norm(f"{prefix}.norm{index}", inner)

    def _attention(self, prefix: str, inner: int, context: int) -> None:
        self.linear(f"{prefix}.to_q", inner, inner, bias=False)
        self.linear(f"{prefix}.to_k", context, inner, bias=False)
        self.linear(f"{prefix}.to_v", context, inner, bias=False)
        self.linear(f"{prefix}.to_out.0", inner, inner)

    def spatial(self, prefix: str, channels: int, head_dim: int, context: int) -> None:
        """``SpatialTransformer(C, C // head_dim, head_dim, use_linear=True)``. VEnhancer builds
        its proj_out as ``Linear(in_channels, inner_dim)`` (shape [inner, C]); inner == C for
        every channel count divisible by head_dim, so that quirk never changes a shape."""
        inner = (channels // head_dim) * head_dim
        self.norm(f"{prefix}.norm", channels)
        self.linear(f"{prefix}.proj_in", channels, inner)
        self.transformer_block(f"{prefix}.transformer_blocks.0", inner, context)
        self.linear(f"{prefix}.proj_out", channels, inner)

    def temporal(self, prefix: str, channels: int, heads: int, head_dim: int) -> None:
        """``TemporalTransformer(use_linear=False, only_self_att=True)``: 1×1 ``Conv1d``
        projections ([inner, C, 1] / [C, inner, 1]); attn2 is self-attention too."""
        inner = heads * head_dim
        self.norm(f"{prefix}.norm", channels)
        self.conv(f"{prefix}.proj_in", channels, inner, 1)
        self.transformer_block(f"{prefix}.transformer_blocks.0", inner, None)
        self.conv(f"{prefix}.proj_out", inner, channels, 1)


def _encoder(layout: _Layout, prefix: str, dim: int, dim_mult: Sequence[int], num_res_blocks: int,
             attn_scales: Sequence[float], head_dim: int, context_dim: int, in_dim: int,
             temporal_heads: int, zero_convs: str | None) -> tuple[list[int], int]:
    """``input_blocks`` (and, for the ControlNet, one ``zero_convs`` entry per input block);
    returns the skip channels (pushed in order) and the channels at the bottom.

    VEnhancer registers ``input_blocks`` before ``zero_convs``, so the zero convs are written
    after all input blocks although they are created interleaved."""
    emb = dim * 4
    skips = [dim]
    layout.conv(f"{prefix}input_blocks.0.0", in_dim, dim, 3, 3)
    # The initial temporal transformer uses num_heads (8) × head_dim, not dim // head_dim heads:
    # 8 × 64 = 512 inner channels for 320 at paper scale (diffusers' transformer_in matches).
    layout.temporal(f"{prefix}input_blocks.0.1", dim, temporal_heads, head_dim)
    enc_dims = [dim * m for m in (1, *dim_mult)]
    scale, index = 1.0, 1
    for level, (c_in, c_out) in enumerate(pairwise(enc_dims)):
        for j in range(num_res_blocks):
            block = f"{prefix}input_blocks.{index}"
            layout.resblock(f"{block}.0", c_in, c_out, emb)
            if scale in attn_scales:  # VEnhancer's own float membership test; halving is exact
                layout.spatial(f"{block}.1", c_out, head_dim, context_dim)
                layout.temporal(f"{block}.2", c_out, c_out // head_dim, head_dim)
            c_in = c_out
            skips.append(c_out)
            index += 1
            if level != len(dim_mult) - 1 and j == num_res_blocks - 1:
                layout.conv(f"{prefix}input_blocks.{index}.op", c_out, c_out, 3, 3)
                skips.append(c_out)
                scale /= 2.0
                index += 1
    if zero_convs is not None:
        for k, channels in enumerate(skips):
            layout.conv(f"{prefix}{zero_convs}.{k}.0", channels, channels, 1, 1)
    return skips, enc_dims[-1]


def _middle(layout: _Layout, prefix: str, channels: int, emb: int, head_dim: int, context_dim: int) -> None:
    """``middle_block``: ResBlock → SpatialTransformer → TemporalTransformer → ResBlock."""
    layout.resblock(f"{prefix}middle_block.0", channels, channels, emb)
    layout.spatial(f"{prefix}middle_block.1", channels, head_dim, context_dim)
    layout.temporal(f"{prefix}middle_block.2", channels, channels // head_dim, head_dim)
    layout.resblock(f"{prefix}middle_block.3", channels, channels, emb)


def venhancer_layout(dim: int = 320, dim_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                     attn_scales: Sequence[float] = (1, 1 / 2, 1 / 4), head_dim: int = 64,
                     context_dim: int = 1024, in_dim: int = 4, out_dim: int = 4,
                     temporal_heads: int = 8) -> dict[str, tuple[int, ...]]:
    """Every key of VEnhancer's ``ControlledV2VUNet.state_dict()`` with its shape.

    Arguments are ``Vid2VidSDUNet``'s (defaults = its defaults = the released checkpoint);
    ``temporal_heads`` is its ``num_heads`` (used only by the initial temporal transformer).
    Order: base ``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``,
    then ``VideoControlNet.{time_embed, hint_time_zero_linear, scale_cond, input_blocks,
    zero_convs, middle_block, middle_block_out, input_hint_block}``.

    Three VEnhancer constants are written as the value its forward needs, which equals the
    constant at paper scale: the decoder's SpatialTransformers hard-code ``context_dim=1024``
    (here ``context_dim``), ``middle_block_out`` is built for ``embed_dim = 4·dim`` channels
    (here the bottom channels ``dim·dim_mult[-1]``; the same 1280 when dim_mult[-1] = 4), and
    ``input_hint_block`` is ``Conv2d(4 → 320)`` (here ``in_dim → dim``). Off paper scale the
    literal constants would describe a network that cannot run its own forward.
    """
    emb = dim * 4
    layout = _Layout()

    # ---- base UNet (Vid2VidSDUNet) ----
    layout.linear("time_embed.0", dim, emb)
    layout.linear("time_embed.2", emb, emb)
    skips, bottom = _encoder(layout, "", dim, dim_mult, num_res_blocks, attn_scales, head_dim, context_dim,
                             in_dim, temporal_heads, zero_convs=None)
    _middle(layout, "", bottom, emb, head_dim, context_dim)
    dec_dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
    scale = 0.5 ** (len(dim_mult) - 1)
    index = 0
    for level, (c_in, c_out) in enumerate(pairwise(dec_dims)):
        for j in range(num_res_blocks + 1):
            block = f"output_blocks.{index}"
            layout.resblock(f"{block}.0", c_in + skips.pop(), c_out, emb)
            position = 1
            if scale in attn_scales:
                layout.spatial(f"{block}.1", c_out, head_dim, context_dim)
                layout.temporal(f"{block}.2", c_out, c_out // head_dim, head_dim)
                position = 3
            c_in = c_out
            if level != len(dim_mult) - 1 and j == num_res_blocks:
                layout.conv(f"{block}.{position}.conv", c_out, c_out, 3, 3)
                scale *= 2.0
            index += 1
    layout.norm("out.0", dec_dims[-1])
    layout.conv("out.2", dec_dims[-1], out_dim, 3, 3)

    # ---- VideoControlNet: a copy of the encoder + middle with its own embeddings ----
    p = CONTROLNET_PREFIX
    layout.linear(f"{p}time_embed.0", dim, emb)
    layout.linear(f"{p}time_embed.2", emb, emb)
    layout.linear(f"{p}hint_time_zero_linear", emb, emb)
    layout.linear(f"{p}scale_cond.0", dim, emb)
    layout.linear(f"{p}scale_cond.2", emb, emb)
    _, bottom = _encoder(layout, p, dim, dim_mult, num_res_blocks, attn_scales, head_dim, context_dim,
                         in_dim, temporal_heads, zero_convs="zero_convs")
    _middle(layout, p, bottom, emb, head_dim, context_dim)
    layout.conv(f"{p}middle_block_out.0", bottom, bottom, 1, 1)
    layout.conv(f"{p}input_hint_block", in_dim, dim, 3, 3)
    return layout.shapes


# --------------------------------------------------------------------------------------------
# VEnhancer → diffusers key routes
# --------------------------------------------------------------------------------------------


def _has(block: nn.Module, name: str) -> int:
    """How many entries ``block`` has in the ModuleList ``name`` (0 when absent or None)."""
    modules = getattr(block, name, None)
    return 0 if modules is None else len(modules)


class _Routes:
    """VEnhancer module prefix (ending in '.') → (network, diffusers module prefix)."""

    def __init__(self) -> None:
        self.table: dict[str, tuple[int, str]] = {}

    def add(self, source: str, net: int, target: str) -> None:
        self.table[f"{source}."] = (net, f"{target}.")

    def resblock(self, source: str, net: int, resnet: str, temp_conv: str) -> None:
        for venhancer_child, diffusers_child in _RESBLOCK_CHILDREN:
            self.add(f"{source}.{venhancer_child}", net, f"{resnet}.{diffusers_child}")
        self.add(f"{source}.temopral_conv", net, temp_conv)

    def encoder(self, net_module: nn.Module, prefix: str, net: int) -> None:
        """``input_blocks`` → conv_in, transformer_in, down_blocks (resnets, temp_convs,
        attentions, temp_attentions, downsamplers), walking diffusers' levels in VEnhancer's
        order: per level, ``len(resnets)`` blocks [Res, Spatial, Temporal], then a Downsample."""
        self.add(f"{prefix}input_blocks.0.0", net, "conv_in")
        self.add(f"{prefix}input_blocks.0.1", net, "transformer_in")
        index = 1
        for level, block in enumerate(net_module.down_blocks):
            attention = _has(block, "attentions") > 0
            for j in range(_has(block, "resnets")):
                source, target = f"{prefix}input_blocks.{index}", f"down_blocks.{level}"
                self.resblock(f"{source}.0", net, f"{target}.resnets.{j}", f"{target}.temp_convs.{j}")
                if attention:
                    self.add(f"{source}.1", net, f"{target}.attentions.{j}")
                    self.add(f"{source}.2", net, f"{target}.temp_attentions.{j}")
                index += 1
            if _has(block, "downsamplers"):
                self.add(f"{prefix}input_blocks.{index}.op", net, f"down_blocks.{level}.downsamplers.0.conv")
                index += 1

    def middle(self, prefix: str, net: int) -> None:
        """``middle_block.{0,1,2,3}`` → mid_block resnets.0 (+temp_convs.0), attentions.0,
        temp_attentions.0, resnets.1 (+temp_convs.1)."""
        self.resblock(f"{prefix}middle_block.0", net, "mid_block.resnets.0", "mid_block.temp_convs.0")
        self.add(f"{prefix}middle_block.1", net, "mid_block.attentions.0")
        self.add(f"{prefix}middle_block.2", net, "mid_block.temp_attentions.0")
        self.resblock(f"{prefix}middle_block.3", net, "mid_block.resnets.1", "mid_block.temp_convs.1")

    def decoder(self, unet: nn.Module) -> None:
        """``output_blocks`` → up_blocks: one block per resnet, [Res, Spatial, Temporal,
        Upsample], the Upsample (``conv``) at position 3 with attention, 1 without."""
        index = 0
        for level, block in enumerate(unet.up_blocks):
            attention = _has(block, "attentions") > 0
            count = _has(block, "resnets")
            for j in range(count):
                source, target = f"output_blocks.{index}", f"up_blocks.{level}"
                self.resblock(f"{source}.0", UNET, f"{target}.resnets.{j}", f"{target}.temp_convs.{j}")
                if attention:
                    self.add(f"{source}.1", UNET, f"{target}.attentions.{j}")
                    self.add(f"{source}.2", UNET, f"{target}.temp_attentions.{j}")
                if j == count - 1 and _has(block, "upsamplers"):
                    self.add(f"{source}.{3 if attention else 1}.conv", UNET, f"{target}.upsamplers.0.conv")
                index += 1


def venhancer_routes(unet: nn.Module, controlnet: nn.Module) -> dict[str, tuple[int, str]]:
    """The full route table: VEnhancer module prefix → (0 = UNet / 1 = ControlNet, diffusers
    module prefix); prefixes end in '.', the leaf names (weight/bias) are kept."""
    routes = _Routes()
    routes.add("time_embed.0", UNET, "time_embedding.linear_1")
    routes.add("time_embed.2", UNET, "time_embedding.linear_2")
    routes.encoder(unet, "", UNET)
    routes.middle("", UNET)
    routes.decoder(unet)
    routes.add("out.0", UNET, "conv_norm_out")
    routes.add("out.2", UNET, "conv_out")

    p = CONTROLNET_PREFIX
    routes.add(f"{p}time_embed.0", CONTROLNET, "time_embedding.linear_1")
    routes.add(f"{p}time_embed.2", CONTROLNET, "time_embedding.linear_2")
    routes.add(f"{p}hint_time_zero_linear", CONTROLNET, _single_layer(controlnet, "hint_time_embedding"))
    first, second = _two_linears(controlnet, "scale_embedding")
    routes.add(f"{p}scale_cond.0", CONTROLNET, first)
    routes.add(f"{p}scale_cond.2", CONTROLNET, second)
    routes.encoder(controlnet, p, CONTROLNET)
    for k in range(len(controlnet.controlnet_down_blocks)):
        routes.add(f"{p}zero_convs.{k}.0", CONTROLNET, f"controlnet_down_blocks.{k}")
    routes.middle(p, CONTROLNET)
    routes.add(f"{p}middle_block_out.0", CONTROLNET, _single_layer(controlnet, "controlnet_mid_block"))
    routes.add(f"{p}input_hint_block", CONTROLNET, _single_layer(controlnet, "hint_embedding"))
    return routes.table


def _parametrised_children(module: nn.Module, name: str) -> list[str]:
    """Dotted names (under ``name``) of the submodules of ``module.<name>`` that own parameters."""
    root = getattr(module, name)
    return [f"{name}.{child}" if child else name for child, sub in root.named_modules()
            if any(True for _ in sub.parameters(recurse=False))]


def _single_layer(module: nn.Module, name: str) -> str:
    """The one parameter-owning layer inside ``module.<name>`` (a bare layer, or one wrapped in
    a Sequential) — VEnhancer's counterpart is a single Linear / Conv2d."""
    layers = _parametrised_children(module, name)
    if len(layers) != 1:
        raise ConfigError(f"ControlNet.{name} holds {len(layers)} weighted layers ({layers}); VEnhancer's "
                          f"counterpart is one layer")
    return layers[0]


def _two_linears(module: nn.Module, name: str) -> tuple[str, str]:
    """The two parameter-owning layers of ``module.<name>`` in order (VEnhancer's ``scale_cond``
    is Linear – SiLU – Linear; diffusers' TimestepEmbedding names them linear_1 / linear_2)."""
    layers = _parametrised_children(module, name)
    if len(layers) != 2:
        raise ConfigError(f"ControlNet.{name} holds {len(layers)} weighted layers ({layers}); VEnhancer's "
                          f"scale_cond has two Linears")
    return layers[0], layers[1]


# --------------------------------------------------------------------------------------------
# Mapping and loading
# --------------------------------------------------------------------------------------------


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in shape if s != 1)


def _unwrap(state: Mapping) -> Mapping:
    """VEnhancer's own loader: ``if 'state_dict' in load_dict: load_dict = load_dict['state_dict']``."""
    inner = state.get("state_dict") if isinstance(state, Mapping) else None
    return inner if isinstance(inner, Mapping) else state


def from_venhancer(state: Mapping[str, torch.Tensor], unet: nn.Module, controlnet: nn.Module, *,
                   source: str = "VEnhancer checkpoint", strict: bool = True
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split and rename a VEnhancer state dict into ``(unet_state, controlnet_state)``.

    Each VEnhancer key goes to exactly one diffusers key; one with no place, or two landing on
    the same key, is a :class:`ConfigError` naming the VEnhancer key. Where only singleton
    dimensions differ (temporal ``Conv1d`` 1×1 proj [C, C', 1] → ``Linear`` [C, C']; spatial
    ``Linear`` → ``Conv2d`` 1×1 if a backbone keeps those as convs) the tensor is reshaped (a
    view, no copy). ``strict``: also require every key of both networks and matching shapes,
    the error naming the VEnhancer key (the file side) and both shapes.
    """
    state = _unwrap(state)
    routes = venhancer_routes(unet, controlnet)
    own = (unet.state_dict(keep_vars=True), controlnet.state_dict(keep_vars=True))
    mapped: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] = ({}, {})
    origin: tuple[dict[str, str], dict[str, str]] = ({}, {})
    for key, tensor in state.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # longest module prefix first
            route = routes.get(".".join(parts[:cut]) + ".")
            if route is not None:
                break
        else:
            raise ConfigError(f"{source}: VEnhancer key {key!r} has no place in the IP-FVR UNet/ControlNet "
                              f"(not a VEnhancer checkpoint of this configuration?)")
        net, prefix = route
        target = prefix + ".".join(parts[cut:])
        if target in mapped[net]:
            raise ConfigError(f"{source}: VEnhancer keys {origin[net][target]!r} and {key!r} both map to "
                              f"{_NET_NAMES[net]} key {target!r}")
        expected = own[net].get(target)
        if (expected is not None and tuple(expected.shape) != tuple(tensor.shape)
                and _squeezed(expected.shape) == _squeezed(tensor.shape)):
            tensor = tensor.reshape(expected.shape)
        mapped[net][target] = tensor
        origin[net][target] = key
    if strict:
        _check_fit(mapped, origin, own, routes, source)
    return mapped


def _venhancer_name(target: str, net: int, routes: Mapping[str, tuple[int, str]]) -> str:
    """The VEnhancer key that would fill diffusers key ``target`` (for error messages)."""
    best: tuple[str, str] | None = None  # (VEnhancer prefix, diffusers prefix), longest match
    for source, (route_net, prefix) in routes.items():
        if route_net == net and target.startswith(prefix) and (best is None or len(prefix) > len(best[1])):
            best = (source, prefix)
    if best is None:
        return "(no VEnhancer counterpart)"
    return best[0] + target[len(best[1]):]


def _check_fit(mapped, origin, own, routes, source: str) -> None:
    """Every network key filled, with its shape; errors name the first offending key."""
    for net in (UNET, CONTROLNET):
        for target, tensor in mapped[net].items():
            if target not in own[net]:
                raise ConfigError(f"{source}: VEnhancer key {origin[net][target]!r} maps to {target!r}, which the "
                                  f"{_NET_NAMES[net]} does not have")
            if tuple(own[net][target].shape) != tuple(tensor.shape):
                raise ConfigError(f"{source}: VEnhancer key {origin[net][target]!r} has shape {tuple(tensor.shape)}, "
                                  f"the {_NET_NAMES[net]}'s {target!r} {tuple(own[net][target].shape)}")
        for target in own[net]:
            if target not in mapped[net]:
                raise ConfigError(f"{source}: missing VEnhancer key {_venhancer_name(target, net, routes)!r} "
                                  f"(for the {_NET_NAMES[net]}'s {target!r})")


def _on_meta(net: nn.Module) -> bool:
    return any(t.is_meta for t in net.state_dict(keep_vars=True).values())


def load_venhancer(path: str | Path, unet: nn.Module, controlnet: nn.Module,
                   dtype: torch.dtype | None = None) -> None:
    """Load a VEnhancer checkpoint (``.pt`` with or without a ``'state_dict'`` wrapper, or a
    safetensors conversion with the same keys) into both networks, strictly.

    A missing file is a :class:`~fvr_bench.errors.WeightsMissingError`; any key misfit a
    :class:`ConfigError`. Networks built on the meta device get the file's tensors assigned
    (memory-mapped; one copy when ``dtype`` casts them).
    """
    name = str(path)
    state = read_state(path)
    unet_state, controlnet_state = from_venhancer(state, unet, controlnet, source=name)
    for net, mapped, label in ((unet, unet_state, "UNet"), (controlnet, controlnet_state, "ControlNet")):
        load_state(net, mapped, f"{name} ({label})", dtype=dtype, assign=_on_meta(net))


def venhancer_kwargs(config: Mapping) -> dict:
    """:func:`venhancer_layout` arguments for a ``build_unet`` config (``VENHANCER_UNET`` →
    the defaults; ``TINY_UNET`` → the tests' tiny checkpoint). Levels whose down block is a
    ``CrossAttn…`` block are VEnhancer's ``attn_scales`` (level i ↔ scale 1/2**i)."""
    channels = tuple(int(c) for c in config["block_out_channels"])
    dim = channels[0]
    if any(c % dim for c in channels):
        raise ConfigError(f"block_out_channels {channels} are not multiples of the first (VEnhancer's dim_mult)")
    return {
        "dim": dim,
        "dim_mult": tuple(c // dim for c in channels),
        "num_res_blocks": int(config.get("layers_per_block", 2)),
        "attn_scales": tuple(0.5 ** i for i, kind in enumerate(config["down_block_types"]) if "CrossAttn" in kind),
        "head_dim": int(config.get("attention_head_dim", 64)),
        "context_dim": int(config.get("cross_attention_dim", 1024)),
        "in_dim": int(config.get("in_channels", 4)),
        "out_dim": int(config.get("out_channels", 4)),
    }
