"""IP-FVR's identity reward (Han et al., §3.3): within-clip normalised face similarity,
discounted over the following frames, as a differentiable loss.

The paper's chain, for one clip of F frames and the reference face(s):

1. ``r_f = cos_sim(x_f, x_ref)`` — :func:`frame_rewards`, on embeddings of "a face detector
   and a face encoder" (unnamed; the lead wires the project's ArcFace as the embedder).
2. ``A_f = (r_f − Mean{r}) / Std{r}`` over the clip — :func:`normalised_advantages`.
3. ``R_f = Σ_{f' ≥ f} γ^{f'−f} A_{f'}`` — :func:`discounted_suffix_sums`.
4. ``L_id_reward = E[1 − exp(random{R_0..R_F})]`` — :func:`reward_loss` (one random frame).

Choices the paper leaves open (each also noted where it is made):

* **Gradient path.** The paper does not say how the reward's gradient reaches the model.
  Here it flows through the *restored frames* given to :class:`IdentityReward`: the
  training code predicts x̂₀ at one sampled denoising step, decodes it with the VAE, and
  passes the decoded frames; the reward differentiates through the (frozen) face embedder
  into those frames. The reference embedding is a constant (detached).
* **γ** is not given: default :data:`DEFAULT_GAMMA` = 0.9 (an effective horizon of about
  1/(1−γ) = 10 frames, under half of the paper's F = 24 clip, so each frame's return is
  dominated by its neighbourhood rather than by the whole clip's tail).
* **Std** is the *population* std (divide by the number of frames): the clip's frames are
  the whole set being normalised, not a sample from it. It is floored at ``eps``
  (``A = (r − mean) / max(std, eps)``) so identical rewards give A = 0, not NaN.
* **Frame indices** run 0..F−1 (F terms); the paper's 0..F (F + 1 terms for F = 24) is an
  off-by-one.
* **Frames without a face** (``valid`` False, from the embedder's detector) are left out of
  the mean and std, and their r and A are 0; they still occupy their position in the
  discounting (a missing face does not bring later frames closer). A clip with fewer than
  two valid frames has all-zero advantages (nothing to compare within the clip), so the
  loss is 0 with a zero gradient.
* The normalisation is differentiated through (mean and std are not detached): it is the
  paper's formula, and detaching the statistics would leave no gradient that makes the
  clip's frames *consistently* similar, which is what the zero-mean A rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.errors import ConfigError, DataError

DEFAULT_GAMMA = 0.9
FRAME_MODES = ("random", "mean")

FaceEmbedder = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor] | torch.Tensor"]


def _valid_mask(valid: torch.Tensor | None, frames: int, device: torch.device) -> torch.Tensor:
    if valid is None:
        return torch.ones(frames, dtype=torch.bool, device=device)
    valid = valid.to(device=device, dtype=torch.bool)
    if valid.shape != (frames,):
        raise ConfigError(f"valid mask has shape {tuple(valid.shape)}, expected ({frames},)")
    return valid


def frame_rewards(frame_embeddings: torch.Tensor, reference_embedding: torch.Tensor,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-frame identity reward ``r (F,)``: cosine similarity of each frame's face
    embedding ``(F, D)`` with the reference embedding ``(D,)``.

    Several references ``(R, D)`` are combined as the mean of their L2-normalised
    embeddings, and the cosine is taken with that mean (so r stays a true cosine in
    [−1, 1]). Frames with ``valid (F,)`` False get r = 0 (a placeholder; the statistics
    in :func:`normalised_advantages` leave them out).
    """
    if frame_embeddings.ndim != 2:
        raise ConfigError(f"frame embeddings must be (F, D), got {tuple(frame_embeddings.shape)}")
    reference = reference_embedding
    if reference.ndim == 2:
        reference = F.normalize(reference, dim=-1).mean(dim=0)
    if reference.ndim != 1 or reference.shape[0] != frame_embeddings.shape[1]:
        raise ConfigError(f"reference embedding {tuple(reference_embedding.shape)} does not fit frame "
                          f"embeddings {tuple(frame_embeddings.shape)}")
    r = F.cosine_similarity(frame_embeddings, reference.to(frame_embeddings)[None], dim=-1)
    mask = _valid_mask(valid, frame_embeddings.shape[0], r.device)
    # r * 0 rather than a constant keeps invalid frames in the graph with a zero gradient
    return torch.where(mask, r, r * 0)


def normalised_advantages(r: torch.Tensor, valid: torch.Tensor | None = None,
                          eps: float = 1e-6) -> torch.Tensor:
    """Within-clip normalised rewards ``A (F,)`` = (r − mean) / max(std, eps).

    Mean and *population* std are over the valid frames only; invalid frames get A = 0.
    Fewer than two valid frames → all zeros (still attached to the graph of ``r``).
    E.g. r = [1, 2, 3] → A = [−√1.5, 0, √1.5] ≈ [−1.2247, 0, 1.2247].
    """
    if r.ndim != 1:
        raise ConfigError(f"rewards must be (F,), got {tuple(r.shape)}")
    mask = _valid_mask(valid, r.shape[0], r.device)
    count = mask.sum()
    if int(count) < 2:
        return r * 0
    weights = mask.to(r.dtype)
    mean = (r * weights).sum() / count
    var = (((r - mean) ** 2) * weights).sum() / count
    # clamp before sqrt: sqrt'(0) is infinite, and all-equal rewards must give A = 0, not NaN
    std = var.clamp_min(eps * eps).sqrt()
    return torch.where(mask, (r - mean) / std, r * 0)


