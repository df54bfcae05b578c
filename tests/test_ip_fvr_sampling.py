"""IP-FVR sampling pieces: VEnhancer's schedule, DPM-Solver++(2M) SDE, guidance, long video."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fvr_bench.methods.ip_fvr.long_video import (
    ExponentialBlender,
    SharedStepNoise,
    clip_spans,
    shared_noise,
    stitch,
)
from fvr_bench.methods.ip_fvr.sampler import (
    VPredictionDenoiser,
    cfg_with_rescale,
    dpmpp_2m_sde,
    multi_stream_guidance,
    venhancer_sample,
)
from fvr_bench.methods.ip_fvr.schedule import NoiseSchedule


@pytest.fixture(scope="module")
def sched() -> NoiseSchedule:
    return NoiseSchedule()


# ---------------------------------------------------------------------------------- schedule
def _hand_sigma_raw(t: int, n: int = 1000) -> float:
    """σ_t before the zero-terminal-SNR rescale, from the formulas with plain floats."""
    u = 1.0 - t / (n - 1)
    a, b = math.atan(math.exp(7.5)), math.atan(math.exp(-7.5))
    logsnr = -2 * math.log(math.tan(a + u * (b - a))) - 2 * math.log(2) * u - 2 * math.log(4) * (1 - u)
    return math.sqrt(1.0 / (1.0 + math.exp(logsnr)))


def test_schedule_identities(sched):
    assert sched.sigmas.shape == (1000,)
    torch.testing.assert_close(sched.alphas**2 + sched.sigmas**2, torch.ones(1000, dtype=torch.float64))
    assert sched.sigmas[-1].item() == 1.0 and sched.alphas[-1].item() == 0.0
    assert math.isinf(sched.k_sigmas[-1].item()) and sched.logsnr[-1].item() == -math.inf
    assert (sched.sigmas.diff() > 0).all()
    assert (sched.logsnr[:-1].diff() < 0).all()
    assert (sched.k_sigmas[:-1].diff() > 0).all()


def test_schedule_hand_values(sched):
    # clean end: u = 1, logSNR = 15 − 2·ln 2, and the rescale keeps σ_min unchanged
    assert sched.logsnr[0].item() == pytest.approx(15 - 2 * math.log(2), abs=1e-9)
    assert sched.sigmas[0].item() == pytest.approx(1 / math.sqrt(1 + math.exp(15 - 2 * math.log(2))), rel=1e-12)
    assert sched.sigmas[0].item() == pytest.approx(0.0011062, abs=1e-7)
    lo, hi = _hand_sigma_raw(0), _hand_sigma_raw(999)
    assert hi == pytest.approx(1 / math.sqrt(1 + math.exp(-15 - 2 * math.log(4))), rel=1e-15)
    for t in (1, 250, 500, 899, 998):
        expected = lo + (_hand_sigma_raw(t) - lo) * (1 - lo) / (hi - lo)
        assert sched.sigmas[t].item() == pytest.approx(expected, rel=1e-12), t
    # k-sigma at the SDEdit start, from the hand value
    s899 = sched.sigmas[899].item()
    assert sched.k_sigmas[899].item() == pytest.approx(s899 / math.sqrt(1 - s899**2), rel=1e-12)
    assert s899 == pytest.approx(0.99909, abs=1e-5)


def test_v_prediction_conversions(sched):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 5, 6, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 4, 3, 5, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([17, 899])
    x_t = sched.diffuse(x0, t, eps)
    assert torch.allclose(x_t[1], sched.alphas[899] * x0[1] + sched.sigmas[899] * eps[1])
    v = sched.v_from_x0_eps(x0, eps, t)
    torch.testing.assert_close(sched.x0_from_v(x_t, t, v), x0)
    torch.testing.assert_close(sched.eps_from_v(x_t, t, v), eps)
    torch.testing.assert_close(sched.x0_from_v(x_t[:1], 17, v[:1]), x0[:1])  # scalar t


def test_t_sigma_interpolation(sched):
    ints = torch.tensor([0.0, 1.0, 500.0, 899.0, 998.0])
    torch.testing.assert_close(sched.t_to_k_sigma(ints), sched.k_sigmas[ints.long()])
    mid = sched.t_to_k_sigma(454.25).item()
    expected = math.exp(0.75 * sched.log_k_sigmas[454].item() + 0.25 * sched.log_k_sigmas[455].item())
    assert mid == pytest.approx(expected, rel=1e-12)
    assert math.isinf(sched.t_to_k_sigma(998.5).item()) and math.isinf(sched.t_to_k_sigma(999).item())
    for t in (0.0, 0.5, 44.5454, 454.4545, 899.0, 997.3):
        assert sched.k_sigma_to_t(sched.t_to_k_sigma(t)).item() == pytest.approx(t, abs=1e-6)
    assert sched.k_sigma_to_t(math.inf).item() == 999


def test_fast_timesteps(sched):
    ts = sched.sampling_timesteps(solver_mode="fast")
    expected = [899, 799, 699, 599] + [500 - k * 501 / 11 for k in range(10)]
    assert ts.tolist() == pytest.approx(expected, abs=1e-9)
    assert len(ts) == 14 and ts[-1].item() == pytest.approx(90.0909, abs=1e-4)
    sig = sched.sampling_sigmas(solver_mode="fast")
    assert sig.shape == (15,) and sig[-1].item() == 0.0
    assert sig[0].item() == pytest.approx(sched.k_sigmas[899].item(), rel=1e-12)
    # VEnhancer's own construction (torch.arange) gives the same 15 points before the discard
    high = torch.arange(899, 499, -(400 / 4))
    low = torch.arange(500, -1, -(501 / 11))
    full = torch.cat([high, low]).double()
    assert len(full) == 15
    torch.testing.assert_close(ts, full[:-1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, 7, 45, 50])
def test_trailing_timesteps(sched, steps):
    ts = sched.sampling_timesteps(steps, solver_mode="normal")
    assert len(ts) == steps and ts[0].item() == 899
    grid = torch.arange(899, -1, -(900 / (steps + 1))).double().clamp(0, 899)
    torch.testing.assert_close(ts, grid[:-1], atol=1e-3, rtol=0)
    no_discard = sched.sampling_timesteps(steps, solver_mode="normal", discard_penultimate_step=False)
    assert len(no_discard) == steps
    sig = sched.sampling_sigmas(steps, solver_mode="normal")
    assert sig.shape == (steps + 1,) and (sig.diff() < 0).all()


# ---------------------------------------------------------------------------------- sampler
def _gaussian_denoiser(mu: float, s: float):
    """Exact x̂0 = E[x0 | x_t] for data N(mu, s²), in the sampler's (VP x_t, k-sigma) terms."""

    def denoise(x_t: torch.Tensor, sigma: float) -> torch.Tensor:
        x_k = x_t * math.sqrt(1 + sigma**2)
        return mu + s**2 / (s**2 + sigma**2) * (x_k - mu)

    return denoise


