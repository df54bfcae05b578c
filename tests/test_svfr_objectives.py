"""SVFR's training heads and losses: hand-computed values, diffusers' v-prediction scheduler as
the reference for the EDM preconditioning, shapes, and one optimisation step per loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.methods.svfr.heads import LandmarkHead, LatentTransformer
from fvr_bench.methods.svfr.objectives import (
    SVFRObjective,
    add_noise,
    denoise,
    denoising_loss,
    precondition,
    sample_sigmas,
    scale_input,
    ulr_loss,
    ulr_views,
    v_target,
    wing_loss,
)

E = math.e

# clip 0: views a0, a1; clip 1: views b0, b1 — shape (B=2 clips, V=2 views, D=2)
A0, A1, B0, B1 = (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (-1.0, 0.0)
FEATURES = torch.tensor([[A0, A1], [B0, B1]], dtype=torch.float64)


# ------------------------------------------------------------------ ULR


def test_ulr_paper_form_by_hand():
    # dot products: a0·a1=1, a0·b0=0, a0·b1=-1, a1·b0=1, a1·b1=-1, b0·b1=0; τ = 1
    # anchor: −(positive) + log Σ_negatives exp(·)
    a0 = -1 + math.log(math.exp(0) + math.exp(-1))
    a1 = -1 + math.log(math.exp(1) + math.exp(-1))
    b0 = -0 + math.log(math.exp(0) + math.exp(1))
    b1 = -0 + math.log(math.exp(-1) + math.exp(-1))
    expected = (a0 + a1 + b0 + b1) / 4
    got = ulr_loss(FEATURES, tau=1.0, normalize=False)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    assert expected < 0.5  # negatives-only denominator: a loss that can be small / negative per anchor
    assert a0 < 0


def test_ulr_infonce_variant_by_hand():
    a0 = -1 + math.log(math.exp(0) + math.exp(-1) + math.exp(1))
    a1 = -1 + math.log(math.exp(1) + math.exp(-1) + math.exp(1))
    b0 = -0 + math.log(math.exp(0) + math.exp(1) + math.exp(0))
    b1 = -0 + math.log(math.exp(-1) + math.exp(-1) + math.exp(0))
    expected = (a0 + a1 + b0 + b1) / 4
    got = ulr_loss(FEATURES, tau=1.0, normalize=False, include_positive=True)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    assert got.item() > 0


def test_ulr_normalized_with_temperature_by_hand():
    # cosines: a0·a1 = 1/√2, a0·b0 = 0, a0·b1 = −1, a1·b0 = 1/√2, a1·b1 = −1/√2, b0·b1 = 0; τ = 0.5 → ×2
    r = math.sqrt(2)
    a0 = -r + math.log(math.exp(0) + math.exp(-2))
    a1 = -r + math.log(math.exp(r) + math.exp(-r))
    b0 = -0 + math.log(math.exp(0) + math.exp(r))
    b1 = -0 + math.log(math.exp(-2) + math.exp(-r))
    expected = (a0 + a1 + b0 + b1) / 4
    got = ulr_loss(FEATURES, tau=0.5, normalize=True)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # normalising makes the loss blind to the feature scale
    assert ulr_loss(FEATURES * 7, tau=0.5).item() == pytest.approx(expected, abs=1e-12)


def test_ulr_three_views_averages_positives():
    # clip 0 with three views: anchor c0 has positives c1, c2 → the mean of the two pair losses
    feats = torch.tensor([[(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)], [(-1.0, 0.0), (0.0, -1.0), (0.0, -1.0)]],
                         dtype=torch.float64)
    z = feats.reshape(6, 2)
    pairs = []
    for i in range(6):
        negatives = [j for j in range(6) if j // 3 != i // 3]
        log_neg = math.log(sum(math.exp(float(z[i] @ z[j])) for j in negatives))
        for p in range(6):
            if p != i and p // 3 == i // 3:
                pairs.append(log_neg - float(z[i] @ z[p]))
    assert len(pairs) == 12
    assert ulr_loss(feats, tau=1.0, normalize=False).item() == pytest.approx(sum(pairs) / 12, abs=1e-12)


def test_ulr_clip_ids_keep_frames_of_a_clip_out_of_the_negatives():
    # two identical "frames" per clip: each negative appears twice → + log 2, positives unchanged
    frames = torch.cat([FEATURES[:1], FEATURES[:1], FEATURES[1:], FEATURES[1:]])
    got = ulr_loss(frames, tau=1.0, normalize=False, clip_ids=torch.tensor([0, 0, 1, 1]))
    assert got.item() == pytest.approx(ulr_loss(FEATURES, tau=1.0, normalize=False).item() + math.log(2), abs=1e-12)


def test_ulr_views_arrangement():
    clips, views, frames, d = 2, 3, 4, 5
    grid = torch.randn(clips, views, frames, d)
    arranged, ids = ulr_views(grid.reshape(-1, d), clips, views, frames)
    assert arranged.shape == (clips * frames, views, d)
    assert torch.equal(arranged[1 * frames + 2, 1], grid[1, 1, 2])  # clip 1, frame 2, view 1
    assert ids.tolist() == [0] * frames + [1] * frames
    view_major = grid.permute(1, 0, 2, 3).reshape(-1, d)
    arranged_vm, _ = ulr_views(view_major, clips, views, frames, view_major=True)
    assert torch.equal(arranged_vm, arranged)


@pytest.mark.parametrize("shape", [(1, 3, 4), (3, 1, 4)])
def test_ulr_needs_two_clips_and_two_views(shape):
    with pytest.raises(ConfigError, match=r">= 2 source clips.*>= 2 task views"):
        ulr_loss(torch.randn(*shape))
    with pytest.raises(ConfigError):  # two rows, but both frames of one clip: no negatives
        ulr_loss(torch.randn(2, 2, 4), clip_ids=torch.tensor([0, 0]))


# ------------------------------------------------------------------ Wing


def test_wing_by_hand_both_regimes():
    w, eps = 10.0, 2.0
    c = w - w * math.log(1 + w / eps)
    pred = torch.tensor([[[3.0, 0.0], [0.0, -15.0]]], dtype=torch.float64)  # (N=1, P=2, 2)
    target = torch.zeros_like(pred)
    small = w * math.log(1 + 3 / eps)  # |x| = 3 < w
    large = 15 - c                     # |x| = 15 ≥ w
    assert wing_loss(pred, target, w, eps).item() == pytest.approx((small + 0 + 0 + large) / 4, abs=1e-12)
    valid = torch.tensor([[True, False]])
    assert wing_loss(pred, target, w, eps, valid).item() == pytest.approx(small / 2, abs=1e-12)
    assert wing_loss(pred, target, w, eps, torch.tensor([[False, True]])).item() == pytest.approx(large / 2, abs=1e-12)


def test_wing_is_continuous_at_w():
    w, eps = 10.0, 2.0
    at = lambda x: wing_loss(torch.tensor([[x, 0.0]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), w, eps).item() * 2
    assert at(w) == pytest.approx(w * math.log(1 + w / eps), abs=1e-12)
    assert at(w - 1e-9) == pytest.approx(at(w + 1e-9), abs=1e-7)


def test_wing_without_valid_points_is_zero_with_a_grad_path():
    pred = torch.rand(2, 68, 2, requires_grad=True)
    target = torch.full((2, 68, 2), float("nan"))  # missing landmarks may be NaN
    loss = wing_loss(pred, target, 10.0, 2.0, torch.zeros(2, 68, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_wing_nan_targets_of_missing_points_do_not_leak():
    pred = torch.rand(1, 3, 2, requires_grad=True)
    target = torch.tensor([[[0.5, 0.5], [float("nan"), float("nan")], [0.2, 0.9]]])
    valid = torch.tensor([[True, False, True]])
    loss = wing_loss(pred * 64, target * 64, 10.0, 2.0, valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert torch.equal(pred.grad[0, 1], torch.zeros(2))


# ------------------------------------------------------------------ EDM / v-prediction

SVD_SCHEDULER = {
    "prediction_type": "v_prediction", "timestep_type": "continuous", "use_karras_sigmas": True,
    "sigma_min": 0.002, "sigma_max": 700.0, "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "beta_end": 0.012, "interpolation_type": "linear", "timestep_spacing": "leading",
    "steps_offset": 1,
}


def test_preconditioning_matches_diffusers_euler_v_prediction():
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(SVD_SCHEDULER)
    scheduler.set_timesteps(5)
    sigmas = scheduler.sigmas[:-1]
    assert sigmas[0].item() == pytest.approx(700.0, rel=1e-5)
    # the UNet's timestep input is c_noise = ¼·ln σ
    assert torch.allclose(scheduler.timesteps, precondition(sigmas)[3], atol=1e-6)

    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 4, 5, 5, generator=g) * sigmas[0]  # (B, F, 4, h, w)
    for i, t in enumerate(scheduler.timesteps):
        sigma = sigmas[i].expand(2)
        scaled = scheduler.scale_model_input(sample, t)
        assert torch.allclose(scaled, scale_input(sample, sigma), rtol=1e-6, atol=1e-7)
        model_output = torch.randn(sample.shape, generator=g)
        out = scheduler.step(model_output, t, sample)
        assert torch.allclose(out.pred_original_sample, denoise(model_output, sample, sigma), rtol=1e-5, atol=1e-6)
        sample = out.prev_sample


def test_precondition_values():
    c_skip, c_out, c_in, c_noise = precondition(torch.tensor([1.0]))
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(-1 / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / math.sqrt(2))
    assert c_noise.item() == pytest.approx(0.0)


def test_perfect_v_prediction_gives_zero_loss_and_loss_is_v_mse():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 4, 6, 6, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.002, 0.5, 3.0, 700.0], dtype=torch.float64)
    noisy = add_noise(x0, noise, sigma)
    target = v_target(x0, noise, sigma)
    assert torch.allclose(denoise(target, noisy, sigma), x0, atol=1e-10)
    assert denoising_loss(target, x0, noisy, sigma).item() < 1e-12
    # λ(σ)·‖x̂0 − x0‖² = ‖F − v‖² (λ·c_out² = 1)
    out = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    per_sample = denoising_loss(out, x0, noisy, sigma, reduction="per_sample")
    assert per_sample.shape == (4,)
    assert torch.allclose(per_sample, (out - target).square().flatten(1).mean(1), rtol=1e-6)
    assert denoising_loss(out, x0, noisy, sigma, reduction="none").shape == x0.shape


def test_sample_sigmas_log_normal_and_clamped():
    s = sample_sigmas(20000, p_mean=0.7, p_std=1.6, generator=torch.Generator().manual_seed(0))
    assert s.shape == (20000,) and s.dtype == torch.float32
    assert s.min() >= 0.002 and s.max() <= 700.0
    assert s.log().mean().item() == pytest.approx(0.7, abs=0.05)
    assert s.log().std().item() == pytest.approx(1.6, abs=0.05)
    clamped = sample_sigmas(1000, p_mean=0.0, p_std=10.0, sigma_min=0.1, sigma_max=10.0,
                            generator=torch.Generator().manual_seed(0))
    assert clamped.min().item() == pytest.approx(0.1) and clamped.max().item() == pytest.approx(10.0)
    again = sample_sigmas(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, sample_sigmas(5, generator=torch.Generator().manual_seed(3)))


# ------------------------------------------------------------------ heads


def test_head_shapes():
    x = torch.randn(6, 40, 4, 4)  # (B·F = 2·3, C, h, w); C = 40 is not divisible by 32 groups
    frame = LatentTransformer(40, width=24)
    assert frame(x).shape == (6, 24)
    assert LatentTransformer(40)(x).shape == (6, 40)
    video = LatentTransformer(40, width=24, pool="video")
    assert video(x, frames=3).shape == (2, 24)
    with pytest.raises(ValueError):
        video(x)
    with pytest.raises(ConfigError):
        LatentTransformer(40, pool="clip")
    head = LandmarkHead(40, hidden=32)
    out = head(x)
    assert out.shape == (6, 68, 2)
    assert sum(isinstance(m, nn.Linear) for m in head.modules()) == 5
    assert LandmarkHead(40, hidden=32, layers=1, points=5)(x).shape == (6, 5, 2)


# ------------------------------------------------------------------ one optimisation step


def _one_step_lowers(params, loss_fn, lr=1e-3) -> tuple[float, float]:
    opt = torch.optim.Adam(params, lr=lr)
    before = loss_fn()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn()
    return before.item(), after.item()


def test_one_step_lowers_ulr():
    torch.manual_seed(0)
    head = LatentTransformer(16, width=8)
    x = torch.randn(3 * 2, 16, 4, 4)  # 3 clips × 2 views, one frame each, rows (clip, view)
    loss = lambda: ulr_loss(ulr_views(head(x), clips=3, views=2)[0], tau=0.1)
    before, after = _one_step_lowers(head.parameters(), loss)
    assert after < before


def test_one_step_lowers_wing():
    torch.manual_seed(0)
    head = LandmarkHead(16, hidden=32)
    x = torch.randn(4, 16, 4, 4)
    target = torch.rand(4, 68, 2) * 0.6 + 0.2
    loss = lambda: wing_loss(head(x) * 64, target * 64, 10.0, 2.0)
    before, after = _one_step_lowers(head.parameters(), loss)
    assert after < before


def test_one_step_lowers_denoising():
    torch.manual_seed(0)
    model = nn.Conv2d(4, 4, 3, padding=1)
    x0 = torch.randn(2, 3, 4, 8, 8)
    noise = torch.randn_like(x0)
    sigma = sample_sigmas(2, generator=torch.Generator().manual_seed(0))
    noisy = add_noise(x0, noise, sigma)

    def loss():
        out = model(scale_input(noisy, sigma).flatten(0, 1)).view_as(x0)  # (B·F, 4, h, w) frames
        return denoising_loss(out, x0, noisy, sigma)

    before, after = _one_step_lowers(model.parameters(), loss, lr=1e-2)
    assert after < before


# ------------------------------------------------------------------ Eq. 4


def test_objective_combines_and_switches():
    objective = SVFRObjective()
    assert (objective.ulr_weight, objective.prior_weight) == (0.01, 0.1)
    noise = torch.tensor(0.3)
    feats = torch.randn(2, 2, 8)
    pred, target = torch.rand(2, 68, 2), torch.rand(2, 68, 2)
    parts = objective.combine(noise, feats, pred, target)
    assert set(parts) == {"loss", "noise", "ulr", "prior"}
    assert parts["ulr"].item() == pytest.approx(ulr_loss(feats, tau=0.07).item())
    assert parts["prior"].item() == pytest.approx(wing_loss(pred * 64, target * 64, 10.0, 2.0).item())
    expected = 0.3 + 0.01 * parts["ulr"].item() + 0.1 * parts["prior"].item()
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)

    off = SVFRObjective(ulr=False, prior=False).combine(noise, feats, pred, target)
    assert set(off) == {"loss", "noise"} and off["loss"].item() == pytest.approx(0.3)
    assert set(SVFRObjective(prior=False).combine(noise, feats)) == {"loss", "noise", "ulr"}
    with pytest.raises(ConfigError):
        SVFRObjective().combine(noise, None, pred, target)
    with pytest.raises(ConfigError):
        SVFRObjective(ulr=False).combine(noise)
    with pytest.raises(ConfigError):
        SVFRObjective(tau=0.0)
    sigmas = objective.sample_sigmas(4, generator=torch.Generator().manual_seed(0))
    assert sigmas.shape == (4,)
