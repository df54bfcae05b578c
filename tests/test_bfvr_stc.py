"""BFVR-STC reimplementation on the tiny config (conf/method/bfvr_stc_tiny.yaml), CPU, random weights."""

from __future__ import annotations

import itertools
import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from fvr_bench import weights
from fvr_bench.cli import compose
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.bfvr_stc.autoencoder import VideoDecoder, VideoEncoder
from fvr_bench.methods.bfvr_stc.discriminator import DinoDiscriminator
from fvr_bench.methods.bfvr_stc.module import BFVRSTCModule, load_restorer
from fvr_bench.methods.bfvr_stc.official import (
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
    """The ``module`` options of the tiny method config, as the train command passes them."""
    options = OmegaConf.to_container(compose("run", ["method=bfvr_stc_tiny"]).method.module, resolve=True)
    options.pop("_target_")
    return options


def build(tiny: dict, stage: str, seed: int = 0, **changes) -> BFVRSTCModule:
    torch.manual_seed(seed)
    options = {**tiny, **changes}
    return BFVRSTCModule(stage=stage, **options)


def random_video(frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    """A smooth random clip ``(1, T, 3, H, W)`` in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, frames, 3, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(coarse.flatten(0, 1), size=(height, width), mode="bilinear",
                                           align_corners=False).reshape(1, frames, 3, height, width)


# ---------------------------------------------------------------------- shapes


def test_autoencoder_compresses_8x_space_2x_time_and_restore_keeps_odd_shapes(tiny):
    encoder = VideoEncoder(**tiny["autoencoder"])
    decoder = VideoDecoder(**tiny["autoencoder"])
    latent = encoder(torch.rand(1, 3, 6, 40, 56))
    assert latent.shape == (1, 16, 3, 5, 7)
    assert decoder(latent).shape == (1, 3, 6, 40, 56)

    restorer = build(tiny, "inference").eval()
    with torch.no_grad():
        out = restorer.restore(random_video(5, 40, 56))  # odd T, sizes not multiples of 8 after padding
        upscaled = restorer.restore(random_video(3, 20, 28), out_size=(40, 56), task="deflicker")
    assert out.shape == (1, 5, 3, 40, 56) and upscaled.shape == (1, 3, 3, 40, 56)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ConfigError, match="inpainting"):
        restorer.restore(random_video(2, 16, 16), task="inpainting")


# ---------------------------------------------------------------------- quantizer


def test_lookup_is_the_brute_force_nearest_code_and_straight_through_reaches_the_encoder(tiny):
    torch.manual_seed(0)
    quantizer = SpatioTemporalQuantizer(codebook_size=32, emb_dim=16, temporal_norm_groups=4)
    for codebook in (quantizer.spatial_codebook, quantizer.temporal_codebook):
        torch.nn.init.normal_(codebook.weight)
    encoder = VideoEncoder(**tiny["autoencoder"])
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


def fit(module: BFVRSTCModule, sample: dict, steps: int, root) -> L.Trainer:
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
    module = build(tiny, "1", lr=2e-3, loss={**tiny["loss"], "gan_start_step": 10_000})
    with torch.no_grad():
        before = module.stage_one_losses(gt, adversarial=False)["loss"].item()
    fit(module, batch, steps=4, root=tmp_path / "plain")
    with torch.no_grad():
        after = module.stage_one_losses(gt, adversarial=False)["loss"].item()
    assert after < before

    adversarial = build(tiny, "1", lr=2e-3, loss={**tiny["loss"], "gan_start_step": 0})
    heads = [p.detach().clone() for p in adversarial.discriminator.heads.parameters()]
    backbone = [p.detach().clone() for p in adversarial.discriminator.backbone.parameters()]
    trainer = fit(adversarial, batch, steps=2, root=tmp_path / "gan")
    assert trainer.global_step == 2  # one iteration = one step, although two optimisers step
    assert any(not torch.equal(a, b) for a, b in zip(heads, adversarial.discriminator.heads.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(backbone, adversarial.discriminator.backbone.parameters()))
    metrics = (tmp_path / "gan/logs/version_0/metrics.csv").read_text()
    assert "train/d_loss" in metrics and "train/codebook_usage_spatial" in metrics
    histogram = torch.load(tmp_path / "gan/logs/version_0/codebook_usage/step_0000002.pt")
    assert histogram["spatial"].sum() > 0 and histogram["spatial"].shape == (tiny["quantizer"]["codebook_size"],)


def test_stage_two_steps_reduce_the_loss_keep_stage_one_frozen_and_round_trip_a_checkpoint(tiny, tmp_path):
    stage_one = build(tiny, "1", seed=0)
    module = build(tiny, "2a", seed=1, lr=2e-3)
    module.init_from_previous_stage(stage_one.state_dict(), "1")
    assert torch.equal(module.lq_encoder.conv_in.weight, stage_one.hq_encoder.conv_in.weight)
    assert torch.equal(module.decoder.conv_out.weight, stage_one.decoder.conv_out.weight)
    frozen = {k: v.clone() for k, v in module.state_dict().items() if k.startswith(("hq_encoder", "quantizer", "decoder"))}

    batch = sample()
    gt, lq = batch["gt"][None].transpose(1, 2), batch["lq"][None].transpose(1, 2)
    with torch.no_grad():
        before = module.stage_two_losses(gt, lq)["loss"].item()
    trainer = fit(module, batch, steps=6, root=tmp_path)
    with torch.no_grad():
        after = module.stage_two_losses(gt, lq)["loss"].item()
    assert after < before
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in frozen.items())

    checkpoint = tmp_path / "stage_2a.ckpt"
    trainer.save_checkpoint(checkpoint)
    video = random_video(6, 32, 32)
    module.eval()
    with torch.no_grad():
        expected = module.restore(video)
        restored = load_restorer(tiny, checkpoint).restore(video)
    assert torch.equal(restored, expected)

    plain_file = tmp_path / "stage_1_state.pt"
    torch.save(stage_one.state_dict(), plain_file)
    with pytest.raises(ConfigError, match="stage-1 checkpoint"):
        load_restorer(tiny, plain_file)
    with pytest.raises(ConfigError, match="hold no"):
        build(tiny, "2b").init_from_previous_stage({"quantizer.spatial_codebook.weight": torch.zeros(32, 16)}, "1")


# ---------------------------------------------------------------------- official checkpoint


def test_official_layout_key_mapping_round_trip(tiny, tmp_path):
    original = build(tiny, "inference", seed=2).eval()
    mapping = official_key_map(original)
    # the official constructors' block order for ch_mult (1,2,2,2), one res block, attention at the last level
    assert mapping["encoder.blocks.0.weight"] == "lq_encoder.conv_in.weight"
    assert mapping["encoder.blocks.2.conv.weight"] == "lq_encoder.levels.0.resample.conv.weight"
    assert mapping["encoder.blocks.8.q.weight"] == "lq_encoder.levels.3.attentions.0.q.weight"
    assert mapping["encoder.blocks.10.proj_out.weight"] == "lq_encoder.bottleneck.attention.proj_out.weight"
    assert mapping["encoder.blocks.12.weight"] == "lq_encoder.norm_out.weight"
    assert mapping["generator.blocks.5.norm.weight"] == "decoder.levels.3.attentions.0.norm.weight"
    assert mapping["generator.blocks.11.conv.weight"] == "decoder.levels.0.resample.conv.weight"
    assert mapping["t_ft_layers.0.self_attn.in_proj_weight"] == "temporal_transformer.layers.0.attention.in_proj_weight"
    assert sorted(mapping.values()) == sorted(original.state_dict())

    official = to_official(original.state_dict(), original)
    official["s_feat_emb.weight"] = torch.zeros(16, 16)  # built but unused by the official network
    path = tmp_path / "ckpt-bfvr.pth"
    torch.save({"params_ema": official}, path)
    restorer = load_restorer(tiny, path)
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
        load_restorer(tiny, path)


def test_paper_scale_official_layout_matches_the_official_block_order():
    with torch.device("meta"):
        module = BFVRSTCModule(stage="inference")
    mapping = official_key_map(module)
    state = module.state_dict()
    shapes = {official: state[ours].shape for official, ours in mapping.items()}
    assert shapes["encoder.blocks.3.conv.weight"] == (32, 32, 3, 3, 3)      # level 0 → 1: T, H, W halved
    assert shapes["encoder.blocks.6.conv.weight"] == (64, 64, 1, 3, 3)      # level 1 → 2: H, W only
    assert shapes["encoder.blocks.9.conv.weight"] == (128, 128, 1, 3, 3)
    for attention in (11, 13, 15):                                          # level 3 ×2 and the bottleneck
        assert shapes[f"encoder.blocks.{attention}.q.weight"] == (256, 256, 1, 1, 1)
    assert shapes["encoder.blocks.18.weight"] == (256, 256, 3, 3, 3)        # conv to D = 256
    assert shapes["generator.blocks.16.conv.weight"] == (32, 32, 3, 3, 3)   # last upsampling, after level 0
    assert shapes["generator.blocks.18.weight"] == (3, 32, 3, 3, 3)
    assert shapes["position_emb_s"] == (64 * 64, 256)
    assert shapes["s_ft_layers.8.linear1.weight"] == (512, 256)
    assert shapes["quantize.SA.norm.weight"] == (256,)
    assert max(int(k.split(".")[1]) for k in mapping if k.startswith("s_ft_layers.")) == 8


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

    restorer = build(tiny, "inference", seed=3).eval()
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

    monkeypatch.setattr(BFVRSTCModule, "__init__", never)
    cfg = compose("run", ["method=bfvr_stc"])
    with pytest.raises(WeightsMissingError, match="ckpt-bfvr.pth"):
        load_restorer(cfg.method.module, None)
    with pytest.raises(WeightsMissingError, match="missing.ckpt"):
        load_restorer(cfg.method.module, tmp_path / "missing.ckpt")


def test_dinov2_release_keys_load_into_the_timm_backbone(tiny, tmp_path):
    options = {k: v for k, v in tiny["discriminator"].items() if k != "weights_path"}
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


@pytest.mark.gpu
def test_paper_scale_restore_on_cuda_fused_matches_naive_attention():
    from fvr_bench.methods.bfvr_stc.autoencoder import set_fused_attention

    torch.manual_seed(0)
    restorer = BFVRSTCModule(stage="inference").cuda().eval()
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