def _geometric_sigmas(hi: float, lo: float, n: int) -> torch.Tensor:
    return torch.cat([torch.logspace(math.log10(hi), math.log10(lo), n, dtype=torch.float64), torch.zeros(1)])


@pytest.mark.parametrize("solver", ["midpoint", "heun"])
def test_ode_converges_to_analytic_gaussian_flow(solver):
    mu, s, s_max, s_min = 0.3, 0.5, 20.0, 0.01
    x_k = mu + math.sqrt(s**2 + s_max**2) * torch.linspace(-2, 2, 9, dtype=torch.float64)
    x_t = x_k / math.sqrt(1 + s_max**2)
    # probability-flow ODE for Gaussian data: x(σ) − mu ∝ sqrt(s² + σ²); then the final x̂0 jump
    at_min = mu + math.sqrt(s**2 + s_min**2) / math.sqrt(s**2 + s_max**2) * (x_k - mu)
    exact = mu + s**2 / (s**2 + s_min**2) * (at_min - mu)
    errors = []
    for n in (10, 20, 40, 80):
        out = dpmpp_2m_sde(_gaussian_denoiser(mu, s), x_t, _geometric_sigmas(s_max, s_min, n), eta=0.0, solver=solver)
        errors.append((out - exact).abs().max().item())
    assert errors[-1] < 1e-3
    assert all(b < a / 3 for a, b in itertools.pairwise(errors))  # second order: ×4 per halving


