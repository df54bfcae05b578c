"""DPM-Solver++(2M) SDE as VEnhancer runs it, plus the guidance combinations IP-FVR uses.

VEnhancer samples with k-diffusion's ``sample_dpmpp_2m_sde`` (η = 1, ``solver_type="midpoint"``)
on k-sigmas ``s = σ_t / α_t`` (see :mod:`.schedule`), state ``x_k = x_t / α_t``. One step from
``s`` to ``s'`` with ``h = log s − log s'`` and the data prediction ``D = x̂0``::

    x_k ← (s'/s) · e^{−ηh} · x_k + (1 − e^{−(1+η)h}) · D
          + ½ · (1 − e^{−(1+η)h}) · (h / h_prev) · (D − D_prev)          # 2nd order, midpoint
          + s' · sqrt(1 − e^{−2ηh}) · z,  z ~ N(0, I)                      # SDE noise

the 2nd-order term only once a previous ``D`` exists; a step to ``s' = 0`` returns ``D``; a step
from ``s = inf`` (t = 999 with zero terminal SNR) is an Euler step ``x_k ← D + s'·noise``. The
network sees the VP-scaled input ``x_t = x_k / sqrt(1 + s²)``. This is the same update as
diffusers' ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)``
written in VP variables (checked in the tests on shared sigmas and noise).

Deviations from VEnhancer / k-diffusion:

* **Noise**: VEnhancer draws ``z`` from a ``torchsde`` Brownian tree (increment over
  ``[s', s]`` divided by its standard deviation). torchsde is not a dependency here, so ``z`` is
  drawn from a ``torch.Generator`` per step (or from a caller's ``noise_sampler``). Brownian
  increments over the non-overlapping intervals of one trajectory are independent standard
  Gaussians after that normalisation, so a single trajectory has the same distribution; only the
  bit-level values (and the Brownian tree's coupling *across* step counts) differ.
* **Init scaling**: VEnhancer passes the SDEdit latent ``x_t = α·x0 + σ·ε`` (t = 899) as
  ``noise`` and starts from ``x_k = noise · s_0``, which equals ``x_t / α_t`` times ``σ_t``
  (0.9991 at t = 899). ``init="venhancer"`` reproduces that; ``init="exact"`` uses
  ``x_t / α_t``. :func:`venhancer_sample` defaults to ``"venhancer"``.
* With ``eta == 0`` no noise is drawn at all (k-diffusion draws and multiplies by 0), so the
  generator is left untouched.

Gradients are not disabled here (VEnhancer's sampler is ``@torch.no_grad``); wrap calls in
``torch.no_grad()`` / ``torch.inference_mode()`` for inference.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Literal

import torch

from .schedule import SDEDIT_T_START, NoiseSchedule, SolverMode

#: ``denoiser(x_t, s) -> x̂0``: x_t VP-scaled latents (B, C, F, h, w); s the k-sigma (python float).
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
#: ``v_model(x_t, t) -> v``: x_t (B, C, F, h, w); t (B,) int64 timesteps in [0, 999].
VModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``noise_sampler(step, s, s_next) -> z``: standard-normal noise shaped like the state.
NoiseSampler = Callable[[int, float, float], torch.Tensor]
#: ``step_hook(step, x_t, s) -> x_t``: may edit the VP-scaled state before the model sees it.
StepHook = Callable[[int, torch.Tensor, float], torch.Tensor]
#: ``callback(step, x_t, x0_hat)``: observes the model input and its x̂0 at each step.
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def _gaussian(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) of ``shape`` drawn on the generator's device (float32), moved to ``like``."""
    device = generator.device if generator is not None else like.device
    z = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return z.to(device=like.device, dtype=like.dtype)


