"""VEnhancer's noise schedule and sampling discretisation, in VP and in k-diffusion terms.

IP-FVR (Han et al., "Show and Polish") is built on VEnhancer, whose diffusion code
(``video_to_video/diffusion/schedules_sdedit.py`` / ``diffusion_sdedit.py``) defines:

* **Schedule** ``logsnr_cosine_interp`` with ``n = 1000`` integer timesteps ``t = 0 … 999``
  (t = 0 cleanest). With ``u = 1 − t / (n − 1)`` (so ``u`` runs 1 → 0 as t runs 0 → n − 1)::

      base(u)   = −2 · log tan(a + u · (b − a)),  a = atan(exp(−λ_min / 2)),  b = atan(exp(−λ_max / 2))
      logSNR(t) = base(u) − 2·log(scale_min) · u − 2·log(scale_max) · (1 − u)

  with ``λ ∈ [λ_min, λ_max] = [−15, 15]`` and ``scale_min = 2, scale_max = 4``: the cosine
  logSNR curve is shifted down by ``2·log 2`` at the clean end and by ``2·log 4`` at the
  noisy end, linearly interpolated in ``u`` in between. ``σ_t = sqrt(sigmoid(−logSNR))``.
* **Zero terminal SNR**: σ is rescaled affinely, ``σ ← σ_min + (σ − σ_min)·(1 − σ_min) /
  (σ_max − σ_min)``, so the smallest σ is kept and the largest becomes exactly 1 (α_999 = 0).
* VP parametrisation: ``x_t = α_t · x0 + σ_t · ε`` with ``α_t = sqrt(1 − σ_t²)``; the network
  predicts ``v`` and ``x0 = α_t · x_t − σ_t · v``.
* The sampler works in k-diffusion's variance-exploding variables: ``s_t = σ_t / α_t`` (called
  "k-sigma" here; ``inf`` at t = 999), state ``x_k = x_t / α_t``. Fractional timesteps are
  mapped to k-sigmas by linear interpolation of ``log s_t`` between the two neighbouring integer
  timesteps (VEnhancer ``_t_to_sigma``), and back by the inverse interpolation
  (``_sigma_to_t``).
* **Discretisation** (``GaussianDiffusion.sample``): the SDEdit run starts at ``t_max = 899``
  (``total_noise_levels − 1`` with 900 levels); ``"trailing"`` gives ``steps`` points
  ``t_max − k · (t_max − t_min + 1) / steps``; VEnhancer's ``"fast"`` solver mode (Aug/Sep 2024
  code) replaces them by 4 trailing points on ``[500, t_max]`` plus 11 trailing points on
  ``[0, 500]``: ``[899, 799, 699, 599, 500, 454.55, …, 90.09, 44.55]``. A final σ = 0 is
  appended and, with ``discard_penultimate_step`` (on by default for DPM-Solver++(2M) SDE),
  the penultimate σ is dropped: for ``"trailing"`` one extra point is generated first, so
  ``steps`` model evaluations remain; in fast mode 15 points → **14 model evaluations**, the
  last step jumping from t = 90.09 straight to σ = 0.

Deviations (all numerically immaterial, documented so nobody chases them):

* Computed in float64 (VEnhancer: float32). In float32 the raw ``σ_999`` already rounds to 1.0
  so VEnhancer's rescale is skipped; in float64 it is applied (a ~1e-8 relative change) and
  ``σ_999`` is then set to exactly 1 to remove the last ulp of round-off.
* VEnhancer's unused helper ``sigmas_to_logsnrs`` returns ``log(σ²/α²) = −logSNR`` (sign
  slip); :attr:`NoiseSchedule.logsnr` here is the usual ``log(α²/σ²)``.

Shapes: per-timestep tables are 1-D ``(n,)`` float64; latent tensors are ``(B, C, F, h, w)``
(any rank ≥ 1 with batch first works) and the per-sample timestep ``t`` is an int, a 0-d tensor
or a ``(B,)`` tensor.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Discretization = Literal["trailing", "linspace", "leading"]
SolverMode = Literal["fast", "normal"]

#: VEnhancer SDEdit start: ``t = total_noise_levels − 1`` with ``total_noise_levels = 900``.
SDEDIT_T_START = 899
#: Fast mode: split point and the number of trailing points above / below it.
FAST_T_MID = 500
FAST_N_HIGH = 4
FAST_N_LOW = 11


def _logsnr_cosine_interp(
    n: int, logsnr_min: float, logsnr_max: float, scale_min: float, scale_max: float
) -> torch.Tensor:
    """``(n,)`` float64 logSNR of VEnhancer's shifted-and-interpolated cosine schedule."""
    a = math.atan(math.exp(-0.5 * logsnr_min))
    b = math.atan(math.exp(-0.5 * logsnr_max))
    u = torch.linspace(1.0, 0.0, n, dtype=torch.float64)  # u = 1 at t = 0 (clean end)
    base = -2.0 * torch.log(torch.tan(a + u * (b - a)))
    # shifting a schedule by "scale" s multiplies the SNR by 1/s²; the shift is interpolated
    # from s = scale_min at the clean end to s = scale_max at the noisy end
    return base - 2.0 * math.log(scale_min) * u - 2.0 * math.log(scale_max) * (1.0 - u)


