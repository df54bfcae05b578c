"""VEnhancer's official checkpoint → the diffusers-based IP-FVR UNet + ControlNet.

The official file (≈8 GB) is not available to the tests; ``venhancer_layout`` — every key and
shape of VEnhancer's ``ControlledV2VUNet.state_dict()``, derived from its module tree — stands
for it: random tensors in that layout, saved with ``torch.save`` as VEnhancer's files are.
"""

from __future__ import annotations

import math

import pytest
import torch

from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.ip_fvr.backbone import TINY_UNET, VENHANCER_UNET, build_unet
from fvr_bench.methods.ip_fvr.controlnet import VideoControlNet
from fvr_bench.methods.ip_fvr.official import (
    from_venhancer,
    load_venhancer,
    venhancer_kwargs,
    venhancer_layout,
)

CN = "VideoControlNet."


def tiny_nets(device: str = "cpu"):
    with torch.device(device):
        unet = build_unet(TINY_UNET)
        return unet, VideoControlNet.from_unet(unet)


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random normal tensors: every value distinct (with probability 1), so a tensor's first
    element identifies it wherever it lands."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in layout.items()}


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return random_state(venhancer_layout(**venhancer_kwargs(TINY_UNET)))


def test_tiny_layout_matches_the_tiny_config():
    """TINY_UNET (8/16 channels, 1 res block, attention on level 0, head_dim 4, context 8) as
    VEnhancer arguments, and a few keys that spell out VEnhancer's block indexing."""
    kwargs = venhancer_kwargs(TINY_UNET)
    assert kwargs == {"dim": 8, "dim_mult": (1, 2), "num_res_blocks": 1, "attn_scales": (1.0,), "head_dim": 4,
                      "context_dim": 8, "in_dim": 4, "out_dim": 4}
    layout = venhancer_layout(**kwargs)
    assert layout["input_blocks.0.1.proj_in.weight"] == (32, 8, 1)       # 8 heads × 4
    assert layout["input_blocks.1.2.proj_in.weight"] == (8, 8, 1)        # level 0 has attention
    assert layout["input_blocks.2.op.weight"] == (8, 8, 3, 3)            # the one downsampler
    assert "input_blocks.3.1.norm.weight" not in layout                  # level 1: no attention
    assert layout["output_blocks.1.1.conv.weight"] == (16, 16, 3, 3)     # upsample after the plain level
    assert layout["output_blocks.3.0.skip_connection.weight"] == (8, 16, 1, 1)
    assert sum(key.startswith(f"{CN}zero_convs.") for key in layout) == 2 * 4   # 4 encoder outputs