def test_sde_reproduces_gaussian_data_distribution():
    mu, s, s_max = 0.3, 0.5, 20.0
    g = torch.Generator().manual_seed(1)
    x_k = mu + math.sqrt(s**2 + s_max**2) * torch.randn(200_000, generator=g, dtype=torch.float64)
    out = dpmpp_2m_sde(
        _gaussian_denoiser(mu, s), x_k / math.sqrt(1 + s_max**2), _geometric_sigmas(s_max, 0.005, 40),
        eta=1.0, generator=g,
    )
    assert out.mean().item() == pytest.approx(mu, abs=0.01)
    assert out.std().item() == pytest.approx(s, rel=0.02)


def test_single_point_data_returns_the_point():
    point = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    x_t = torch.randn(3, dtype=torch.float64)
    sigmas = _geometric_sigmas(30.0, 0.05, 12)
    for eta in (0.0, 1.0):
        gen = torch.Generator().manual_seed(3)
        out = dpmpp_2m_sde(lambda x, sig: point.clone(), x_t, sigmas, eta=eta, generator=gen)
        torch.testing.assert_close(out, point)


def test_sde_deterministic_given_generator(sched):
    sigmas = sched.sampling_sigmas(solver_mode="fast")
    x_t = torch.randn(1, 2, 3, 4, 4)
    den = _gaussian_denoiser(0.0, 0.7)
    a = dpmpp_2m_sde(den, x_t, sigmas, generator=torch.Generator().manual_seed(5))
    b = dpmpp_2m_sde(den, x_t, sigmas, generator=torch.Generator().manual_seed(5))
    c = dpmpp_2m_sde(den, x_t, sigmas, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_infinite_start_sigma_is_an_euler_step(sched):
    sigmas = torch.cat([sched.t_to_k_sigma(torch.tensor([999.0, 899.0, 500.0])), torch.zeros(1, dtype=torch.float64)])
    assert math.isinf(sigmas[0].item())
    noise = torch.randn(4, dtype=torch.float64)
    seen = []
    out = dpmpp_2m_sde(lambda x, s: 0.5 * x, noise, sigmas, eta=0.0, callback=lambda i, x, d: seen.append(x.clone()))
    assert torch.equal(seen[0], noise)  # pure noise goes in unchanged
    x1_k = 0.5 * noise + sigmas[1].item() * noise  # Euler: x̂0 + s_1 · noise
    torch.testing.assert_close(seen[1], x1_k / math.sqrt(1 + sigmas[1].item() ** 2))
    assert torch.isfinite(out).all()


def test_v_prediction_denoiser_and_fast_run(sched):
    point = torch.full((1, 2, 3, 4, 4), 0.4)
    calls = []

    def oracle_v(x_t, t):  # the exact v for data concentrated on `point`
        calls.append(t.clone())
        a, s = sched.alpha(t, x_t), sched.sigma(t, x_t)
        return (a * x_t - point) / s

    x_start = sched.diffuse(point, 899, generator=torch.Generator().manual_seed(0))
    out = venhancer_sample(oracle_v, x_start, sched, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, point)
    seen = [int(t[0]) for t in calls]
    assert seen == [899, 799, 699, 599, 500, 454, 409, 363, 318, 272, 227, 181, 136, 90]
    assert all(t.dtype == torch.long and t.shape == (1,) for t in calls)
    assert VPredictionDenoiser(oracle_v, sched).timestep(sched.t_to_k_sigma(454.4545).item()) == 454


def test_venhancer_init_scaling(sched):
    sigmas = sched.sampling_sigmas(solver_mode="fast")
    x_t = torch.randn(1, 1, 2, 2, 2, dtype=torch.float64)
    seen = {}
    for init in ("exact", "venhancer"):
        dpmpp_2m_sde(lambda x, s: torch.zeros_like(x), x_t, sigmas, eta=0.0, init=init,
                     callback=lambda i, x, d, init=init: seen.setdefault(init, x.clone()))
    torch.testing.assert_close(seen["exact"], x_t)
    torch.testing.assert_close(seen["venhancer"], x_t * sched.sigmas[899].item())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy-2 copy warning inside diffusers
def test_matches_diffusers_sde_dpmsolver_pp(sched):
    diffusers = pytest.importorskip("diffusers")
    abar = sched.alphas**2
    betas = 1 - torch.cat([abar[:1], abar[1:] / abar[:-1]])
    ds = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=betas.float().numpy(), prediction_type="v_prediction",
        algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint", final_sigmas_type="zero",
    )
    ds.set_timesteps(timesteps=[899, 799, 699, 599, 500, 300])
    sigmas = ds.sigmas.double()  # identical grid for both; ≈ ours up to diffusers' float32 cumprod
    torch.testing.assert_close(sigmas[:-1], sched.k_sigmas[[899, 799, 699, 599, 500, 300]], rtol=1e-3, atol=0)

    def v_net(x):
        return 0.6 * x + 0.2 * torch.tanh(3 * x)

    def denoiser(x_t, s):  # v → x0 with α, σ of this k-sigma, as diffusers does
        a = 1 / math.sqrt(1 + s**2)
        return a * x_t - s * a * v_net(x_t)

    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 2, 3, 4, 4, generator=g)
    noises = [torch.randn(x_t.shape, generator=g) for _ in range(len(sigmas) - 1)]
    ours = []
    out = dpmpp_2m_sde(denoiser, x_t, sigmas, eta=1.0, noise_sampler=lambda i, s, sn: noises[i],
                       callback=lambda i, x, d: ours.append(x.clone()))
    sample, theirs = x_t.clone(), []
    for i, t in enumerate(ds.timesteps):
        theirs.append(sample.clone())
        sample = ds.step(v_net(sample), t, sample, variance_noise=noises[i]).prev_sample
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out, sample, atol=2e-5, rtol=1e-4)