class NoiseSchedule:
    """VEnhancer's ``logsnr_cosine_interp`` schedule (+ zero terminal SNR) over ``t ∈ [0, n)``.

    Attributes (all ``(n,)`` float64 on CPU; index = integer timestep):
        sigmas:   σ_t ∈ (0, 1], increasing in t; ``sigmas[-1] == 1`` with zero terminal SNR.
        alphas:   α_t = sqrt(1 − σ_t²) ∈ [0, 1), decreasing; ``alphas[-1] == 0``.
        logsnr:   log(α_t² / σ_t²), decreasing; ``−inf`` at the last step with zero terminal SNR.
        k_sigmas: s_t = σ_t / α_t (k-diffusion σ), increasing; ``inf`` at the last step.
    """

    def __init__(
        self,
        n: int = 1000,
        *,
        logsnr_min: float = -15.0,
        logsnr_max: float = 15.0,
        scale_min: float = 2.0,
        scale_max: float = 4.0,
        zero_terminal_snr: bool = True,
    ) -> None:
        if n < 2:
            raise ValueError(f"need at least 2 timesteps, got n={n}")
        self.num_timesteps = n
        logsnr = _logsnr_cosine_interp(n, logsnr_min, logsnr_max, scale_min, scale_max)
        sigmas = torch.sqrt(torch.sigmoid(-logsnr))
        if zero_terminal_snr and sigmas.max() != 1.0:
            lo, hi = sigmas.min(), sigmas.max()
            sigmas = lo + (sigmas - lo) * (1.0 - lo) / (hi - lo)
            # mathematically exactly 1; remove float64 round-off so α_{n-1} is exactly 0
            sigmas[sigmas.argmax()] = 1.0
        self.sigmas = sigmas
        self.alphas = torch.sqrt((1.0 - sigmas**2).clamp_min(0.0))
        self.logsnr = torch.log(self.alphas**2) - torch.log(sigmas**2)
        self.k_sigmas = sigmas / self.alphas  # inf where α = 0
        self.log_k_sigmas = torch.log(self.k_sigmas)

    # ------------------------------------------------------------------ per-timestep lookup
    def _gather(self, table: torch.Tensor, t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``table[t]`` shaped ``(B, 1, …, 1)`` (or a 0-d tensor for a scalar t), in x's dtype/device."""
        t = torch.as_tensor(t, device=table.device)
        if t.is_floating_point():
            if not torch.equal(t, t.round()):
                raise ValueError("per-timestep lookup needs integer timesteps")
            t = t.long()
        values = table[t]
        if values.ndim == 1:
            values = values.view((-1,) + (1,) * (x.ndim - 1))
        return values.to(device=x.device, dtype=x.dtype)

    def alpha(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """α_t broadcastable against ``like`` (B, …)."""
        return self._gather(self.alphas, t, like)

    def sigma(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """σ_t broadcastable against ``like`` (B, …)."""
        return self._gather(self.sigmas, t, like)

    # ------------------------------------------------------------------ VP conversions
    def diffuse(
        self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x_t = α_t · x0 + σ_t · ε``. x0: (B, C, F, h, w) latents; ε ~ N(0, I) if not given."""
        if noise is None:
            device = generator.device if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float32)
            noise = noise.to(device=x0.device, dtype=x0.dtype)
        return self.alpha(t, x0) * x0 + self.sigma(t, x0) * noise

    def x0_from_v(self, x_t: torch.Tensor, t: int | torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``x0 = α_t · x_t − σ_t · v`` (VEnhancer ``GaussianDiffusion.denoise``)."""
        return self.alpha(t, x_t) * x_t - self.sigma(t, x_t) * v

    def eps_from_v(self, x_t: torch.Tensor, t: int | torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``ε = σ_t · x_t + α_t · v`` (the same identity solved for ε)."""
        return self.sigma(t, x_t) * x_t + self.alpha(t, x_t) * v

    def v_from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Training target ``v = α_t · ε − σ_t · x0`` (IP-FVR Eq. 3)."""
        return self.alpha(t, x0) * eps - self.sigma(t, x0) * x0

    # ------------------------------------------------------------------ t ↔ k-sigma
    def t_to_k_sigma(self, t: float | torch.Tensor) -> torch.Tensor:
        """k-sigma at (possibly fractional) timesteps: log-linear interpolation, float64.

        Between t = n − 2 and n − 1 the interpolation involves ``log inf`` and gives ``inf``,
        as VEnhancer's ``_t_to_sigma`` does.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        if (t < 0).any() or (t > self.num_timesteps - 1).any():
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps - 1}]")
        lo = t.floor().long()
        hi = t.ceil().long()
        w = t - lo
        log_lo, log_hi = self.log_k_sigmas[lo], self.log_k_sigmas[hi]
        # w == 0 must not touch log_hi (0 · inf = nan)
        log_s = torch.where(w == 0, log_lo, (1 - w) * log_lo + w * log_hi)
        log_s = torch.where(torch.isnan(log_s) | torch.isinf(log_s), torch.full_like(log_s, math.inf), log_s)
        return log_s.exp()

    def k_sigma_to_t(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`t_to_k_sigma` (fractional t, float64); ``inf`` → n − 1.

        Like VEnhancer's ``_sigma_to_t``: find the last integer timestep whose log k-sigma is
        ≤ log σ (clamped to ≤ n − 2) and interpolate linearly in log k-sigma to the next one,
        the weight clamped to [0, 1].
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        flat = sigma.reshape(-1)
        out = torch.empty_like(flat)
        table = self.log_k_sigmas
        n = self.num_timesteps
        for k, s in enumerate(flat.tolist()):
            if s == math.inf:
                out[k] = n - 1
                continue
            log_s = math.log(s)
            lo = int((table <= log_s).sum().item()) - 1  # table increasing: count of ≤ minus one
            lo = min(max(lo, 0), n - 2)
            a, b = table[lo].item(), table[lo + 1].item()
            w = 0.0 if b == math.inf else (a - log_s) / (a - b)
            w = min(max(w, 0.0), 1.0)
            out[k] = lo + w
        return out.reshape(sigma.shape)

    # ------------------------------------------------------------------ discretisation
    def sampling_timesteps(
        self,
        steps: int = 45,
        *,
        t_max: int = SDEDIT_T_START,
        t_min: int = 0,
        discretization: Discretization = "trailing",
        solver_mode: SolverMode = "fast",
        discard_penultimate_step: bool = True,
    ) -> torch.Tensor:
        """Timesteps (float64, decreasing, fractional allowed) at which the model is evaluated.

        One model evaluation per returned entry (before CFG multiplies it). ``solver_mode="fast"``
        applies only to ``"trailing"`` (as in VEnhancer) and ignores ``steps``; the returned
        list is then ``[899, 799, 699, 599, 500, 500 − 501/11, …, 500 − 9·501/11]`` (14 entries,
        t = 44.55 having been discarded as the penultimate point). ``discard_penultimate_step``
        makes VEnhancer generate one extra grid point and drop the last one, so ``steps``
        evaluations remain in normal mode.
        """
        if not 0 <= t_min < t_max <= self.num_timesteps - 1:
            raise ValueError(f"need 0 <= t_min < t_max <= {self.num_timesteps - 1}")
        if steps < 1:
            raise ValueError("steps must be >= 1")
        n_points = steps + 1 if discard_penultimate_step else steps
        span = t_max - t_min + 1
        if discretization == "trailing":
            if solver_mode == "fast":
                if not t_min < FAST_T_MID < t_max:
                    raise ValueError(f"fast mode needs t_min < {FAST_T_MID} < t_max")
                high = _trailing(t_max, t_max - FAST_T_MID + 1, FAST_N_HIGH)
                low = _trailing(FAST_T_MID, FAST_T_MID - t_min + 1, FAST_N_LOW)
                ts = torch.cat([high, low])
            elif solver_mode == "normal":
                ts = _trailing(t_max, span, n_points)
            else:
                raise ValueError(f"unknown solver_mode {solver_mode!r}")
        elif discretization == "linspace":
            ts = torch.linspace(t_max, t_min, n_points, dtype=torch.float64)
        elif discretization == "leading":
            # ascending grid t_min, t_min + Δ, … below t_max + 1, then reversed
            stride = span / n_points
            ts = (t_min + stride * torch.arange(n_points, dtype=torch.float64)).flip(0)
        else:
            raise ValueError(f"unknown discretization {discretization!r}")
        ts = ts.clamp(t_min, t_max)
        if discard_penultimate_step:
            # the grid's last point is the penultimate σ once σ = 0 is appended
            ts = ts[:-1]
        return ts

    def sampling_sigmas(self, steps: int = 45, **kwargs) -> torch.Tensor:
        """k-sigmas for :func:`~fvr_bench.methods.ip_fvr.sampler.dpmpp_2m_sde`: ``(N + 1,)`` float64.

        ``k_sigma(t)`` for each of the N :meth:`sampling_timesteps` (same keywords), then 0.
        """
        ts = self.sampling_timesteps(steps, **kwargs)
        return torch.cat([self.t_to_k_sigma(ts), torch.zeros(1, dtype=torch.float64)])


def _trailing(start: float, span: float, count: int) -> torch.Tensor:
    """``count`` points ``start − k · span / count`` (k = 0 … count − 1), float64.

    VEnhancer builds these with ``torch.arange(start, start − span, −span / count)``; in exact
    arithmetic that range has exactly ``count`` elements, so it is written that way here to
    avoid arange's floating-point length rounding.
    """
    return start - (span / count) * torch.arange(count, dtype=torch.float64)