@pytest.mark.parametrize("wrapped", [True, False], ids=["state_dict_wrapper", "plain"])
def test_load_places_every_tensor(tmp_path, tiny_state, wrapped):
    path = tmp_path / "venhancer.pt"
    torch.save({"state_dict": tiny_state} if wrapped else tiny_state, path)
    unet, controlnet = tiny_nets()
    load_venhancer(path, unet, controlnet)
    s = tiny_state

    def same(venhancer_key: str, param: torch.Tensor) -> bool:
        return torch.equal(s[venhancer_key].reshape(param.shape), param.detach())

    # base UNet, spot checks by attribute (independent of the mapping's name tables)
    assert same("time_embed.2.bias", unet.time_embedding.linear_2.bias)
    assert same("input_blocks.0.0.weight", unet.conv_in.weight)
    assert same("input_blocks.1.0.in_layers.2.weight", unet.down_blocks[0].resnets[0].conv1.weight)
    assert same("input_blocks.1.0.emb_layers.1.weight", unet.down_blocks[0].resnets[0].time_emb_proj.weight)
    assert same("input_blocks.1.0.temopral_conv.conv4.3.weight", unet.down_blocks[0].temp_convs[0].conv4[3].weight)
    assert same("input_blocks.1.1.proj_out.weight", unet.down_blocks[0].attentions[0].proj_out.weight)
    assert same("input_blocks.2.op.weight", unet.down_blocks[0].downsamplers[0].conv.weight)
    assert same("input_blocks.3.0.skip_connection.weight", unet.down_blocks[1].resnets[0].conv_shortcut.weight)
    assert same("middle_block.2.transformer_blocks.0.attn1.to_q.weight",
                unet.mid_block.temp_attentions[0].transformer_blocks[0].attn1.to_q.weight)
    assert same("middle_block.3.out_layers.3.weight", unet.mid_block.resnets[1].conv2.weight)
    assert same("output_blocks.1.1.conv.weight", unet.up_blocks[0].upsamplers[0].conv.weight)
    assert same("output_blocks.3.1.transformer_blocks.0.ff.net.0.proj.weight",
                unet.up_blocks[1].attentions[1].transformer_blocks[0].ff.net[0].proj.weight)
    assert same("out.2.weight", unet.conv_out.weight)
    # temporal Conv1d 1×1 projections → Linear: [C', C, 1] → [C', C]
    conv1d = s["input_blocks.0.1.proj_in.weight"]
    assert conv1d.shape == (32, 8, 1) and unet.transformer_in.proj_in.weight.shape == (32, 8)
    assert torch.equal(conv1d[:, :, 0], unet.transformer_in.proj_in.weight.detach())
    assert torch.equal(s["output_blocks.2.2.proj_out.weight"][:, :, 0],
                       unet.up_blocks[1].temp_attentions[0].proj_out.weight.detach())

    # ControlNet
    assert same(f"{CN}time_embed.0.weight", controlnet.time_embedding.linear_1.weight)
    assert same(f"{CN}hint_time_zero_linear.weight", controlnet.hint_time_embedding.weight)
    assert same(f"{CN}scale_cond.0.weight", controlnet.scale_embedding[0].weight)
    assert same(f"{CN}scale_cond.2.bias", controlnet.scale_embedding[2].bias)
    assert same(f"{CN}input_hint_block.weight", controlnet.hint_embedding.weight)
    assert same(f"{CN}input_blocks.1.0.in_layers.2.weight", controlnet.down_blocks[0].resnets[0].conv1.weight)
    assert same(f"{CN}input_blocks.0.1.proj_out.weight", controlnet.transformer_in.proj_out.weight)
    assert same(f"{CN}zero_convs.2.0.weight", controlnet.controlnet_down_blocks[2].weight)
    assert same(f"{CN}zero_convs.3.0.bias", controlnet.controlnet_down_blocks[3].bias)
    assert same(f"{CN}middle_block_out.0.weight", controlnet.controlnet_mid_block.weight)
    assert same(f"{CN}middle_block.1.proj_in.weight", controlnet.mid_block.attentions[0].proj_in.weight)
    # the ControlNet's copy is its own: the base's tensor differs at the same place
    assert not torch.equal(unet.conv_in.weight, controlnet.conv_in.weight)

    # a bijection: every VEnhancer tensor in exactly one parameter, every parameter filled
    params = [*unet.state_dict().values(), *controlnet.state_dict().values()]
    assert len(params) == len(s)
    assert {p.flatten()[0].item() for p in params} == {t.flatten()[0].item() for t in s.values()}


def test_load_onto_meta_with_dtype(tmp_path, tiny_state):
    """Networks built weight-less on the meta device get the file's tensors assigned, cast."""
    path = tmp_path / "venhancer.pt"
    torch.save(tiny_state, path)
    unet, controlnet = tiny_nets("meta")
    load_venhancer(path, unet, controlnet, dtype=torch.float16)
    for net in (unet, controlnet):
        tensors = list(net.state_dict().values())
        assert not any(t.is_meta for t in tensors)
        assert {t.dtype for t in tensors} == {torch.float16}
    assert torch.equal(controlnet.controlnet_mid_block.weight.float(),
                       tiny_state[f"{CN}middle_block_out.0.weight"].half().float())


def test_missing_file():
    unet, controlnet = tiny_nets("meta")
    with pytest.raises(WeightsMissingError):
        load_venhancer("/nonexistent/venhancer_paper.pt", unet, controlnet)


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "controlnet_missing"])
def test_misfits_name_the_key(tmp_path, tiny_state, case):
    state = dict(tiny_state)
    if case == "missing":
        key = "input_blocks.1.0.temopral_conv.conv2.3.weight"
        del state[key]
    elif case == "controlnet_missing":
        key = f"{CN}zero_convs.1.0.bias"
        del state[key]
    elif case == "extra":
        key = f"{CN}fps_embedding.0.weight"
        state[key] = torch.zeros(32, 8)
    else:
        key = "middle_block.1.proj_in.weight"
        state[key] = torch.zeros(16, 12)
    path = tmp_path / "venhancer.pt"
    torch.save(state, path)
    unet, controlnet = tiny_nets()
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_venhancer(path, unet, controlnet)


def test_key_past_the_last_block_has_no_place(tiny_state):
    """A key of a VEnhancer block this configuration does not have (input_blocks past the end)."""
    unet, controlnet = tiny_nets("meta")
    state = dict(tiny_state)
    state["input_blocks.9.0.in_layers.0.weight"] = torch.zeros(8)
    with pytest.raises(ConfigError, match=r"input_blocks\.9\.0\.in_layers\.0\.weight"):
        from_venhancer(state, unet, controlnet)