def test_cfg_with_rescale_hand_values():
    cond = torch.tensor([[1.0, 3.0]])
    uncond = torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(cfg_with_rescale(cond, uncond, 2.0), torch.tensor([[1.0, 5.0]]))
    # std(cond) = √2, std(out) = 2√2 → ratio ½ → factor 0.2·½ + 0.8 = 0.9
    torch.testing.assert_close(cfg_with_rescale(cond, uncond, 2.0, 0.2), torch.tensor([[0.9, 4.5]]))
    torch.testing.assert_close(cfg_with_rescale(cond, uncond, 2.0, 1.0), torch.tensor([[0.5, 2.5]]))
    assert cfg_with_rescale(cond, uncond, 1.0, 0.2) is cond
    # per-sample statistics over all of (C, F, h, w)
    c2 = torch.stack([cond, 2 * cond]).view(2, 1, 1, 1, 2)
    u2 = torch.stack([uncond, uncond]).view(2, 1, 1, 1, 2)
    out = cfg_with_rescale(c2, u2, 2.0, 1.0)
    for b in range(2):
        assert out[b].std().item() == pytest.approx(c2[b].std().item(), rel=1e-6)


def test_multi_stream_guidance_hand_values():
    pos, nt, nv = torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.0])
    torch.testing.assert_close(multi_stream_guidance(pos, nt, nv), torch.tensor([3.5]))  # 2·2 − ½ − 0
    torch.testing.assert_close(multi_stream_guidance(pos, nt, nv, 1.0, 2.0), torch.tensor([7.0]))  # 4·2 − 1 − 0
    g = torch.Generator().manual_seed(0)
    p, n, v = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    torch.testing.assert_close(multi_stream_guidance(p, n, v, 0.5, 0.0), cfg_with_rescale(p, n, 1.5))
    torch.testing.assert_close(multi_stream_guidance(p, n, v, 0.5, 0.0, 0.2), cfg_with_rescale(p, n, 1.5, 0.2))