def dpmpp_2m_sde(
    denoiser: Denoiser,
    x_t: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver: Literal["midpoint", "heun"] = "midpoint",
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    step_hook: StepHook | None = None,
    callback: Callback | None = None,
    init: Literal["exact", "venhancer"] = "exact",
) -> torch.Tensor:
    """Run DPM-Solver++(2M) SDE from ``sigmas[0]`` down to ``sigmas[-1] = 0``.

    Args:
        denoiser: ``(x_t, s) -> x̂0`` (see :class:`VPredictionDenoiser` for a v-prediction net).
        x_t: VP-scaled start latents (B, C, F, h, w) at k-sigma ``sigmas[0]``, i.e.
            ``α·x0 + σ·ε``; for ``sigmas[0] = inf`` this is the unit noise ε itself. Use a float32
            state for fidelity (VEnhancer's state is float32 under autocast).
        sigmas: (N + 1,) k-sigmas, decreasing, last entry 0 (``NoiseSchedule.sampling_sigmas``).
        eta: SDE noise scale η (1 = VEnhancer; 0 = the deterministic DPM-Solver++(2M)).
        s_noise: extra multiplier on the injected noise (k-diffusion's ``s_noise``).
        solver: second-order correction, ``"midpoint"`` (VEnhancer) or ``"heun"``.
        generator: source of the per-step noise when ``noise_sampler`` is None.
        noise_sampler: ``(step, s, s_next) -> z`` standard-normal noise shaped like ``x_t``
            (e.g. noise shared between overlapping clips).
        step_hook: ``(step, x_t, s) -> x_t`` applied to the VP-scaled state before each model
            evaluation (long-video blending); returning the same object means "unchanged".
        callback: ``(step, x_t, x̂0)`` observer.
        init: how ``x_t`` becomes the k-diffusion state: ``"exact"`` (``x_t·sqrt(1 + s0²)``) or
            ``"venhancer"`` (``x_t·s0``, VEnhancer's scaling; see the module docstring).

    Returns:
        x̂0 (B, C, F, h, w): the state at σ = 0, i.e. the last step's data prediction.
    """
    if solver not in ("midpoint", "heun"):
        raise ValueError(f"unknown solver {solver!r}")
    sig = [float(s) for s in torch.as_tensor(sigmas).reshape(-1).tolist()]
    if len(sig) < 2 or sig[-1] != 0.0:
        raise ValueError("sigmas must have at least two entries and end with 0")
    if any(b > a for a, b in itertools.pairwise(sig)):
        raise ValueError("sigmas must be non-increasing")

    start_noise = x_t
    if sig[0] == math.inf:
        x = None  # set by the Euler step below
    elif init == "exact":
        x = x_t * math.sqrt(1.0 + sig[0] ** 2)
    elif init == "venhancer":
        x = x_t * sig[0]
    else:
        raise ValueError(f"unknown init {init!r}")

    denoised_prev: torch.Tensor | None = None
    h_prev: float | None = None
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        if s == math.inf:
            # pure noise: x_t is ε (α = 0); k-diffusion's Euler step, no history kept
            x_in = start_noise if step_hook is None else step_hook(i, start_noise, s)
            denoised = denoiser(x_in, s)
            if callback is not None:
                callback(i, x_in, denoised)
            x = denoised + s_next * x_in
            continue

        c_in = 1.0 / math.sqrt(1.0 + s * s)  # = α for this k-sigma
        x_in = x * c_in
        if step_hook is not None:
            edited = step_hook(i, x_in, s)
            if edited is not x_in:
                x_in = edited
                x = edited / c_in
        denoised = denoiser(x_in, s)
        if callback is not None:
            callback(i, x_in, denoised)

        if s_next == 0.0:
            x = denoised  # final denoising step
        else:
            h = math.log(s) - math.log(s_next)  # λ' − λ with λ = −log s
            eta_h = eta * h
            data_coef = -math.expm1(-h - eta_h)  # 1 − e^{−(1+η)h}
            x = (s_next / s) * math.exp(-eta_h) * x + data_coef * denoised
            if denoised_prev is not None:
                inv_r = h / h_prev  # 1 / r with r = h_prev / h
                if solver == "midpoint":
                    x = x + 0.5 * data_coef * inv_r * (denoised - denoised_prev)
                else:
                    x = x + (data_coef / (-h - eta_h) + 1.0) * inv_r * (denoised - denoised_prev)
            if eta > 0.0 and s_noise > 0.0:
                z = noise_sampler(i, s, s_next) if noise_sampler is not None else _gaussian(x.shape, x, generator)
                x = x + z * (s_next * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise)
            h_prev = h
        denoised_prev = denoised
    return x


class VPredictionDenoiser:
    """Turns a v-prediction network into the sampler's ``(x_t, s) -> x̂0`` denoiser.

    As VEnhancer's ``model_fn``: the k-sigma is mapped to a timestep, **rounded** to an integer
    (half to even), the net is called with that ``(B,)`` int64 timestep and
    ``x̂0 = α_t·x_t − σ_t·v`` uses α, σ of the rounded t. At fractional grid points (fast mode's
    454.55, …) the sampler's state scaling therefore uses the interpolated k-sigma while the
    x̂0 conversion uses the rounded timestep, exactly like VEnhancer.

    Guidance belongs inside ``v_model`` (call the net 2 or 3 times and combine with
    :func:`cfg_with_rescale` / :func:`multi_stream_guidance`: VEnhancer guides on v).
    """

    def __init__(self, v_model: VModel, schedule: NoiseSchedule) -> None:
        self.v_model = v_model
        self.schedule = schedule

    def timestep(self, s: float) -> int:
        """Integer timestep the net sees for k-sigma ``s``."""
        return int(torch.round(self.schedule.k_sigma_to_t(s)).item())

    def __call__(self, x_t: torch.Tensor, s: float) -> torch.Tensor:
        t = torch.full((x_t.shape[0],), self.timestep(s), dtype=torch.long, device=x_t.device)
        v = self.v_model(x_t, t)
        return self.schedule.x0_from_v(x_t, t, v)