def test_other_tiny_shape_is_rejected():
    """A checkpoint of another width does not load into the tiny networks."""
    unet, controlnet = tiny_nets("meta")
    wider = {k: torch.empty(s, device="meta")
             for k, s in venhancer_layout(**{**venhancer_kwargs(TINY_UNET), "dim": 16}).items()}
    with pytest.raises(ConfigError, match="shape"):
        from_venhancer(wider, unet, controlnet)


# ---- paper scale ----------------------------------------------------------------------------


def test_paper_scale_layout():
    layout = venhancer_layout()
    base = {k: s for k, s in layout.items() if not k.startswith(CN)}
    control = {k: s for k, s in layout.items() if k.startswith(CN)}
    assert (len(layout), len(base), len(control)) == (2180, 1480, 700)
    assert {k.split(".")[1] for k in control} == {"time_embed", "hint_time_zero_linear", "scale_cond", "input_blocks",
                                                   "zero_convs", "middle_block", "middle_block_out", "input_hint_block"}
    assert {k.split(".")[0] for k in base} == {"time_embed", "input_blocks", "middle_block", "output_blocks", "out"}
    zero_convs = [s for k, s in control.items() if k.startswith(f"{CN}zero_convs.") and k.endswith(".weight")]
    assert [s[0] for s in zero_convs] == [320] * 4 + [640] * 3 + [1280] * 5
    assert max(int(k.split(".")[1]) for k in base if k.startswith("input_blocks.")) == 11   # 12 input blocks
    assert max(int(k.split(".")[1]) for k in base if k.startswith("output_blocks.")) == 11
    assert layout["input_blocks.0.1.proj_in.weight"] == (512, 320, 1)     # 8 heads × 64 on 320 channels
    assert layout["input_blocks.0.1.transformer_blocks.0.attn2.to_k.weight"] == (512, 512)   # self only
    assert layout["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)  # text
    assert layout["input_blocks.1.0.temopral_conv.conv1.2.weight"] == (320, 320, 3, 1, 1)
    assert layout["input_blocks.3.op.weight"] == (320, 320, 3, 3)
    assert layout["input_blocks.10.0.emb_layers.1.weight"] == (1280, 1280)
    assert layout["output_blocks.0.0.in_layers.0.weight"] == (2560,)
    assert layout["output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)  # plain level: Upsample at 1
    assert layout["output_blocks.5.3.conv.weight"] == (1280, 1280, 3, 3)  # attention level: Upsample at 3
    assert layout["output_blocks.11.0.skip_connection.weight"] == (320, 640, 1, 1)
    assert layout["out.2.weight"] == (4, 320, 3, 3)
    assert layout[f"{CN}middle_block_out.0.weight"] == (1280, 1280, 1, 1)
    assert layout[f"{CN}input_hint_block.weight"] == (320, 4, 3, 3)
    assert layout[f"{CN}scale_cond.0.weight"] == (1280, 320)
    # ≈2.0 B parameters: Kijai's fp16 conversion is 4.09 GB
    base_count = sum(math.prod(s) for s in base.values())
    control_count = sum(math.prod(s) for s in control.values())
    assert (base_count, control_count) == (1_411_233_860, 633_575_936)
    assert round(2 * (base_count + control_count) / 1e9, 2) == 4.09


def test_paper_scale_mapping_is_complete():
    """On the meta device: every key of build_unet(VENHANCER_UNET) and its ControlNet is
    filled by exactly one VEnhancer key, with the network's shape."""
    with torch.device("meta"):
        unet = build_unet(VENHANCER_UNET)
        controlnet = VideoControlNet.from_unet(unet)
    assert venhancer_kwargs(VENHANCER_UNET) == {"dim": 320, "dim_mult": (1, 2, 4, 4), "num_res_blocks": 2,
                                                "attn_scales": (1.0, 0.5, 0.25), "head_dim": 64,
                                                "context_dim": 1024, "in_dim": 4, "out_dim": 4}
    state = {k: torch.empty(s, device="meta") for k, s in venhancer_layout().items()}
    unet_state, controlnet_state = from_venhancer(state, unet, controlnet, strict=False)
    assert len(unet_state) + len(controlnet_state) == len(state)
    for net, mapped in ((unet, unet_state), (controlnet, controlnet_state)):
        own = net.state_dict()
        assert set(mapped) == set(own)
        assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in own.items()}