# ---------------------------------------------------------------------------------- long video
@pytest.mark.parametrize(
    "total, expected",
    [
        (5, [(0, 5)]),
        (24, [(0, 24)]),
        (25, [(0, 24), (1, 25)]),
        (40, [(0, 24), (16, 40)]),
        (57, [(0, 24), (16, 40), (32, 56), (33, 57)]),
        (72, [(0, 24), (16, 40), (32, 56), (48, 72)]),
    ],
)
def test_clip_spans(total, expected):
    assert clip_spans(total) == expected


def test_shared_noise():
    spans = clip_spans(57)
    clips = shared_noise((1, 2, 57, 3, 3), spans, torch.Generator().manual_seed(0))
    assert [c.shape[2] for c in clips] == [24] * 4
    assert torch.equal(clips[0][:, :, 16:], clips[1][:, :, :8])  # Eq. 9
    assert torch.equal(clips[1][:, :, 16:], clips[2][:, :, :8])
    assert torch.equal(clips[2][:, :, 1:], clips[3][:, :, :23])  # end-aligned clip: whole overlap
    assert not torch.allclose(clips[1][:, :, 8:16], clips[0][:, :, 8:16])  # fresh frames differ
    again = shared_noise((1, 2, 57, 3, 3), spans, torch.Generator().manual_seed(0))
    assert torch.equal(again[3], clips[3])


def test_shared_step_noise():
    noise = SharedStepNoise((1, 1, 40, 2, 2), seed=7)
    spans = clip_spans(40)
    a, b = noise.for_clip(spans[0]), noise.for_clip(spans[1])
    assert torch.equal(a(3, 1.0, 0.5)[:, :, 16:], b(3, 1.0, 0.5)[:, :, :8])
    assert not torch.allclose(a(3, 1.0, 0.5), a(4, 0.5, 0.2))


def _labelled(span, step, B=1, C=1):
    """Clip state whose value is the absolute frame index + 1000·step (frame axis = 2)."""
    frames = torch.arange(span[0], span[1], dtype=torch.float64) + 1000 * step
    return frames.view(1, 1, -1, 1, 1).expand(B, C, -1, 2, 2).clone()


def _run_blender(blender, spans, steps=2):
    """Feed every clip, every step; return the blended state of each clip at each step."""
    out = {}
    for i, span in enumerate(spans):
        for k in range(steps):
            out[i, k] = blender.apply(i, k, _labelled(span, k))
    return out


def _labels(z):
    return z[0, 0, :, 0, 0].tolist()


def test_literal_blending_indices():
    spans = clip_spans(72)  # starts 0, 16, 32, 48
    blender = ExponentialBlender(spans, mode="literal")
    out = _run_blender(blender, spans)
    # clip 3: pos 0 ← clip 0 frame 23; pos 1,2 ← clip 1 frames 38,39; pos 3..6 ← clip 2 frames 52..55
    for k in range(2):
        got = _labels(out[3, k])
        assert got[:8] == [1000 * k + f for f in (23, 38, 39, 52, 53, 54, 55, 55)]
        assert got[8:] == [1000 * k + f for f in range(56, 72)]
    # clip 1 only has clip 0 before it (j = 2 block); clip 2 has clips 0 and 1 (j = 1, 2 blocks)
    assert _labels(out[1, 0])[:8] == [16, 17, 18, 20, 21, 22, 23, 23]
    assert _labels(out[2, 1])[:8] == [1032, 1022, 1023, 1036, 1037, 1038, 1039, 1039]
    assert _labels(out[0, 0]) == list(range(24))
    assert blender.replacement_plan(3) == [(0, 23, 24, 0, 1), (1, 22, 24, 1, 3), (2, 20, 24, 3, 7)]


