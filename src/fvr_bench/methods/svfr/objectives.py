"""SVFR's training losses (paper Eq. 4): ``L = L_noise + λ1·L_ULR + λ2·L_prior``.

* ``L_noise`` — the denoising loss in Stable Video Diffusion's own parametrisation. The paper
  writes ε-prediction MSE, but SVD-xt is an EDM-preconditioned v-prediction model (its
  scheduler: ``EulerDiscreteScheduler`` with ``prediction_type="v_prediction"``,
  ``timestep_type="continuous"``, σ ∈ [0.002, 700], Karras sigmas), so fine-tuning keeps that:

      noisy = x0 + σ·n,   n ~ N(0, I)
      UNet(c_in·noisy, c_noise) = F,   c_in = 1/√(σ²+1),   c_noise = ¼·ln σ
      x̂0 = c_skip·noisy + c_out·F,   c_skip = 1/(σ²+1),   c_out = −σ/√(σ²+1)
      L_noise = λ(σ)·‖x̂0 − x0‖²,   λ(σ) = (σ²+1)/σ²

  x̂0 is exactly diffusers' Euler v-prediction ``pred_original_sample`` and ``c_noise`` the
  timestep it passes for continuous timesteps. Since λ(σ)·c_out² = 1, L_noise equals the plain
  MSE between F and the v target ``(n − σ·x0)/√(σ²+1)`` (:func:`v_target`). σ is drawn
  log-normal, ``ln σ ~ N(P_mean, P_std²)`` (:func:`sample_sigmas`).
* ``L_ULR`` — Unified Latent Regularisation (§4.1, Eq. 2): a contrastive loss on the
  :class:`.heads.LatentTransformer` features, positives = the same source clip under another
  task degradation, negatives = other source clips (:func:`ulr_loss`).
* ``L_prior`` — the facial prior (§4.2): the Wing loss (Feng et al. 2018) between the
  :class:`.heads.LandmarkHead` landmarks and the GT landmarks (:func:`wing_loss`).

:class:`SVFRObjective` holds the weights and switches and combines the terms. Latents are
``(B, F, 4, h, w)`` (SVD's frame-major layout) and σ is ``(B,)``, broadcast over the rest; any
``(B, ...)`` shape works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fvr_bench.errors import ConfigError

# SVD-xt's scheduler range (stabilityai/stable-video-diffusion-img2vid-xt scheduler_config.json)
SIGMA_MIN = 0.002
SIGMA_MAX = 700.0


# --------------------------------------------------------------------------------------------
# EDM / v-prediction (L_noise)


def _per_sample(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """σ (scalar, ``(B,)`` or already ``(B, 1, …, 1)``) → a tensor broadcastable to ``like``
    ``(B, ...)``, in ``like``'s dtype."""
    sigma = torch.as_tensor(sigma, device=like.device)
    sigma = sigma.to(like.dtype if like.is_floating_point() else torch.float32)
    if sigma.ndim == 0:
        return sigma
    if sigma.shape[0] != like.shape[0] or sigma[0].numel() != 1 or sigma.ndim > max(like.ndim, 1):
        raise ValueError(f"sigma must be a scalar, (B,) or (B, 1, ..., 1) with B = {like.shape[0]}, "
                         f"got {tuple(sigma.shape)}")
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


