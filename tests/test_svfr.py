"""SVFR: the sampler's windows and guidance, the two passes, task handling, official layouts."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.svfr import sampling
from fvr_bench.methods.svfr.networks import SVD_XT_UNET, build_unet, unet_config, widen_conv_in
from fvr_bench.methods.svfr.sampling import (
    Conditioning,
    SamplerSettings,
    WindowedSampler,
    euler_step,
)
from fvr_bench.methods.svfr.tasks import (
    grayscale,
    parse_tasks,
    prepare_input,
    task_prompt,
)

SVD_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                     "prediction_type": "v_prediction", "interpolation_type": "linear", "use_karras_sigmas": True,
                     "sigma_min": 0.002, "sigma_max": 700.0, "timestep_spacing": "leading", "timestep_type": "continuous",
                     "steps_offset": 1}


def scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(SVD_SCHEDULER)


class ElementwiseUNet(nn.Module):
    """A stand-in UNet whose output at a frame depends only on that frame's inputs:
    ``v = 0.3·noisy + 0.5·LQ + ref + mean(ID tokens)`` — windows must reassemble it exactly."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(cross_attention_dim=dim)
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[int, ...]] = []

    @property
    def dtype(self):
        return torch.float32

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False):
        self.calls.append(tuple(sample.shape))
        tokens = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        task = added_time_ids.sum(dim=1).view(-1, 1, 1, 1, 1)
        out = 0.3 * sample[:, :, :4] + 0.5 * sample[:, :, 4:8] + sample[:, :, 8:12] + tokens + 0.01 * task
        return (out,)


def video_cond(frames: int, guided: bool, seed: int = 0) -> tuple[Conditioning, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lq = torch.randn(1, frames, 4, 3, 3, generator=g)
    ref = torch.randn(1, 4, 3, 3, generator=g) if guided else None
    tokens = torch.randn(1, 49, 8, generator=g) if guided else None
    init, noise = torch.randn(1, frames, 4, 3, 3, generator=g), torch.randn(1, frames, 4, 3, 3, generator=g)
    return Conditioning(lq, ref, tokens, task_prompt(("bfr",))), init, noise


# ---------------------------------------------------------------------- sampler


@pytest.mark.parametrize("frames,window,overlap", [(7, 4, 1), (9, 4, 3), (5, 16, 3), (16, 16, 3), (23, 16, 3)])
def test_windows_reassemble_a_framewise_model_exactly(frames, window, overlap):
    cond, init, noise = video_cond(frames, guided=True)
    settings = SamplerSettings(steps=4, window=window, overlap=overlap)
    windowed = WindowedSampler(ElementwiseUNet(), scheduler(), settings).sample(cond, init, noise, window=window)
    whole = WindowedSampler(ElementwiseUNet(), scheduler(), SamplerSettings(steps=4, window=frames, overlap=0))
    reference = whole.sample(cond, init, noise, window=frames)
    assert windowed.shape == (1, frames, 4, 3, 3)
    torch.testing.assert_close(windowed, reference, rtol=1e-5, atol=1e-5)


def test_window_grid_rotates_and_strides_like_the_official_loop():
    # official: range(0, T, 16 − 3·(i < 3)) shifted back by shift, shift += 3 (mod 16)
    assert sampling.window_starts(40, 16, 3, step=0, overlap_steps=3, shift=0) == [0, 13, 26, 39]
    assert sampling.window_starts(40, 16, 3, step=3, overlap_steps=3, shift=9) == [-9, 7, 23]
    assert sampling.triangular_weights(4).tolist() == [1, 2, 2, 1]


def test_euler_step_equals_diffusers_scheduler_step():
    sched = scheduler()
    sched.set_timesteps(5)
    x, v = torch.randn(1, 3, 4, 5, 5), torch.randn(1, 3, 4, 5, 5)
    t = sched.timesteps[1]
    sched._step_index = None
    sched.scale_model_input(x, t)  # initialises the step index from t, as the official loop relies on
    expected = sched.step(v, t, x).prev_sample
    mine = euler_step(x, v, float(sched.sigmas[1]), float(sched.sigmas[2]))
    torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-5)


def test_guidance_keeps_the_lq_latent_in_the_unconditional_branch():
    cond, init, _noise = video_cond(4, guided=True)
    unet = ElementwiseUNet()
    sampler = WindowedSampler(unet, scheduler(), SamplerSettings(steps=1, window=4, guidance_scale=2.0))
    x = [init]
    branches = sampler._branches(cond, 4)
    velocity = sampler._velocity(x, [cond.lq_latents], branches, 1.5, torch.tensor(0.1), cond.task, 2.0)
    x_in = init / (1.5**2 + 1) ** 0.5
    uncond = 0.3 * x_in + 0.5 * cond.lq_latents + 0.01
    cond_out = uncond + cond.reference[:, None] + cond.id_tokens.mean()
    torch.testing.assert_close(velocity, uncond + 2.0 * (cond_out - uncond))


