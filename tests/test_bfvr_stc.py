"""BFVR-STC reimplementation on the tiny config (conf/method/bfvr_stc_tiny.yaml), CPU, random weights."""

from __future__ import annotations

import itertools
import json
import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from fvr_bench import weights
from fvr_bench.config import build as build_config
from fvr_bench.config import compose
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.evaluate import run_identity
from fvr_bench.methods.bfvr_stc import restorer as bfvr_restorer
from fvr_bench.methods.bfvr_stc.autoencoder import VideoDecoder, VideoEncoder
from fvr_bench.methods.bfvr_stc.discriminator import DinoDiscriminator
from fvr_bench.methods.bfvr_stc.restorer import (
    BFVRSTCRestorer,
    autoencoder_parts,
    build_restorer,
    load_restorer,
    minmax_stretch,
)
from fvr_bench.methods.bfvr_stc.training import BFVRSTCTraining
from fvr_bench.methods.bfvr_stc.official import (
    UNUSED_OFFICIAL_PREFIXES,
    from_official,
    official_key_map,
    to_official,
)
from fvr_bench.methods.bfvr_stc.quantizer import (
    SpatioTemporalQuantizer,
    marginal_prior_regularization,
    motion_residual,
    official_stage2_motion_residual,
    squared_distances,
)
from fvr_bench.methods.bfvr_stc.windows import restore_in_windows, temporal_windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> dict:
    """The tiny method config (conf/method/bfvr_stc_tiny.yaml), resolved."""
    return OmegaConf.to_container(compose("train", ["method=bfvr_stc_tiny", "stage=1"]).method, resolve=True)


def build(tiny: dict, stage: str, seed: int = 0, architecture: dict | None = None, **changes) -> BFVRSTCTraining:
    """The training module of ``stage`` as the train command builds it; ``changes`` are merged
    over ``train.stages.<stage>.module`` (e.g. ``lr=…``, ``objective={"gan_start_step": …}``)."""
    torch.manual_seed(seed)
    node = OmegaConf.merge(tiny["train"]["module"], tiny["train"]["stages"][stage]["module"], changes)
    if architecture is not None:
        node.restorer.architecture, node.hq_encoder.autoencoder = architecture, architecture["autoencoder"]
    return build_config(node, f"bfvr_stc stage {stage}")


def inference(tiny: dict, seed: int = 0, **restore) -> BFVRSTCRestorer:
    torch.manual_seed(seed)
    return build_restorer(tiny["architecture"], {**tiny["restore"], **restore}, tiny["name"]).eval()


def load(tiny: dict, checkpoint, **options) -> BFVRSTCRestorer:
    return load_restorer(tiny["architecture"], tiny["restore"], checkpoint, name=tiny["name"], **options)