def sample_sigmas(n: int, p_mean: float = 0.7, p_std: float = 1.6, sigma_min: float = SIGMA_MIN,
                  sigma_max: float = SIGMA_MAX, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` training noise levels: ``ln σ ~ N(p_mean, p_std²)``, clamped to [sigma_min, sigma_max].

    Returns ``(n,)`` float32 on ``device``. The defaults P_mean = 0.7, P_std = 1.6 are not in the
    paper: they are what common SVD fine-tuning uses (EDM's image defaults are −1.2 / 1.2; SVD's
    video training shifts the distribution to higher noise). The clamp keeps σ inside the range
    the scheduler samples at inference. The draw happens on the generator's device (a CPU
    generator gives the same σ on any device).
    """
    if n < 0 or p_std < 0 or not 0 < sigma_min <= sigma_max:
        raise ConfigError(f"svfr: sample_sigmas needs n >= 0, p_std >= 0, 0 < sigma_min <= sigma_max, "
                          f"got n={n}, p_std={p_std}, sigma_min={sigma_min}, sigma_max={sigma_max}")
    draw_device = generator.device if generator is not None else device
    log_sigma = p_mean + p_std * torch.randn(n, generator=generator, device=draw_device, dtype=torch.float32)
    return log_sigma.exp().clamp(sigma_min, sigma_max).to(device)


def precondition(sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """σ (any shape, > 0) → ``(c_skip, c_out, c_in, c_noise)`` of SVD's v-prediction, each σ's shape.

    ``c_skip = 1/(σ²+1)``, ``c_out = −σ/√(σ²+1)``, ``c_in = 1/√(σ²+1)``, ``c_noise = ¼·ln σ``
    (the UNet's timestep input, as diffusers' scheduler sets ``timesteps`` for continuous v-prediction).
    """
    sigma = torch.as_tensor(sigma)
    if not sigma.is_floating_point():
        sigma = sigma.float()
    s2 = sigma * sigma + 1
    return 1 / s2, -sigma / s2.sqrt(), 1 / s2.sqrt(), 0.25 * sigma.log()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``x0 + σ·n``: latents ``(B, ...)``, σ scalar or ``(B,)``."""
    return x0 + _per_sample(sigma, x0) * noise


def scale_input(noisy: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``c_in·noisy``: what the UNet sees (diffusers' ``scheduler.scale_model_input``)."""
    s = _per_sample(sigma, noisy)
    return noisy / (s * s + 1).sqrt()


def v_target(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The output that makes :func:`denoise` return ``x0`` exactly: ``(n − σ·x0)/√(σ²+1)``."""
    s = _per_sample(sigma, x0)
    return (noise - s * x0) / (s * s + 1).sqrt()


def denoise(model_output: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x̂0 = ``c_skip·noisy + c_out·F`` — diffusers' Euler v-prediction ``pred_original_sample``.

    ``model_output`` F and ``noisy`` ``(B, ...)`` (SVD: ``(B, F, 4, h, w)``), σ scalar or ``(B,)``.
    """
    s = _per_sample(sigma, noisy)
    s2 = s * s + 1
    return model_output * (-s / s2.sqrt()) + noisy / s2


def loss_weight(sigma: torch.Tensor | float) -> torch.Tensor:
    """EDM's λ(σ) = (σ²+1)/σ² (σ_data = 1), the weight of ‖x̂0 − x0‖²; λ·c_out² = 1."""
    sigma = torch.as_tensor(sigma)
    sigma = sigma if sigma.is_floating_point() else sigma.float()
    return (sigma * sigma + 1) / (sigma * sigma)


REDUCTIONS = ("mean", "per_sample", "none")


def denoising_loss(model_output: torch.Tensor, x0: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor | float,
                   reduction: str = "mean") -> torch.Tensor:
    """L_noise = λ(σ)·(x̂0 − x0)², x̂0 = :func:`denoise` ``(model_output, noisy, sigma)``.

    Tensors ``(B, ...)`` (SVD: ``(B, F, 4, h, w)``), σ ``(B,)`` or scalar. Computed in float32
    at least (bf16/fp16 model outputs are upcast: λ reaches 2.5e5 at σ = 0.002).
    ``reduction``: "mean" → scalar over all elements; "per_sample" → ``(B,)`` (mean over the
    non-batch dims); "none" → elementwise, ``x0``'s shape.
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"svfr: denoising_loss reduction must be one of {REDUCTIONS}, got {reduction!r}")
    dtype = torch.promote_types(model_output.dtype, torch.float32)
    model_output, x0, noisy = model_output.to(dtype), x0.to(dtype), noisy.to(dtype)
    s = _per_sample(sigma, x0)
    err = loss_weight(s) * (denoise(model_output, noisy, s) - x0).square()
    if reduction == "none":
        return err
    if reduction == "per_sample":
        return err.flatten(1).mean(dim=1)
    return err.mean()


# --------------------------------------------------------------------------------------------
# Unified Latent Regularisation (L_ULR)


def ulr_views(features: torch.Tensor, clips: int, views: int, frames: int = 1,
              view_major: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrange :class:`.heads.LatentTransformer` outputs for :func:`ulr_loss`.

    ``features`` ``(clips·views·frames, D)``: rows ordered (clip, view, frame) — or (view, clip,
    frame) with ``view_major`` — the frame index fastest (the UNet's ``(B, F) → B·F`` folding).
    ``frames`` = 1 for ``pool="video"`` features (one row per clip-view), F for ``pool="frame"``.

    Returns ``(features (clips·frames, views, D), clip_ids (clips·frames,))``: per frame, each
    row holds one frame of one clip under every view, and ``clip_ids`` keeps the other frames of
    the same clip out of that frame's negatives (the paper's negatives are *other source clips*;
    adjacent frames of the same clip are near-duplicates, not negatives). So with per-frame
    features the positives of frame t are frame t under the other task degradations.
    """
    if features.ndim != 2 or features.shape[0] != clips * views * frames:
        raise ValueError(f"ulr_views: expected ({clips}·{views}·{frames}, D) features, got {tuple(features.shape)}")
    d = features.shape[1]
    grid = (features.reshape(views, clips, frames, d).transpose(0, 1) if view_major
            else features.reshape(clips, views, frames, d))  # (clip, view, frame, D)
    arranged = grid.permute(0, 2, 1, 3).reshape(clips * frames, views, d)  # (clip, frame) rows × views
    clip_ids = torch.arange(clips, device=features.device).repeat_interleave(frames)
    return arranged, clip_ids


def ulr_loss(features: torch.Tensor, tau: float = 0.07, normalize: bool = True, include_positive: bool = False,
             clip_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Unified Latent Regularisation (SVFR Eq. 2), averaged over every (anchor, positive) pair.

    ``features`` ``(B, V, D)``: B source clips (or clip frames, see ``clip_ids``), each under V
    task degradations (views). Every row ``(b, v)`` is an anchor; its positives are ``(b, v')``,
    v' ≠ v; its negatives are every view of every row of *another clip*. Per pair (paper):

        ℓ(i, p) = −log( exp(x̂_i·x̂_p/τ) / Σ_{j ∈ neg(i)} exp(x̂_i·x̂_j/τ) )

    — the denominator sums the negatives only, as Eq. 2 writes it (so ℓ can be negative);
    ``include_positive=True`` adds the positive to the denominator (standard InfoNCE, ℓ ≥ 0).
    Each anchor has V − 1 positives, so the mean over pairs is the mean over anchors of their
    per-positive average.

    Args:
        tau: temperature. Not in the paper (it gives none); 0.07 is the MoCo/SupCon value for
            cosine similarities.
        normalize: L2-normalise the features first (cosine similarity). Not in the paper (it
            writes a plain dot product). On by default: with a negatives-only denominator the
            unnormalised loss is unbounded below — the head can lower it just by growing the
            feature norm (the LayerNorm's affine gain) — while cosine bounds it to ±2/τ + log N.
        include_positive: the InfoNCE variant (not the paper's Eq. 2).
        clip_ids: ``(B,)`` source clip of each row (None: all rows are different clips). Rows of
            the same clip are neither positives nor negatives of each other (per-frame ULR,
            :func:`ulr_views`).

    Returns a float32 (at least) scalar. Raises ConfigError without ≥ 2 clips and ≥ 2 views.
    """
    if features.ndim != 3:
        raise ValueError(f"ulr_loss expects (B clips, V views, D) features, got {tuple(features.shape)}")
    b, v, d = features.shape
    if clip_ids is None:
        clip_ids = torch.arange(b, device=features.device)
    elif clip_ids.shape != (b,):
        raise ValueError(f"ulr_loss: clip_ids must be ({b},), got {tuple(clip_ids.shape)}")
    clips = int(torch.unique(clip_ids).numel()) if b else 0
    if clips < 2 or v < 2:
        raise ConfigError(f"svfr: the ULR loss needs a batch of >= 2 source clips (negatives) and >= 2 task "
                          f"views per clip (positives); got {clips} clip(s) x {v} view(s). Raise the batch "
                          f"size / views per clip, or turn ULR off (ulr: false).")
    if tau <= 0:
        raise ConfigError(f"svfr: the ULR temperature tau must be > 0, got {tau}")
    z = features.reshape(b * v, d).to(torch.promote_types(features.dtype, torch.float32))
    if normalize:
        z = F.normalize(z, dim=-1)
    sim = z @ z.T / tau  # (BV, BV) logits x̂_i·x̂_j/τ
    row = torch.arange(b, device=z.device).repeat_interleave(v)   # which (clip-frame) row
    clip = clip_ids.to(z.device).repeat_interleave(v)               # which source clip
    negative = clip[:, None] != clip[None, :]
    positive = (row[:, None] == row[None, :]) & ~torch.eye(b * v, dtype=torch.bool, device=z.device)
    log_neg = torch.logsumexp(sim.masked_fill(~negative, float("-inf")), dim=1, keepdim=True)  # (BV, 1)
    log_denominator = torch.logaddexp(log_neg, sim) if include_positive else log_neg
    return (log_denominator - sim)[positive].mean()


# --------------------------------------------------------------------------------------------
# Facial prior (L_prior)


def wing_loss(pred: torch.Tensor, target: torch.Tensor, w: float = 10.0, epsilon: float = 2.0,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """Wing loss (Feng et al., CVPR 2018) on landmark coordinates.

    Per coordinate error x: ``w·ln(1 + |x|/ε)`` if ``|x| < w`` else ``|x| − C``,
    ``C = w − w·ln(1 + w/ε)`` (continuous at ``|x| = w``). w and ε are in the units of the
    coordinates (w = 10, ε = 2 are the Wing paper's values for pixel coordinates;
    :class:`SVFRObjective` scales normalised coordinates to pixels first).

    ``pred``, ``target`` ``(..., P, 2)``; ``valid`` ``(..., P)`` bool (None: all valid) — a
    missing landmark (no detection; its target may be NaN) is left out. Returns the mean over the
    valid points of the per-point average over (x, y) — a mean, not the paper's sum over the shape
    vector, so the weight λ2 does not depend on the number of landmarks. No valid point → a zero
    that still has a grad path through ``pred`` (so DDP sees every parameter used).
    """
    if w <= 0 or epsilon <= 0:
        raise ConfigError(f"svfr: the Wing loss needs w > 0 and epsilon > 0, got w={w}, epsilon={epsilon}")
    if pred.shape != target.shape:
        raise ValueError(f"wing_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if valid is not None:
        valid = valid.to(device=pred.device, dtype=torch.bool).expand(pred.shape[:-1])
        # a missing point's target becomes the (detached) prediction: error 0, loss 0, gradient 0,
        # and no NaN from the target can reach the gradient (0·NaN would).
        target = torch.where(valid[..., None], target.to(pred.dtype), pred.detach())
    x = (pred - target).abs()
    c = w - w * math.log1p(w / epsilon)
    per_point = torch.where(x < w, w * torch.log1p(x / epsilon), x - c).mean(dim=-1)  # (..., P)
    if valid is None:
        return per_point.mean() if per_point.numel() else pred.sum() * 0
    weights = valid.to(per_point.dtype)
    return (per_point * weights).sum() / weights.sum().clamp_min(1)


# --------------------------------------------------------------------------------------------
# Eq. 4


class SVFRObjective:
    """``L = L_noise + ulr_weight·L_ULR + prior_weight·L_prior`` (SVFR Eq. 4) with its ablation switches.

    Args:
        ulr_weight: λ1 (paper: 0.01).
        prior_weight: λ2 (paper: 0.1).
        ulr, prior: the terms on/off (paper Table 3 ablates both); a disabled term is not computed
            and its key is absent from :meth:`combine`'s result.
        tau, normalize, include_positive: :func:`ulr_loss`. Not in the paper (τ = 0.07, cosine
            similarity, negatives-only denominator as in Eq. 2).
        wing_w, wing_epsilon: :func:`wing_loss` w, ε in pixels of a ``landmark_scale``-pixel frame.
            Not in the paper (SVFR gives none): the Wing paper's w = 10, ε = 2.
        landmark_scale: the normalised [0, 1] landmarks are multiplied by this before the Wing loss.
            Not in the paper: 64 is the input size of the Wing paper's CNN-6 experiments that chose
            w = 10, ε = 2, so w keeps the same meaning relative to the face (the log regime covers
            errors below ~16 % of the frame); measuring in 512-pixel units instead would put almost
            every early error in the L1 regime and multiply the loss by ~8.
        p_mean, p_std, sigma_min, sigma_max: :func:`sample_sigmas` (P_mean/P_std not in the paper;
            σ range = SVD-xt's scheduler).
    """

    def __init__(self, ulr_weight: float = 0.01, prior_weight: float = 0.1, ulr: bool = True, prior: bool = True,
                 tau: float = 0.07, normalize: bool = True, include_positive: bool = False,
                 wing_w: float = 10.0, wing_epsilon: float = 2.0, landmark_scale: float = 64.0,
                 p_mean: float = 0.7, p_std: float = 1.6, sigma_min: float = SIGMA_MIN,
                 sigma_max: float = SIGMA_MAX) -> None:
        problems = []
        if ulr_weight < 0 or prior_weight < 0:
            problems.append(f"ulr_weight and prior_weight must be >= 0 (got {ulr_weight}, {prior_weight})")
        if tau <= 0:
            problems.append(f"tau must be > 0 (got {tau})")
        if wing_w <= 0 or wing_epsilon <= 0 or landmark_scale <= 0:
            problems.append(f"wing_w, wing_epsilon, landmark_scale must be > 0 "
                            f"(got {wing_w}, {wing_epsilon}, {landmark_scale})")
        if p_std < 0 or not 0 < sigma_min <= sigma_max:
            problems.append(f"need p_std >= 0 and 0 < sigma_min <= sigma_max (got {p_std}, {sigma_min}, {sigma_max})")
        if problems:
            raise ConfigError("svfr objective: " + "; ".join(problems))
        self.ulr_weight, self.prior_weight = float(ulr_weight), float(prior_weight)
        self.ulr, self.prior = bool(ulr), bool(prior)
        self.tau, self.normalize, self.include_positive = float(tau), bool(normalize), bool(include_positive)
        self.wing_w, self.wing_epsilon, self.landmark_scale = float(wing_w), float(wing_epsilon), float(landmark_scale)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def __repr__(self) -> str:
        return (f"SVFRObjective(ulr={self.ulr}, ulr_weight={self.ulr_weight}, prior={self.prior}, "
                f"prior_weight={self.prior_weight}, tau={self.tau}, normalize={self.normalize}, "
                f"wing_w={self.wing_w}, wing_epsilon={self.wing_epsilon}, landmark_scale={self.landmark_scale}, "
                f"p_mean={self.p_mean}, p_std={self.p_std})")

    def sample_sigmas(self, n: int, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
        """``(n,)`` training σ (:func:`sample_sigmas` with this objective's settings)."""
        return sample_sigmas(n, self.p_mean, self.p_std, self.sigma_min, self.sigma_max, generator, device)

    def noise_loss(self, model_output: torch.Tensor, x0: torch.Tensor, noisy: torch.Tensor,
                   sigma: torch.Tensor | float) -> torch.Tensor:
        """L_noise, a scalar (:func:`denoising_loss`, mean)."""
        return denoising_loss(model_output, x0, noisy, sigma)

    def combine(self, noise_loss: torch.Tensor, ulr_features: torch.Tensor | None = None,
                landmark_pred: torch.Tensor | None = None, landmark_target: torch.Tensor | None = None,
                landmark_valid: torch.Tensor | None = None,
                ulr_clip_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Eq. 4 → ``{"loss", "noise", "ulr", "prior"}`` (unweighted terms; "ulr"/"prior" only when on).

        ``ulr_features`` ``(B, V, D)`` (+ ``ulr_clip_ids`` ``(B,)``, see :func:`ulr_views`);
        ``landmark_pred`` / ``landmark_target`` ``(..., 68, 2)`` normalised (x, y) in [0, 1],
        ``landmark_valid`` ``(..., 68)`` bool or None. Inputs of a disabled term are ignored;
        an enabled term without its inputs raises ConfigError.
        """
        parts: dict[str, torch.Tensor] = {"noise": noise_loss}
        total = noise_loss
        if self.ulr:
            if ulr_features is None:
                raise ConfigError("svfr objective: ulr is on but no ULR features were given")
            parts["ulr"] = ulr_loss(ulr_features, self.tau, self.normalize, self.include_positive, ulr_clip_ids)
            total = total + self.ulr_weight * parts["ulr"]
        if self.prior:
            if landmark_pred is None or landmark_target is None:
                raise ConfigError("svfr objective: prior is on but no landmark prediction/target was given")
            scale = self.landmark_scale
            parts["prior"] = wing_loss(landmark_pred * scale, landmark_target * scale, self.wing_w,
                                       self.wing_epsilon, landmark_valid)
            total = total + self.prior_weight * parts["prior"]
        return {"loss": total, **parts}