def discounted_suffix_sums(advantages: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted returns ``R (..., F)``: R_f = Σ_{f' ≥ f} γ^{f'−f} A_{f'} along the last dim.

    Backward recursion R_f = A_f + γ R_{f+1} (O(F)), differentiable.
    E.g. γ = 0.5, A = [1, −1, 2] → R = [1 − 0.5 + 0.5, −1 + 1, 2] = [1, 0, 2].
    """
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
    frames = advantages.shape[-1]
    returns: list[torch.Tensor] = [advantages[..., -1]]
    for f in range(frames - 2, -1, -1):
        returns.append(advantages[..., f] + gamma * returns[-1])
    return torch.stack(returns[::-1], dim=-1)


def reward_loss(returns: torch.Tensor, generator: torch.Generator | None = None,
                frame: Literal["random", "mean"] = "random") -> torch.Tensor:
    """The identity-reward loss, a scalar, from the returns ``R (F,)``.

    ``frame="random"`` (the paper): 1 − exp(R_f) at one frame f drawn uniformly with
    ``generator`` (``torch.randint(F, (1,), generator=generator)``); the expectation of
    the paper is over training steps. ``frame="mean"``: the mean of 1 − exp(R_f) over all
    frames — the same expectation with lower variance, not the paper's estimator.
    """
    if returns.ndim != 1:
        raise ConfigError(f"returns must be (F,), got {tuple(returns.shape)}")
    if frame == "random":
        device = generator.device if generator is not None else torch.device("cpu")
        index = int(torch.randint(returns.shape[0], (1,), generator=generator, device=device))
        return 1.0 - torch.exp(returns[index])
    if frame == "mean":
        return (1.0 - torch.exp(returns)).mean()
    raise ConfigError(f"reward frame mode must be one of {FRAME_MODES}, got {frame!r}")


class IdentityReward(nn.Module):
    """Identity reward of restored frames against reference faces (paper §3.3).

    ``embedder``: a callable ``frames (N, 3, H, W) in [0, 1] → (embeddings (N, D),
    valid (N,) bool)`` (detector + face encoder; a plain ``(N, D)`` tensor means every
    frame has a face). It is a fixed judge: if it is an ``nn.Module`` its parameters are
    frozen and it stays in eval mode (batch norms of a face encoder must not update).
    Gradients flow through its input frames only.

    ``gamma``: discount of :func:`discounted_suffix_sums` (paper: unstated; default 0.9).
    ``frame``: ``"random"`` (paper) or ``"mean"`` (see :func:`reward_loss`).
    ``eps``: std floor of :func:`normalised_advantages`.
    """

    def __init__(self, embedder: FaceEmbedder, gamma: float = DEFAULT_GAMMA,
                 frame: Literal["random", "mean"] = "random", eps: float = 1e-6) -> None:
        super().__init__()
        if frame not in FRAME_MODES:
            raise ConfigError(f"reward frame mode must be one of {FRAME_MODES}, got {frame!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {gamma}")
        self.embedder = embedder
        if isinstance(embedder, nn.Module):
            embedder.requires_grad_(False)
            embedder.eval()
        self.gamma = gamma
        self.frame = frame
        self.eps = eps

    def train(self, mode: bool = True) -> IdentityReward:
        super().train(mode)
        if isinstance(self.embedder, nn.Module):
            self.embedder.eval()
        return self

    def embed(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings (N, D), valid (N,) bool)`` of ``frames (N, 3, H, W)`` in [0, 1]."""
        out = self.embedder(frames)
        if isinstance(out, torch.Tensor):
            return out, torch.ones(out.shape[0], dtype=torch.bool, device=out.device)
        embeddings, valid = out
        return embeddings, valid.to(device=embeddings.device, dtype=torch.bool)

    def forward(self, frames: torch.Tensor, reference: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Loss and intermediates for one clip.

        ``frames (F, 3, H, W)`` in [0, 1]: the restored (decoded x̂₀) frames, with grad.
        ``reference (R, 3, H, W)`` in [0, 1]: the reference face image(s), no grad.
        Returns ``loss`` (scalar), ``rewards``/``advantages``/``returns`` (F,) and
        ``valid`` (F,) bool. Raises DataError if no reference has a detectable face.
        """
        if frames.ndim != 4 or reference.ndim != 4:
            raise ConfigError(f"frames and reference must be (N, 3, H, W), got {tuple(frames.shape)} "
                              f"and {tuple(reference.shape)}")
        with torch.no_grad():
            ref_embeddings, ref_valid = self.embed(reference)
        if not bool(ref_valid.any()):
            raise DataError(f"no face detected in any of the {reference.shape[0]} reference image(s); "
                            "the identity reward needs at least one")
        ref_embeddings = ref_embeddings[ref_valid].detach()
        embeddings, valid = self.embed(frames)
        rewards = frame_rewards(embeddings, ref_embeddings, valid)
        advantages = normalised_advantages(rewards, valid, self.eps)
        returns = discounted_suffix_sums(advantages, self.gamma)
        loss = reward_loss(returns, generator, self.frame)
        return {"loss": loss, "rewards": rewards, "advantages": advantages, "returns": returns,
                "valid": valid}