def test_sequential_cfg_and_window_batches_give_the_same_result():
    cond, init, noise = video_cond(11, guided=True)
    base = WindowedSampler(ElementwiseUNet(), scheduler(), SamplerSettings(steps=3, window=4, overlap=1))
    other_unet = ElementwiseUNet()
    other = WindowedSampler(other_unet, scheduler(),
                            SamplerSettings(steps=3, window=4, overlap=1, window_batch=3, sequential_cfg=True))
    torch.testing.assert_close(base.sample(cond, init, noise, 4), other.sample(cond, init, noise, 4))
    assert max(shape[0] for shape in other_unet.calls) == 3  # 3 windows per call, one branch at a time


def test_unguided_pass_runs_one_branch():
    cond, init, noise = video_cond(4, guided=False)
    unet = ElementwiseUNet()
    WindowedSampler(unet, scheduler(), SamplerSettings(steps=2, window=4)).sample(cond, init, noise, 4)
    assert all(shape[0] == 1 for shape in unet.calls)


# ---------------------------------------------------------------------- tasks


@pytest.mark.parametrize("task,hot", [("bfr", [1, 0, 0]), ("colorization", [0, 1, 0]), ("inpainting", [0, 0, 1]),
                                      ("inpainting+colorization", [0, 1, 1]), ("bfr+colorization+inpainting", [1, 1, 1])])
def test_task_strings_become_the_multi_hot_prompt(task, hot):
    assert task_prompt(parse_tasks(task)).tolist() == hot


def test_unknown_task_is_refused():
    with pytest.raises(ConfigError, match="deflicker"):
        parse_tasks("deflicker")


def test_input_preparation_per_task():
    frames = torch.rand(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, 2:4] = True
    gray = prepare_input(frames, ("colorization",), None)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray, grayscale(frames))
    painted = prepare_input(frames, ("inpainting",), mask)
    assert torch.all(painted[:, :, 2:4] == 1) and torch.equal(painted[:, :, 4:], frames[:, :, 4:])
    assert torch.equal(prepare_input(frames, ("bfr",), mask), frames)


# ---------------------------------------------------------------------- networks and official layouts



def test_official_unet_pth_layout_at_paper_scale():
    """unet.pth is the SVD-xt UNet state dict with conv_in [320, 12, 3, 3] (≈1.52 B parameters, 3.05 GB fp16)."""
    unet = build_unet(unet_config(SVD_XT_UNET, None), "meta")
    state = unet.state_dict()
    assert tuple(state["conv_in.weight"].shape) == (320, 12, 3, 3)
    assert tuple(state["add_embedding.linear_1.weight"].shape) == (1280, 768)  # the task embedding E_task
    assert tuple(state["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape) == (320, 1024)
    assert tuple(state["mid_block.attentions.0.temporal_transformer_blocks.0.attn2.to_k.weight"].shape) == (1280, 1024)
    assert "up_blocks.3.attentions.2.time_mixer.mix_factor" in state
    params = sum(t.numel() for t in state.values())
    assert abs(params * 2 / 1e9 - 3.05) < 0.02  # fp16 bytes of the release file


def test_projection_dim_must_fit_three_tasks():
    with pytest.raises(ConfigError, match="3 ×"):
        unet_config({**SVD_XT_UNET, "projection_class_embeddings_input_dim": 512}, None)


def test_widened_conv_in_ignores_the_reference_channels_at_first(tiny_unet_config):
    config = {**tiny_unet_config, "in_channels": 8}
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(**config)
    conv8 = nn.Conv2d(8, unet.conv_in.out_channels, 3, padding=1)
    conv8.load_state_dict(unet.conv_in.state_dict())
    widen_conv_in(unet)
    assert unet.conv_in.in_channels == 12 and unet.config.in_channels == 12
    x = torch.randn(2, 8, 6, 6)
    extra = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(unet.conv_in(torch.cat([x, extra], 1)), conv8(x))


@pytest.fixture
def tiny_unet_config():
    from omegaconf import OmegaConf

    from fvr_bench.config import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "svfr_tiny.yaml").architecture.unet)


