"""IP-FVR backbone: the VEnhancer quirks on diffusers' UNet3D, and the VideoControlNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.methods.ip_fvr.backbone import (
    TINY_UNET,
    VENHANCER_UNET,
    RowCropUpsample2D,
    apply_linear_projection,
    build_unet,
    is_venhancer_model,
    legal_latent_size,
    nearest_legal_latent_size,
)
from fvr_bench.methods.ip_fvr.controlnet import (
    VideoControlNet,
    controlnet_residual_channels,
)

# three levels (two downsamplers): exercises the h ≡ 2 (mod 4) rule and the forwarded upsample size
TINY3_UNET = dict(TINY_UNET, block_out_channels=(8, 16, 16),
                  down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                  up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"))

# tiny networks on tiny tensors: one intra-op thread (a second one costs more than it saves)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENCODER_PREFIXES = ("conv_in.", "time_embedding.", "transformer_in.", "down_blocks.", "mid_block.")


def tiny_unet(config=TINY_UNET, quirks=True, seed=0) -> UNet3DConditionModel:
    torch.manual_seed(seed)
    return build_unet(config, venhancer_quirks=quirks).eval()


def inputs(b=1, f=4, h=16, w=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(b, 4, f, h, w, generator=g)
    context = torch.randn(b, 5, 8, generator=g)
    hint = torch.randn(b, 4, f, h, w, generator=g)
    return sample, context, hint


def perturb(module: nn.Module, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------------------
# sizes
# ------------------------------------------------------------------------------------------------

def test_legal_latent_sizes():
    assert legal_latent_size(90, 160, 3)            # 720 × 1280 px, VEnhancer's working size
    assert legal_latent_size(66, 64, 3)             # 528 × 512 px
    assert not legal_latent_size(64, 64, 3)         # 512 × 512 px does not round-trip
    assert not legal_latent_size(90, 164, 3)        # width not a multiple of 8
    assert legal_latent_size(16, 16, 1) and not legal_latent_size(15, 16, 1)
    assert legal_latent_size(18, 16, 2) and not legal_latent_size(16, 16, 2)
    assert nearest_legal_latent_size(64, 64, 3) == (66, 64)
    assert nearest_legal_latent_size(90, 157, 3) == (90, 160)
    # the simulation agrees with the closed form: w % 2^n == 0; h even (n = 1), h ≡ 2 mod 2^n (n ≥ 2)
    for n in (1, 2, 3):
        for h in range(1, 80):
            closed = h % 2 == 0 if n == 1 else h % 2**n == 2
            assert legal_latent_size(h, 2**n, n) == closed, (h, n)


def test_row_crop_upsample_matches_venhancer_formula():
    torch.manual_seed(0)
    stock = Upsample2D(8, use_conv=True, out_channels=8)
    new = RowCropUpsample2D.replacing(stock)
    assert new.conv is stock.conv and set(new.state_dict()) == {"conv.weight", "conv.bias"}
    x = torch.randn(2, 8, 5, 4)
    expected = stock.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")[..., 1:-1, :])
    out = new(x)
    assert out.shape == (2, 8, 8, 8)                # 2h − 2, 2w
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(new(x, (8, 8)), expected)    # a matching forwarded size is accepted
    with pytest.raises(ConfigError, match="not legal"):
        new(x, (10, 8))


# ------------------------------------------------------------------------------------------------
# the base UNet
# ------------------------------------------------------------------------------------------------

def test_quirks_present_and_state_dict_unchanged():
    unet, stock = tiny_unet(), tiny_unet(quirks=False)
    downs = [m for m in unet.modules() if isinstance(m, Downsample2D)]
    assert downs and all(tuple(m.conv.padding) == (2, 1) for m in downs)
    ups = [block.upsamplers[0] for block in unet.up_blocks if block.upsamplers is not None]
    assert ups and all(isinstance(u, RowCropUpsample2D) for u in ups)
    spatial = [m for m in unet.modules() if isinstance(m, Transformer2DModel)]
    assert spatial and all(isinstance(m.proj_in, nn.Linear) and isinstance(m.proj_out, nn.Linear)
                           and m.use_linear_projection for m in spatial)
    assert is_venhancer_model(unet) and not is_venhancer_model(stock)
    # same keys and shapes as stock diffusers: checkpoints load either way
    assert {k: v.shape for k, v in unet.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}


def test_stock_when_quirks_off():
    stock = tiny_unet(quirks=False)
    assert all(tuple(m.conv.padding) == (1, 1) for m in stock.modules() if isinstance(m, Downsample2D))
    assert type(stock.up_blocks[0].upsamplers[0]) is Upsample2D
    # attention_head_dim is the head width in diffusers' 3D blocks too (VEnhancer's head_dim):
    # transformer_in 8 heads × 4, block transformers C / 4 heads
    head_dim = TINY_UNET["attention_head_dim"]
    assert all(m.inner_dim // m.heads == head_dim for m in stock.modules() if isinstance(m, Attention))
    assert stock.transformer_in.transformer_blocks[0].attn1.heads == 8
    assert stock.down_blocks[0].attentions[0].transformer_blocks[0].attn2.heads == 8 // head_dim
    assert not stock._forward_pre_hooks


def test_unet_runs_at_legal_sizes_and_rejects_others():
    sample, context, _ = inputs()
    out = tiny_unet()(sample, 10, context).sample
    assert out.shape == sample.shape and torch.isfinite(out).all()

    unet3 = tiny_unet(TINY3_UNET)
    sample, context, _ = inputs(f=2, h=18, w=16)
    assert unet3(sample, torch.tensor([10]), context).sample.shape == sample.shape
    with pytest.raises(ConfigError, match="Pad to 18×16"):
        unet3(torch.randn(1, 4, 2, 16, 16), 10, context)


def test_linear_projection_conversion_keeps_the_function():
    torch.manual_seed(0)
    tr = Transformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=8, norm_num_groups=4,
                            cross_attention_dim=8, use_linear_projection=False).eval()
    with torch.no_grad():
        tr.proj_out.weight.normal_()                # diffusers zero-inits nothing here, but be sure
    x, ctx = torch.randn(2, 8, 3, 5), torch.randn(2, 4, 8)
    before = tr(x, encoder_hidden_states=ctx, return_dict=False)[0]
    assert apply_linear_projection(tr) == 1
    assert isinstance(tr.proj_in, nn.Linear) and tr.config.use_linear_projection
    torch.testing.assert_close(tr(x, encoder_hidden_states=ctx, return_dict=False)[0], before, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# the ControlNet
# ------------------------------------------------------------------------------------------------

def test_zero_init_controlnet_leaves_the_unet_unchanged():
    unet = tiny_unet()
    net = VideoControlNet.from_unet(unet).eval()
    sample, context, hint = inputs()
    with torch.no_grad():
        down, mid = net(sample, 10, context, hint, hint_timestep=199, scale=8.0)
        assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0
        plain = unet(sample, 10, context).sample
        controlled = unet(sample, 10, context, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
        assert torch.equal(plain, controlled)

        perturb(net.controlnet_down_blocks)
        perturb(net.controlnet_mid_block, seed=3)
        down, mid = net(sample, 10, context, hint, hint_timestep=199, scale=8.0)
        changed = unet(sample, 10, context, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample
        assert changed.shape == plain.shape and not torch.allclose(changed, plain)
        zero = net(sample, 10, context, hint, conditioning_scale=0.0)
        assert all(torch.count_nonzero(r) == 0 for r in zero[0])


def test_residuals_fit_the_unet_with_two_downsamplers():
    unet = tiny_unet(TINY3_UNET)
    net = VideoControlNet.from_unet(unet).eval()
    perturb(net.controlnet_down_blocks)
    perturb(net.controlnet_mid_block, seed=3)
    sample, context, hint = inputs(f=2, h=18, w=16)
    with torch.no_grad():
        down, mid = net(sample, 10, context, hint)
        assert [tuple(r.shape[-2:]) for r in down] == [(18, 16)] * 2 + [(10, 8)] * 2 + [(6, 4)] * 2
        out = unet(sample, 10, context, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    assert out.sample.shape == sample.shape
    with pytest.raises(ConfigError):
        net(torch.randn(1, 4, 2, 16, 16), 10, context)


def test_hint_only_reaches_masked_frames():
    net = VideoControlNet.from_unet(tiny_unet()).eval()
    perturb(net.hint_embedding)
    perturb(net.controlnet_down_blocks, seed=3)
    perturb(net.controlnet_mid_block, seed=4)
    sample, context, hint = inputs()
    mask = torch.tensor([[True, False, True, False]])

    def residuals(h, m=mask):
        with torch.no_grad():
            down, mid = net(sample, 10, context, h, hint_mask=m)
        return torch.cat([r.flatten() for r in down] + [mid.flatten()])

    base = residuals(hint)
    off_frames = hint.clone()
    off_frames[:, :, [1, 3]] += 5.0
    assert torch.equal(residuals(off_frames), base)          # unselected frames' hint is ignored
    on_frame = hint.clone()
    on_frame[:, :, 2] += 5.0
    assert not torch.allclose(residuals(on_frame), base)
    assert torch.equal(residuals(hint, None), residuals(hint, torch.ones(1, 4, dtype=torch.bool)))
    assert not torch.allclose(residuals(hint, None), base)


def test_condition_embeddings_are_zero_at_init_and_masked():
    net = VideoControlNet.from_unet(tiny_unet()).eval()
    perturb(net.controlnet_down_blocks, seed=3)
    sample, context, _ = inputs()
    t = torch.tensor([199.0, 3.0])
    with torch.no_grad():
        assert torch.count_nonzero(net.hint_time_embedding(net.time_embedding(net.time_proj(t)))) == 0
        assert torch.count_nonzero(net.scale_embedding(net.time_proj(torch.tensor([4.0, 8.0])))) == 0
        plain = net(sample, 10, context)[0]
        with_conditions = net(sample, 10, context, hint_timestep=199, scale=8.0)[0]
        assert all(torch.equal(a, b) for a, b in zip(plain, with_conditions, strict=True))

        perturb(net.hint_time_embedding, seed=5)
        perturb(net.scale_embedding[2], seed=6)
        changed = net(sample, 10, context, hint_timestep=199, scale=8.0)[0]
        assert not torch.allclose(changed[-1], plain[-1])
        nowhere = torch.zeros(1, 4, dtype=torch.bool)
        masked = net(sample, 10, context, hint_timestep=199, scale=8.0, hint_mask=nowhere)[0]
        assert all(torch.equal(a, b) for a, b in zip(plain, masked, strict=True))
        # scalar and (B,) forms agree
        batched = net(sample, torch.tensor([10]), context, hint_timestep=torch.tensor([199]),
                      scale=torch.tensor([8.0]))[0]
        assert all(torch.equal(a, b) for a, b in zip(changed, batched, strict=True))


def test_from_unet_copies_the_encoder():
    unet = tiny_unet()
    net = VideoControlNet.from_unet(unet)
    theirs, ours = unet.state_dict(), net.state_dict()
    encoder = [k for k in theirs if k.startswith(ENCODER_PREFIXES)]
    assert encoder and all(torch.equal(theirs[k], ours[k]) for k in encoder)
    assert {k for k in ours if k.startswith(ENCODER_PREFIXES)} == set(encoder)
    assert net.conv_in.weight.data_ptr() != unet.conv_in.weight.data_ptr()   # a copy, not shared
    added = ("hint_embedding", "hint_time_embedding", "scale_embedding.2", "controlnet_down_blocks",
             "controlnet_mid_block")
    assert all(torch.count_nonzero(v) == 0 for k, v in ours.items() if k.startswith(added))
    assert is_venhancer_model(net)
    assert not is_venhancer_model(VideoControlNet.from_unet(tiny_unet(quirks=False)))


def test_residual_count_tiny():
    net = VideoControlNet.from_unet(tiny_unet())
    levels, layers = len(TINY_UNET["block_out_channels"]), TINY_UNET["layers_per_block"]
    assert len(net.controlnet_down_blocks) == 1 + levels * layers + (levels - 1) == 4
    sample, context, hint = inputs()
    with torch.no_grad():
        down, _ = net(sample, 10, context, hint)
    assert [r.shape[1] for r in down] == list(controlnet_residual_channels(TINY_UNET)) == [8, 8, 8, 16]


def test_paper_scale_layout_on_meta():
    with torch.device("meta"):
        unet = build_unet(VENHANCER_UNET)
        net = VideoControlNet.from_unet(unet)
    sd = net.state_dict()
    assert len(net.controlnet_down_blocks) == 12
    assert list(controlnet_residual_channels(VENHANCER_UNET)) == [320] * 4 + [640] * 3 + [1280] * 5
    assert sd["controlnet_down_blocks.0.weight"].shape == (320, 320, 1, 1)
    assert sd["controlnet_down_blocks.11.weight"].shape == (1280, 1280, 1, 1)
    assert sd["controlnet_mid_block.weight"].shape == (1280, 1280, 1, 1)
    assert sd["hint_embedding.weight"].shape == (320, 4, 3, 3)
    assert sd["hint_time_embedding.weight"].shape == (1280, 1280)
    assert sd["scale_embedding.0.weight"].shape == (1280, 320) and sd["scale_embedding.2.weight"].shape == (1280, 1280)
    assert sd["time_embedding.linear_1.weight"].shape == (1280, 320)
    assert sd["transformer_in.proj_in.weight"].shape == (512, 320)       # 8 heads × 64
    # VEnhancer's head width 64: 5 / 10 / 20 / 20 heads
    heads = [unet.down_blocks[i].attentions[0].transformer_blocks[0].attn1.heads for i in range(3)]
    assert heads == [5, 10, 20] and unet.mid_block.attentions[0].transformer_blocks[0].attn2.heads == 20
    assert unet.down_blocks[0].temp_attentions[0].transformer_blocks[0].attn1.heads == 5
    # base + ControlNet ≈ 2.045 B parameters: the 4.09 GB fp16 conversions of venhancer_*.pt
    total = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in net.parameters())
    assert 2.03e9 < total < 2.06e9