def test_aligned_blending_is_temporally_consistent():
    spans = clip_spans(57)  # (0,24) (16,40) (32,56) (33,57)
    blender = ExponentialBlender(spans, mode="aligned")
    out = _run_blender(blender, spans)
    for (i, k), z in out.items():
        # every frame carries its own absolute index: replacement put the matching frames in
        assert _labels(z) == [1000 * k + f for f in range(*spans[i])]
    assert blender.replacement_plan(1) == [(0, 16, 24, 0, 8)]
    assert blender.replacement_plan(3) == [(2, 1, 24, 0, 23)]  # end-aligned clip: whole overlap
    # a distinguishable earlier clip shows that values really come from it
    blender = ExponentialBlender(spans[:2], mode="aligned")
    blender.apply(0, 0, -_labelled(spans[0], 0))
    z = blender.apply(1, 0, _labelled(spans[1], 0))
    assert _labels(z) == [-f for f in range(16, 24)] + list(range(24, 40))


def test_blender_needs_the_same_step_recorded():
    spans = clip_spans(40)
    blender = ExponentialBlender(spans, mode="aligned")
    blender.apply(0, 0, _labelled(spans[0], 0))
    with pytest.raises(KeyError):
        blender.apply(1, 1, _labelled(spans[1], 1))
    with pytest.raises(ValueError):
        ExponentialBlender(spans, overlap=6, mode="literal")


def test_blender_as_sampler_hook(sched):
    """Clip 1's model input at every step carries clip 0's overlap frames of the same step."""
    spans = clip_spans(40)
    blender = ExponentialBlender(spans, mode="aligned")
    sigmas = sched.sampling_sigmas(solver_mode="fast")
    noise = shared_noise((1, 1, 40, 2, 2), spans, torch.Generator().manual_seed(0))
    step_noise = SharedStepNoise((1, 1, 40, 2, 2), seed=1)
    inputs = {0: [], 1: []}
    outs = []
    for i, span in enumerate(spans):
        lq = torch.linspace(-1, 1, 24).view(1, 1, 24, 1, 1).expand(1, 1, 24, 2, 2) * (i + 1)
        x_start = sched.diffuse(lq, 899, noise[i])
        outs.append(dpmpp_2m_sde(
            _gaussian_denoiser(0.0, 0.5), x_start, sigmas, noise_sampler=step_noise.for_clip(span),
            step_hook=blender.hook(i), callback=lambda k, x, d, i=i: inputs[i].append(x.clone()),
        ))
    for x0, x1 in zip(inputs[0], inputs[1]):
        torch.testing.assert_close(x1[:, :, :8], x0[:, :, 16:])
    video = stitch(outs, spans, 40, overlap=8)
    assert video.shape == (1, 1, 40, 2, 2)
    assert torch.equal(video[:, :, :24], outs[0]) and torch.equal(video[:, :, 24:], outs[1][:, :, 8:])


@pytest.mark.parametrize("total", [5, 24, 25, 40, 57])
@pytest.mark.parametrize("mode", ["earlier", "later", "middle"])
def test_stitch_returns_total_frames(total, mode):
    spans = clip_spans(total)
    clips = [_labelled(span, 0) + 0.1 * i for i, span in enumerate(spans)]
    video = stitch(clips, spans, total, mode=mode)
    assert video.shape == (1, 1, total, 2, 2)
    labels = _labels(video)
    assert [round(v) for v in labels] == list(range(total))  # every absolute frame once, in order
    owner = [round(10 * (v - round(v))) for v in labels]  # which clip each frame came from
    if total == 57:
        expected = {
            "earlier": [0] * 24 + [1] * 16 + [2] * 16 + [3],
            "later": [0] * 16 + [1] * 16 + [2] + [3] * 24,
            "middle": [0] * 20 + [1] * 16 + [2] * 8 + [3] * 13,
        }[mode]
        assert owner == expected


def test_stitch_checks():
    spans = clip_spans(57)
    clips = [_labelled(span, 0) for span in spans]
    stitch(clips, spans, 57, overlap=8)
    with pytest.raises(ValueError):
        stitch(clips, spans, 57, overlap=4)
    with pytest.raises(ValueError):
        stitch(clips[:3], spans[:3], 57)