def test_missing_release_files_are_listed_before_anything_is_built(tmp_path, monkeypatch):
    from fvr_bench.methods.svfr.restorer import load_restorer

    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsMissingError) as error:
        load_restorer({"svd_dir": str(tmp_path / "nowhere")}, checkpoint=None)
    message = str(error.value)
    for name in ("unet.pth", "id_linear.pth", "insightface_glint360k.pth", "stable-video-diffusion-img2vid-xt"):
        assert name in message


def test_release_files_in_their_official_layout_load_strictly(tmp_path, tiny_unet_config):
    """unet.pth (diffusers UNet keys, fp16, conv_in with 12 inputs), id_linear.pth (project1024 /
    final_norm) and insightface_glint360k.pth (arcface_torch IResNet keys) as the release stores them."""
    from fvr_bench.methods.svfr.identity import IDTokenProjection
    from fvr_bench.methods.svfr.iresnet import IResNet
    from fvr_bench.methods.svfr.restorer import load_restorer

    torch.manual_seed(5)
    unet = build_unet(unet_config(tiny_unet_config, None))
    release_unet = {k: v.half() for k, v in unet.state_dict().items()}
    assert tuple(release_unet["conv_in.weight"].shape) == (32, 12, 3, 3)
    assert not any(k.startswith(("unet.", "module.")) for k in release_unet)
    torch.save(release_unet, tmp_path / "unet.pth")
    projection = IDTokenProjection(512, 32)
    torch.save({k: v.half() for k, v in projection.state_dict().items()}, tmp_path / "id_linear.pth")
    assert set(projection.state_dict()) == {"project1024.weight", "final_norm.weight", "final_norm.bias"}
    arcface = IResNet([1, 1, 1, 1])
    torch.save(arcface.state_dict(), tmp_path / "insightface_glint360k.pth")

    from omegaconf import OmegaConf

    from fvr_bench.config import CONF_DIR

    architecture = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "svfr_tiny.yaml").architecture)
    restorer = load_restorer(architecture, {"size": 32}, checkpoint=tmp_path / "unet.pth",
                             id_projection=tmp_path / "id_linear.pth", arcface=tmp_path / "insightface_glint360k.pth",
                             dtype="float32", vae_dtype="float32")
    for name, value in restorer.unet.state_dict().items():
        assert torch.equal(value, release_unet[name].float())
    assert torch.equal(restorer.identity.projection.project1024.weight, projection.project1024.weight.half().float())
    assert torch.equal(restorer.identity.arcface.fc.weight, arcface.fc.weight)
    assert all(str(p.device) != "meta" for p in restorer.parameters())
    assert "unet.pth (official layout)" in restorer.provenance()["weights"]["unet"]

    release_unet["conv_in.weight"] = release_unet["conv_in.weight"][:, :8]  # SVD-xt's own 8-channel conv_in
    torch.save(release_unet, tmp_path / "svd_unet.pth")
    with pytest.raises(ConfigError, match=r"conv_in.weight.*\(32, 8, 3, 3\)"):
        load_restorer(architecture, {"size": 32}, checkpoint=tmp_path / "svd_unet.pth", id_projection=tmp_path / "id_linear.pth",
                      arcface=tmp_path / "insightface_glint360k.pth")
    torch.save({**projection.state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "bad_linear.pth")
    with pytest.raises(ConfigError, match="unexpected key.*extra.weight"):
        load_restorer(architecture, {"size": 32}, checkpoint=tmp_path / "unet.pth", id_projection=tmp_path / "bad_linear.pth",
                      arcface=tmp_path / "insightface_glint360k.pth")


def test_skipping_the_identical_branch_changes_nothing():
    cond, init, noise = video_cond(6, guided=False)
    both_unet = ElementwiseUNet()
    both = WindowedSampler(both_unet, scheduler(), SamplerSettings(steps=2, window=4, skip_identical_branch=False))
    one = WindowedSampler(ElementwiseUNet(), scheduler(), SamplerSettings(steps=2, window=4))
    assert torch.equal(both.sample(cond, init, noise, 4), one.sample(cond, init, noise, 4))
    assert all(shape[0] == 2 for shape in both_unet.calls)  # the official pass 1: uncond and cond, both empty


def test_restore_settings_name_a_typo_and_hand_the_sampler_its_fields():
    from fvr_bench.methods.svfr.restorer import RestoreSettings

    with pytest.raises(ConfigError, match=r"svfr method\.restore: unknown option\(s\) \['stepz'\]; known: .*window_batch"):
        RestoreSettings.from_mapping({"stepz": 3})
    settings = RestoreSettings.from_mapping({"window": 8, "overlap": 2, "guidance_scale": 1.5, "sequential_cfg": True})
    assert settings.sampler(7) == SamplerSettings(steps=7, guidance_scale=1.5, window=8, overlap=2, sequential_cfg=True)