def venhancer_sample(
    v_model: VModel,
    x_start: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    t_start: int = SDEDIT_T_START,
    solver_mode: SolverMode = "fast",
    steps: int = 45,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    step_hook: StepHook | None = None,
    callback: Callback | None = None,
    init: Literal["exact", "venhancer"] = "venhancer",
) -> torch.Tensor:
    """VEnhancer's SDEdit sampling: trailing grid from ``t_start``, penultimate σ discarded.

    Args:
        v_model: guided v-prediction ``(x_t, t) -> v`` (B, C, F, h, w).
        x_start: ``schedule.diffuse(lq_latents, t_start, noise)``, (B, C, F, h, w).
        solver_mode: ``"fast"`` (14 evaluations) or ``"normal"`` (``steps`` evaluations).

    Returns:
        Restored latents x̂0 (B, C, F, h, w).
    """
    sigmas = schedule.sampling_sigmas(
        steps, t_max=t_start, t_min=0, discretization="trailing", solver_mode=solver_mode,
        discard_penultimate_step=True,
    )
    return dpmpp_2m_sde(
        VPredictionDenoiser(v_model, schedule), x_start, sigmas, eta=eta, solver="midpoint",
        generator=generator, noise_sampler=noise_sampler, step_hook=step_hook, callback=callback,
        init=init,
    )


def _per_sample_std(x: torch.Tensor) -> torch.Tensor:
    """Unbiased std over all non-batch dims, shaped (B, 1, …, 1)."""
    return x.flatten(1).std(dim=1).view((-1,) + (1,) * (x.ndim - 1))


def cfg_with_rescale(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float, rescale: float | None = None
) -> torch.Tensor:
    """Classifier-free guidance with VEnhancer's ``guide_rescale`` (defaults there: 7.5, 0.2).

    ``out = uncond + scale·(cond − uncond)``; then, with ``rescale = φ``, per sample b
    ``out *= φ · std(cond_b) / (std(out_b) + 1e-12) + (1 − φ)``: the guided model output
    (v for VEnhancer) is pulled back towards the conditional output's standard deviation, the
    std taken over all of (C, F, h, w) of that sample (unbiased estimator, as torch's default).
    ``scale == 1`` returns ``cond`` unchanged (VEnhancer skips the unconditional pass then).

    Args:
        cond, uncond: model outputs (B, C, F, h, w) (any shape with batch first).
        scale: guidance weight w.
        rescale: φ ∈ [0, 1] or None (no rescale).
    """
    if scale == 1.0:
        return cond
    out = uncond + scale * (cond - uncond)
    if rescale is not None:
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale must lie in [0, 1], got {rescale}")
        ratio = _per_sample_std(cond) / (_per_sample_std(out) + 1e-12)
        out = out * (rescale * ratio + (1.0 - rescale))
    return out


def multi_stream_guidance(
    pos: torch.Tensor,
    neg_text: torch.Tensor,
    neg_visual: torch.Tensor,
    w_nt: float = 0.5,
    w_nv: float = 0.5,
    rescale: float | None = None,
) -> torch.Tensor:
    """IP-FVR's multi-stream negative guidance (paper Eq. 11), on model outputs.

    ``out = (1 + w_nt + w_nv)·pos − w_nt·neg_text − w_nv·neg_visual`` where (Eq. 12) ``pos``
    uses the positive text ⊕ quality prompt and the clean reference's visual tokens, ``neg_text``
    the false-attribute ⊕ negative quality prompt with the clean reference, ``neg_visual`` the
    positive prompt with the *degraded* reference's tokens. The paper's best weights are
    w_nt = w_nv = 0.5. With ``w_nv = 0`` this is plain CFG with scale ``1 + w_nt`` and
    ``neg_text`` as the unconditional branch. Combined at the model-output (v) level, before the
    SDE step (the paper writes it on z_{t−1}; equal only with shared step noise).

    ``rescale``: optional VEnhancer-style std rescale towards ``pos`` (whether IP-FVR keeps
    ``guide_rescale`` is not stated; default off).
    """
    out = (1.0 + w_nt + w_nv) * pos - w_nt * neg_text - w_nv * neg_visual
    if rescale is not None:
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale must lie in [0, 1], got {rescale}")
        ratio = _per_sample_std(pos) / (_per_sample_std(out) + 1e-12)
        out = out * (rescale * ratio + (1.0 - rescale))
    return out