def random_video(frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    """A smooth random clip ``(1, T, 3, H, W)`` in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, frames, 3, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(coarse.flatten(0, 1), size=(height, width), mode="bilinear",
                                           align_corners=False).reshape(1, frames, 3, height, width)


# ---------------------------------------------------------------------- shapes


def test_autoencoder_compresses_8x_space_2x_time_and_restore_keeps_odd_shapes(tiny):
    encoder_args, decoder_args = autoencoder_parts(tiny["architecture"]["autoencoder"])
    encoder, decoder = VideoEncoder(**encoder_args), VideoDecoder(**decoder_args)
    latent = encoder(torch.rand(1, 3, 6, 40, 56))
    assert latent.shape == (1, 16, 3, 5, 7)
    assert decoder(latent).shape == (1, 3, 6, 40, 56)

    restorer = inference(tiny)
    with torch.no_grad():
        out = restorer.restore(random_video(5, 40, 56))  # odd T, sizes not multiples of 8 after padding
        upscaled = restorer.restore(random_video(3, 20, 28), out_size=(40, 56), task="deflicker")
    assert out.shape == (1, 5, 3, 40, 56) and upscaled.shape == (1, 3, 3, 40, 56)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ConfigError, match="inpainting"):
        restorer.restore(random_video(2, 16, 16), task="inpainting")


def test_decoder_attention_is_its_own_setting_with_the_official_default(tiny):
    # official Generator: attention after each res block of levels 3 and 2; Encoder: level 3 only
    with torch.device("meta"):
        decoder, encoder = VideoDecoder(), VideoEncoder()
    assert [level.attentions is not None for level in decoder.levels] == [False, False, True, True]
    assert [level.attentions is not None for level in encoder.levels] == [False, False, False, True]
    architecture = tiny["architecture"]
    changed = {**architecture, "autoencoder": {**architecture["autoencoder"], "decoder_attention_levels": [1]}}
    module = build(tiny, "1", architecture=changed)
    assert [level.attentions is not None for level in module.restorer.decoder.levels] == [False, True, False, False]
    assert [level.attentions is not None for level in module.hq_encoder.levels] == [False, False, False, True]
    wrong = {**architecture, "autoencoder": {**architecture["autoencoder"], "decoder_attention_levels": [4]}}
    with pytest.raises(ConfigError, match="decoder_attention_levels"):
        build(tiny, "1", architecture=wrong)
    with pytest.raises(ConfigError, match="architecture.quantizer"):  # a typo is an error, not ignored
        build_restorer({**architecture, "quantizer": {**architecture["quantizer"], "codebok_size": 8}})


# ---------------------------------------------------------------------- quantizer


def test_lookup_is_the_brute_force_nearest_code_and_straight_through_reaches_the_encoder(tiny):
    torch.manual_seed(0)
    quantizer = SpatioTemporalQuantizer(codebook_size=32, emb_dim=16, temporal_norm_groups=4)
    for codebook in (quantizer.spatial_codebook, quantizer.temporal_codebook):
        torch.nn.init.normal_(codebook.weight)
    encoder = VideoEncoder(**autoencoder_parts(tiny["architecture"]["autoencoder"])[0])
    z = encoder(torch.rand(2, 3, 4, 16, 24))
    out = quantizer(z)

    flat = z.detach().permute(0, 2, 3, 4, 1).reshape(-1, 16)
    brute_spatial = torch.cdist(flat, quantizer.spatial_codebook.weight).argmin(dim=1)
    query = quantizer.temporal_query(z.detach()).permute(0, 2, 3, 4, 1).reshape(-1, 16)
    brute_temporal = torch.cdist(query, quantizer.temporal_codebook.weight).argmin(dim=1)
    assert torch.equal(out.spatial_indices.reshape(-1), brute_spatial)
    assert torch.equal(out.temporal_indices.reshape(-1), brute_temporal)
    expected = quantizer.spatial_codebook.weight[brute_spatial] + quantizer.temporal_codebook.weight[brute_temporal]
    assert torch.allclose(out.latent.permute(0, 2, 3, 4, 1).reshape(-1, 16), expected, atol=1e-5)

    weight = torch.randn_like(z)
    z.retain_grad()
    (out.latent * weight).sum().backward()
    assert torch.allclose(z.grad, weight)  # straight-through: d z_q / d z = identity
    grad = encoder.conv_in.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_motion_residual_and_the_official_stage_two_quirk():
    z = torch.randn(1, 1, 5, 3, 4)
    residual = motion_residual(z)
    assert torch.equal(residual[:, :, 0], torch.zeros_like(residual[:, :, 0]))
    assert torch.allclose(residual[:, :, 3], z[:, :, 3] - z[:, :, 2])
    # with one channel the official code's wrong permutation happens to be harmless …
    assert torch.allclose(official_stage2_motion_residual(z), residual)
    wide = torch.randn(1, 8, 5, 3, 4)
    # … with several it differences slices of channel-major memory, not frames
    assert not torch.allclose(official_stage2_motion_residual(wide), motion_residual(wide))


def test_marginal_prior_regularisation_on_a_hand_made_case():
    codebook = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    vectors = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    distances = squared_distances(vectors, codebook)
    assert torch.allclose(distances, torch.tensor([[1.0, 5.0], [1.0, 1.0]]))
    # rows of inverse distances: (1, 1/5) → (5/6, 1/6); (1, 1) → (1/2, 1/2); marginal (2/3, 1/3)
    paper = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)
    assert marginal_prior_regularization(distances, "paper").item() == pytest.approx(paper, rel=1e-5)
    # the released code: mean_k (1/K)(log(1/K) − log_softmax(marginal)_k)
    log_norm = math.log(math.exp(2 / 3) + math.exp(1 / 3))
    official = sum(0.5 * (math.log(0.5) - (m - log_norm)) for m in (2 / 3, 1 / 3)) / 2
    assert marginal_prior_regularization(distances, "official_code").item() == pytest.approx(official, rel=1e-5)
    balanced = torch.tensor([[1.0, 3.0], [3.0, 1.0]])
    assert marginal_prior_regularization(balanced, "paper").item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------------- training


class FixedBatch(torch.utils.data.Dataset):
    def __init__(self, batch: dict, repeats: int) -> None:
        self.batch, self.repeats = batch, repeats

    def __len__(self) -> int:
        return self.repeats

    def __getitem__(self, index: int) -> dict:
        return self.batch


def fit(module: BFVRSTCTraining, sample: dict, steps: int, root) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=L.pytorch.loggers.CSVLogger(root, name="logs"),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1, num_sanity_val_steps=0, limit_val_batches=0)
    loader = torch.utils.data.DataLoader(FixedBatch(sample, steps), batch_size=1)
    trainer.fit(module, loader)
    return trainer


def sample(frames: int = 4, size: int = 32) -> dict:
    gt = random_video(frames, size, size, seed=3)[0]
    lq = torch.nn.functional.avg_pool2d(gt, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
    return {"gt": gt, "lq": lq, "clip_id": "clip", "key": "clip/0"}


def test_stage_one_steps_reduce_the_loss_and_the_discriminator_trains(tiny, tmp_path):
    batch = sample()
    gt = batch["gt"][None].transpose(1, 2)
    module = build(tiny, "1", lr=2e-3, objective={"gan_start_step": 10_000})
    with torch.no_grad():
        before = module.objective.losses(module, gt, adversarial=False)["loss"].item()
    fit(module, batch, steps=4, root=tmp_path / "plain")
    with torch.no_grad():
        after = module.objective.losses(module, gt, adversarial=False)["loss"].item()
    assert after < before

    adversarial = build(tiny, "1", lr=2e-3, objective={"gan_start_step": 0})
    discriminator = adversarial.objective.discriminator
    heads = [p.detach().clone() for p in discriminator.heads.parameters()]
    backbone = [p.detach().clone() for p in discriminator.backbone.parameters()]
    untrained = adversarial.restorer.lq_encoder.conv_in.weight.detach().clone()
    trainer = fit(adversarial, batch, steps=2, root=tmp_path / "gan")
    assert trainer.global_step == 2  # one iteration = one step, although two optimisers step
    assert any(not torch.equal(a, b) for a, b in zip(heads, discriminator.heads.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(backbone, discriminator.backbone.parameters()))
    assert torch.equal(untrained, adversarial.restorer.lq_encoder.conv_in.weight)  # not a stage-1 network
    metrics = (tmp_path / "gan/logs/version_0/metrics.csv").read_text()
    assert "train/d_loss" in metrics and "train/codebook_usage_spatial" in metrics
    histogram = torch.load(tmp_path / "gan/logs/version_0/codebook_usage/step_0000002.pt")
    assert histogram["spatial"].sum() > 0 and histogram["spatial"].shape == (tiny["architecture"]["quantizer"]["codebook_size"],)


def test_stage_two_steps_reduce_the_loss_keep_stage_one_frozen_and_round_trip_a_checkpoint(tiny, tmp_path):
    stage_one = build(tiny, "1", seed=0)
    module = build(tiny, "2a", seed=1, lr=2e-3)
    trainer_one = fit(stage_one, sample(), steps=1, root=tmp_path / "one")
    stage_one_file = tmp_path / "stage_1.ckpt"
    trainer_one.save_checkpoint(stage_one_file)
    module.init_from_previous_stage(bfvr_restorer.read_restorer_weights(stage_one_file)[0], "1")
    assert torch.equal(module.restorer.lq_encoder.conv_in.weight, stage_one.hq_encoder.conv_in.weight)
    assert torch.equal(module.restorer.decoder.conv_out.weight, stage_one.restorer.decoder.conv_out.weight)
    frozen = {k: v.clone() for k, v in module.state_dict().items()
              if k.startswith(("hq_encoder", "restorer.quantizer", "restorer.decoder"))}

    batch = sample()
    gt, lq = batch["gt"][None].transpose(1, 2), batch["lq"][None].transpose(1, 2)
    with torch.no_grad():
        before = module.objective.losses(module, gt, lq)["loss"].item()
    trainer = fit(module, batch, steps=6, root=tmp_path)
    with torch.no_grad():
        after = module.objective.losses(module, gt, lq)["loss"].item()
    assert after < before
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in frozen.items())

    checkpoint = tmp_path / "stage_2a.ckpt"
    trainer.save_checkpoint(checkpoint)
    video = random_video(6, 32, 32)
    module.eval()
    with torch.no_grad():
        expected = module.restorer.restore(video)
        restored = load(tiny, checkpoint).restore(video)
    assert torch.equal(restored, expected)

    with pytest.raises(ConfigError, match="stage-1 checkpoint"):
        load(tiny, stage_one_file)  # stage 1 trains no LQ encoder / transformers: its checkpoint holds none
    with pytest.raises(ConfigError, match="hold no"):
        build(tiny, "2b").init_from_previous_stage({"quantizer.spatial_codebook.weight": torch.zeros(32, 16)}, "1")


# ---------------------------------------------------------------------- official checkpoint


def test_official_layout_key_mapping_round_trip(tiny, tmp_path):
    original = inference(tiny, seed=2)
    mapping = official_key_map(original)
    # the official constructors' block order for ch_mult (1,2,2,2), one res block, attention as official
    assert mapping["encoder.blocks.0.weight"] == "lq_encoder.conv_in.weight"
    assert mapping["encoder.blocks.2.conv.weight"] == "lq_encoder.levels.0.resample.conv.weight"
    assert mapping["encoder.blocks.8.q.weight"] == "lq_encoder.levels.3.attentions.0.q.weight"
    assert mapping["encoder.blocks.10.proj_out.weight"] == "lq_encoder.bottleneck.attention.proj_out.weight"
    assert mapping["encoder.blocks.12.weight"] == "lq_encoder.norm_out.weight"
    assert mapping["generator.blocks.5.norm.weight"] == "decoder.levels.3.attentions.0.norm.weight"
    assert mapping["generator.blocks.7.q.weight"] == "decoder.levels.2.attentions.0.q.weight"  # decoder: levels 3 and 2
    assert mapping["generator.blocks.12.conv.weight"] == "decoder.levels.0.resample.conv.weight"
    assert mapping["t_ft_layers.0.self_attn.in_proj_weight"] == "temporal_transformer.layers.0.attention.in_proj_weight"
    assert sorted(mapping.values()) == sorted(original.state_dict())

    official = to_official(original.state_dict(), original)
    official["s_feat_emb.weight"] = torch.zeros(16, 16)  # built but unused by the official network
    path = tmp_path / "ckpt-bfvr.pth"
    torch.save({"params_ema": official}, path)
    restorer = load(tiny, path)
    assert restorer.official_motion_residual
    for key, value in original.state_dict().items():
        assert torch.equal(restorer.state_dict()[key], value), key
    mapped, ignored = from_official({"params": official}, original)
    assert ignored == ["s_feat_emb.weight"] and set(mapped) == set(original.state_dict())

    original.official_motion_residual = True
    video = random_video(4, 32, 32)
    with torch.no_grad():
        assert torch.equal(restorer.restore(video), original.restore(video))
    del official["quantize.embedding_t.weight"]
    torch.save({"params_ema": official}, path)
    with pytest.raises(ConfigError, match="quantize.embedding_t.weight"):
        load(tiny, path)


def official_release_layout(n_layers: int = 9) -> dict[str, tuple[int, ...]]:
    """Key → shape of the state dict of the official release ``ckpt-bfvr.pth`` (``params_ema``), in
    its order, derived from github.com/Dixin-Lab/BFVR-STC without using ``official.py``.

    ``scripts/infer_bfvr.py`` builds ``CodeFormer3D(n_head=2, n_layers=n_layers)`` (9; the deflicker
    scripts use 6): ``VQAutoEncoder3D(img_size=512, nf=32, ch_mult=[1, 2, 4, 8], res_blocks=2,
    attn_resolutions=[32], codebook_size=1024, emb_dim=256)``, which hands ``Encoder`` and
    ``Generator`` a hard-coded resolution of 256. Both append their blocks to one list and add
    an ``AttnBlock`` after a ``ResBlock`` whenever their running *nominal* resolution is in
    ``attn_resolutions``: the encoder's starts at 256 and halves after each level but the last;
    the generator's starts at 256 / 8 and doubles after each upsampling, and the top level has
    none. ``Downsample2D`` / ``Upsample2D`` at levels 1 and 2, the 3D ones at level 0. Then
    ``position_emb_s/t`` (64² tokens), the unused ``s/t_feat_emb`` and ``fuse_convs_dict``
    (``connect_list`` 32, 64, 128, 256 → channels 256, 256, 128, 128), ``nn.MultiheadAttention``
    + ``linear1/2`` + ``norm1/2`` layers of MLP 512, ``LayerNorm`` + bias-free ``Linear`` heads.
    """
    nf, ch_mult, res_blocks, emb_dim, codes, attn_resolutions, nominal = 32, (1, 2, 4, 8), 2, 256, 1024, (32,), 256
    k3, k1 = (3, 3, 3), (1, 1, 1)
    layout: dict[str, tuple[int, ...]] = {}

    def conv(name, out_ch, in_ch, kernel, bias=True):
        layout[f"{name}.weight"] = (out_ch, in_ch, *kernel)
        if bias:
            layout[f"{name}.bias"] = (out_ch,)

    def norm(name, channels):
        layout[f"{name}.weight"], layout[f"{name}.bias"] = (channels,), (channels,)

    def res(name, in_ch, out_ch):
        norm(f"{name}.norm1", in_ch), conv(f"{name}.conv1", out_ch, in_ch, k3)
        norm(f"{name}.norm2", out_ch), conv(f"{name}.conv2", out_ch, out_ch, k3)
        if in_ch != out_ch:
            conv(f"{name}.conv_out", out_ch, in_ch, k1)

    def attn(name, channels):
        norm(f"{name}.norm", channels)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", channels, channels, k1)

    def blocks(prefix):  # appends to a numbered block list, like ModuleList.append
        count = itertools.count()
        return lambda kind, *args: kind(f"{prefix}.blocks.{next(count)}", *args)

    layout["position_emb_s"] = layout["position_emb_t"] = ((512 // 8) ** 2, 256)
    levels = len(ch_mult)
    def level(add, channels, out_ch, resolution):  # res_blocks ResBlocks, each followed by attention at 32
        for _ in range(res_blocks):
            add(res, channels, out_ch)
            channels = out_ch
            if resolution in attn_resolutions:
                add(attn, channels)
        return channels

    add, resolution, in_mult = blocks("encoder"), nominal, (1, *ch_mult)
    add(conv, nf, 3, k3)
    for i in range(levels):
        channels = level(add, nf * in_mult[i], nf * ch_mult[i], resolution)
        if i != levels - 1:
            spatial_only = i in (levels - 2, levels - 3)
            add(lambda name, c, k=(1, 3, 3) if spatial_only else k3: conv(f"{name}.conv", c, c, k), channels)
            resolution //= 2
    add(res, channels, channels), add(attn, channels), add(res, channels, channels)
    add(norm, channels), add(conv, emb_dim, channels, k3)

    layout["quantize.embedding_s.weight"] = layout["quantize.embedding_t.weight"] = (codes, emb_dim)
    attn("quantize.SA", emb_dim)  # SA2: the same parameter names (its GroupNorm has 16 groups)

    add, channels, resolution = blocks("generator"), nf * ch_mult[-1], nominal // 2 ** (levels - 1)
    add(conv, channels, emb_dim, k3)
    add(res, channels, channels), add(attn, channels), add(res, channels, channels)
    for i in reversed(range(levels)):
        channels = level(add, channels, nf * ch_mult[i], resolution)
        if i != levels - 1:
            add(lambda name, c: conv(f"{name}.conv", c, c, k3), channels)  # Upsample2D and Upsample: 3×3×3
            resolution *= 2
    add(norm, channels), add(conv, 3, channels, k3)

    dim = 256
    for letter in "st":
        conv(f"{letter}_feat_emb", dim, emb_dim, ())
    for letter in "st":
        for i in range(n_layers):
            layer = f"{letter}_ft_layers.{i}"
            layout[f"{layer}.self_attn.in_proj_weight"], layout[f"{layer}.self_attn.in_proj_bias"] = (3 * dim, dim), (3 * dim,)
            conv(f"{layer}.self_attn.out_proj", dim, dim, ())
            conv(f"{layer}.linear1", 2 * dim, dim, ()), conv(f"{layer}.linear2", dim, 2 * dim, ())
            norm(f"{layer}.norm1", dim), norm(f"{layer}.norm2", dim)
    for letter in "st":
        norm(f"{letter}_idx_pred_layer.0", dim)
        conv(f"{letter}_idx_pred_layer.1", codes, dim, (), bias=False)
    for size, channels in (("32", 256), ("64", 256), ("128", 128), ("256", 128)):
        res(f"fuse_convs_dict.{size}.encode_enc", 2 * channels, channels)
        for branch in ("scale", "shift"):
            conv(f"fuse_convs_dict.{size}.{branch}.0", channels, channels, (3, 3))
            conv(f"fuse_convs_dict.{size}.{branch}.2", channels, channels, (3, 3))
    return layout


def on_meta(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Shape-only tensors: a 71M-parameter state dict without allocating it."""
    return {key: torch.empty(shape, device="meta") for key, shape in layout.items()}


def paper_architecture(**changes) -> dict:
    architecture = OmegaConf.to_container(compose("run", ["method=bfvr_stc"]).method.architecture, resolve=True)
    return {group: {**options, **changes.get(group, {})} for group, options in architecture.items()}


def paper_module(**changes) -> BFVRSTCRestorer:
    with torch.device("meta"):
        return build_restorer(paper_architecture(**changes))


def test_paper_scale_official_layout_matches_the_official_block_order():
    module = paper_module()
    mapping = official_key_map(module)
    state = module.state_dict()
    shapes = {official: tuple(state[ours].shape) for official, ours in mapping.items()}
    release = official_release_layout()
    assert len(release) == 588  # CodeFormer3D(n_head=2, n_layers=9).state_dict()
    # every tensor the official forward uses, under its official name and shape — no more, no less
    assert shapes == {k: v for k, v in release.items() if not k.startswith(UNUSED_OFFICIAL_PREFIXES)}

    assert shapes["encoder.blocks.3.conv.weight"] == (32, 32, 3, 3, 3)      # level 0 → 1: T, H, W halved
    assert shapes["encoder.blocks.6.conv.weight"] == (64, 64, 1, 3, 3)      # level 1 → 2: H, W only
    assert shapes["encoder.blocks.9.conv.weight"] == (128, 128, 1, 3, 3)
    for attention in (11, 13, 15):                                          # level 3 ×2 and the bottleneck
        assert shapes[f"encoder.blocks.{attention}.q.weight"] == (256, 256, 1, 1, 1)
    assert shapes["encoder.blocks.18.weight"] == (256, 256, 3, 3, 3)        # conv to D = 256
    # generator: conv, Res-Attn-Res, level 3 Res-Attn-Res-Attn (256), level 2 Res-Attn-Res-Attn (128)
    # then Upsample2D (12), level 1 Res-Res, Upsample2D (15), level 0 Res-Res, Upsample (18), norm, conv
    for attention, channels in ((2, 256), (5, 256), (7, 256), (9, 128), (11, 128)):
        assert shapes[f"generator.blocks.{attention}.q.weight"] == (channels, channels, 1, 1, 1)
    assert shapes["generator.blocks.8.conv_out.weight"] == (128, 256, 1, 1, 1)
    for index, level, channels, temporal in ((12, 2, 128, False), (15, 1, 64, False), (18, 0, 32, True)):
        assert mapping[f"generator.blocks.{index}.conv.weight"] == f"decoder.levels.{level}.resample.conv.weight"
        assert shapes[f"generator.blocks.{index}.conv.weight"] == (channels, channels, 3, 3, 3)
        assert module.decoder.levels[level].resample.scale == ((2.0, 2.0, 2.0) if temporal else (1.0, 2.0, 2.0))
    assert shapes["generator.blocks.19.weight"] == (32,)
    assert shapes["generator.blocks.20.weight"] == (3, 32, 3, 3, 3)
    assert mapping["generator.blocks.20.weight"] == "decoder.conv_out.weight"
    assert shapes["position_emb_s"] == (64 * 64, 256)
    assert shapes["s_ft_layers.8.linear1.weight"] == (512, 256)
    assert shapes["quantize.SA.norm.weight"] == (256,)
    assert max(int(k.split(".")[1]) for k in mapping if k.startswith("s_ft_layers.")) == 8


def test_the_official_release_layout_loads_strictly_into_method_bfvr_stc(tmp_path, monkeypatch):
    release = on_meta(official_release_layout())
    path = tmp_path / "ckpt-bfvr.pth"
    path.write_bytes(b"stand-in: the state dict comes from read_restorer_weights below")
    monkeypatch.setattr(bfvr_restorer, "read_restorer_weights", lambda file: (dict(release), True))
    method = compose("run", ["method=bfvr_stc"]).method
    # the paper-scale restorer, shapes only: built on the meta device, loaded with load_state (strict)
    restorer = load_restorer(method.architecture, method.restore, path)
    assert restorer.official_motion_residual
    mapped, ignored = from_official(release, paper_module())
    assert set(mapped) == set(restorer.state_dict())
    assert ignored == sorted(k for k in release if k.startswith(UNUSED_OFFICIAL_PREFIXES)) and len(ignored) == 76
    assert all(tuple(mapped[k].shape) == tuple(v.shape) for k, v in restorer.state_dict().items())


def test_a_checkpoint_that_does_not_fit_is_named_by_its_first_misfit_and_both_shapes():
    release = on_meta(official_release_layout())
    # the previous decoder (attention on level 3 only) against the real release: where they part
    with pytest.raises(ConfigError) as error:
        from_official(release, paper_module(autoencoder={"decoder_attention_levels": [3]}))
    message = str(error.value)
    assert message.index("'generator.blocks.9.norm.weight' (128,)") < message.index("'generator.blocks.9.norm1.weight'")
    assert "66 official key(s) with no place here" in message and "46 expected official key(s) absent" in message
    assert ("6 tensor(s) of another shape, first 'generator.blocks.14.conv1.weight': file (64, 64, 3, 3, 3), "
            "this configuration (32, 64, 3, 3, 3)") in message
    assert "differs in autoencoder.decoder_attention_levels=[3] (release: [2, 3])" in message

    # the paper-scale configuration already in use: name the tensor and both shapes, suggest nothing in use
    wrong_grid = {**release, "position_emb_s": torch.empty(32 * 32, 256, device="meta")}
    with pytest.raises(ConfigError) as error:
        from_official(wrong_grid, paper_module())
    message = str(error.value)
    assert "first 'position_emb_s': file (1024, 256), this configuration (4096, 256)" in message
    assert "already has the release" in message and "bfvr_stc.yaml" not in message

    # an official deflicker-style file (6 transformer layers): the first absent key
    with pytest.raises(ConfigError, match=r"first 's_ft_layers\.6\.self_attn\.in_proj_weight'"):
        from_official(on_meta(official_release_layout(n_layers=6)), paper_module())


# ---------------------------------------------------------------------- windows and loading


def test_windows_cross_fade_without_seams_and_keep_every_frame(tiny):
    windows = temporal_windows(30, 8, 2)
    assert windows[0][0] == 0 and windows[-1][1] == 30 and all(e - s == 8 for s, e in windows)
    assert all(previous[1] - following[0] >= 2 for previous, following in itertools.pairwise(windows))
    video = torch.rand(1, 3, 30, 2, 2)
    assert torch.allclose(restore_in_windows(video, lambda clip: clip, 8, 2, 2), video)

    calls = []

    def disagreeing(clip: torch.Tensor) -> torch.Tensor:  # window i outputs its input + i
        calls.append(clip.shape[2])
        return clip + (len(calls) - 1)

    blended = restore_in_windows(torch.zeros(1, 1, 30, 1, 1), disagreeing, 8, 2, 2).flatten()
    assert calls == [8] * len(windows)
    assert blended[0] == 0 and blended[-1] == len(windows) - 1
    assert (blended[1:] - blended[:-1]).abs().max() <= 1 / 3 + 1e-6  # cross-faded over ≥ 2 frames, never cut

    restorer = inference(tiny, seed=3)
    constant = random_video(1, 32, 32).expand(1, 30, 3, 32, 32)
    with torch.no_grad():
        restored = restorer.restore(constant)
        first_window = restorer.restore_clip(constant[:, :8].transpose(1, 2)).transpose(1, 2)
    assert restored.shape == (1, 30, 3, 32, 32) and torch.isfinite(restored).all()
    assert torch.allclose(restored[:, :6], first_window[:, :6].clamp(0, 1), atol=1e-6)  # before the first overlap
    with pytest.raises(ConfigError, match="overlap"):
        temporal_windows(30, 8, 5)


def test_paper_scale_restorer_without_weights_stops_before_building(tmp_path, monkeypatch):
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(weights, "USER_CACHE", tmp_path / "user_cache")

    def never(*args, **kwargs):
        raise AssertionError("the network was built before the weights check")

    monkeypatch.setattr(BFVRSTCRestorer, "__init__", never)
    cfg = compose("run", ["method=bfvr_stc"])
    with pytest.raises(WeightsMissingError, match="ckpt-bfvr.pth"):
        load_restorer(cfg.method.architecture, cfg.method.restore, None)
    with pytest.raises(WeightsMissingError, match="missing.ckpt"):
        load_restorer(cfg.method.architecture, cfg.method.restore, tmp_path / "missing.ckpt")


def test_dinov2_release_keys_load_into_the_timm_backbone(tiny, tmp_path):
    options = {k: v for k, v in tiny["train"]["objectives"]["codebook_learning"]["discriminator"].items()
               if k not in ("weights_path", "pretrained", "_target_")}
    torch.manual_seed(0)
    source = DinoDiscriminator(**options)
    release = dict(source.backbone.state_dict())
    release["mask_token"] = torch.zeros(1, release["cls_token"].shape[-1])  # DINOv2's own key, not timm's
    grid = release["pos_embed"][:, 1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    larger = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear").permute(0, 2, 3, 1).reshape(1, 16, -1)
    release["pos_embed"] = torch.cat([release["pos_embed"][:, :1], larger], dim=1)  # trained at a larger size
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(release, path)
    target = DinoDiscriminator(**options)
    target.load_backbone(path)
    assert torch.equal(target.backbone.blocks[0].attn.qkv.weight, source.backbone.blocks[0].attn.qkv.weight)
    assert target.backbone.pos_embed.shape == source.backbone.pos_embed.shape
    frames = torch.rand(3, 3, 32, 32)
    assert target(frames).shape == (3 * 3,)
    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(ConfigError, match="not a DINOv2 checkpoint"):
        target.load_backbone(path)


def test_minmax_stretch_is_off_by_default_recorded_and_stretches_each_clip_when_on(tiny, tmp_path):
    cfg = compose("run", ["method=bfvr_stc", f"paths.output_dir={tmp_path}"])
    assert cfg.method.restore.minmax_stretch is False
    assert run_identity(cfg)["method"]["restore"]["minmax_stretch"] is False  # run.json / config.yaml
    assert inference(tiny).restore_settings["minmax_stretch"] is False

    clips = torch.stack([torch.linspace(0.2, 0.6, 2 * 3 * 3 * 2 * 2).reshape(2, 3, 3, 2, 2),
                         torch.full((2, 3, 3, 2, 2), 0.3)])  # (B=2, T, C, H, W); the second is constant
    stretched = minmax_stretch(clips)
    assert torch.allclose(stretched[0], (clips[0] - 0.2) / 0.4, atol=1e-6)  # one min/max over the whole clip
    assert torch.equal(stretched[1], clips[1])  # constant: unchanged, no 0/0

    video = random_video(6, 32, 32)
    off = inference(tiny, seed=4)
    on = inference(tiny, seed=4, minmax_stretch=True)
    with torch.no_grad():
        plain_out, stretched_out = off.restore(video), on.restore(video)
    low, high = plain_out.min(), plain_out.max()
    assert high > low
    assert torch.allclose(stretched_out, (plain_out - low) / (high - low), atol=1e-5)
    assert stretched_out.min() == 0 and stretched_out.max() == 1


@pytest.mark.gpu
def test_paper_scale_restore_on_cuda_fused_matches_naive_attention():
    from fvr_bench.methods.bfvr_stc.autoencoder import set_fused_attention

    torch.manual_seed(0)
    restorer = build_restorer(paper_architecture()).cuda().eval()
    window = torch.rand(1, 3, 8, 256, 256, device="cuda")
    with torch.inference_mode():
        _, fused_spatial, fused_temporal = restorer.code_logits(window)
        set_fused_attention(restorer, False)
        _, naive_spatial, naive_temporal = restorer.code_logits(window)
        set_fused_attention(restorer, True)
        restorer.restore_settings["bf16"] = True
        restored = restorer.restore(torch.rand(1, 24, 3, 512, 512, device="cuda"))
    # the same codes, except where random-weight logits nearly tie
    assert (fused_spatial.argmax(-1) == naive_spatial.argmax(-1)).float().mean() > 0.99
    assert (fused_temporal.argmax(-1) == naive_temporal.argmax(-1)).float().mean() > 0.99
    assert restored.shape == (1, 24, 3, 512, 512) and torch.isfinite(restored).all()


# ---------------------------------------------------------------------- export


def test_export_reloads_memory_mapped_into_bf16_built_on_meta(tiny, tmp_path, monkeypatch):
    from fvr_bench.training.export import export_command

    original = inference(tiny, seed=6)
    plain_file = tmp_path / "stage_2b" / "checkpoints" / "last.pt"
    plain_file.parent.mkdir(parents=True)
    torch.save({f"restorer.{k}": v for k, v in original.state_dict().items()}, plain_file)
    exported = export_command([str(plain_file), "method=bfvr_stc_tiny"])
    assert exported == tmp_path / "stage_2b" / "restorer.safetensors"
    recorded = json.loads((tmp_path / "stage_2b" / "restorer.json").read_text())
    assert recorded == {"method": "bfvr_stc", "architecture": tiny["architecture"]}

    built = []
    real_build = bfvr_restorer.build_restorer

    def watched(*args, **kwargs):  # every parameter of the networks is created on the meta device
        restorer = real_build(*args, **kwargs)
        built.append({t.device.type for t in restorer.state_dict().values()})
        return restorer

    monkeypatch.setattr(bfvr_restorer, "build_restorer", watched)
    restorer = load(tiny, exported, dtype="bfloat16")
    assert built == [{"meta"}]
    state = restorer.state_dict()
    assert set(state) == set(original.state_dict())
    for key, value in original.state_dict().items():
        assert state[key].dtype == torch.bfloat16 and state[key].device.type == "cpu", key
        assert torch.equal(state[key], value.to(torch.bfloat16)), key

    other = {**tiny["architecture"], "quantizer": {**tiny["architecture"]["quantizer"], "codebook_size": 16}}
    with pytest.raises(ConfigError, match="architecture.quantizer.codebook_size=32"):
        load_restorer(other, tiny["restore"], exported)
