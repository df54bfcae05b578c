"""IP-FVR long-video inference (paper §3.4): overlapping clips, shared noise, exponential blending.

A video of T latent frames is processed as clips of F = 24 frames overlapping by O = 8 (stride
16), one clip after another, every clip with the same sigma grid. Latents are
(B, C, T, h, w) with the frame axis at dim 2 (``frame_dim``); positions inside a clip are
0-indexed here (the paper's are 1-indexed).

* :func:`clip_spans` — the clip grid ``[(start, stop), …]`` (half-open, absolute frames).
* :func:`shared_noise` — Eq. 9, the overlap frames of clip i reuse clip i−1's noise: the whole
  video's noise is drawn once and sliced, so equal absolute frames get equal noise.
* :class:`SharedStepNoise` — the same idea for the per-step SDE noise of DPM-Solver++(2M) SDE
  (an extension: the paper only states Eq. 9 for the initial noise).
* :class:`ExponentialBlender` — Eq. 10, replacement of clip i's leading positions by the
  tails of earlier clips recorded at the same denoising step, as a sampler ``step_hook``.
* :func:`stitch` — assemble the per-clip outputs into T frames.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch

from .sampler import NoiseSampler, StepHook

Span = tuple[int, int]
BlendMode = Literal["literal", "aligned"]
StitchMode = Literal["earlier", "later", "middle"]

CLIP_FRAMES = 24
CLIP_OVERLAP = 8


def clip_spans(total: int, frames: int = CLIP_FRAMES, overlap: int = CLIP_OVERLAP) -> list[Span]:
    """Clip grid over ``total`` frames: half-open ``(start, stop)`` pairs in increasing order.

    * ``total <= frames``: a single clip ``[(0, total)]`` (shorter than F; nothing to blend).
    * Otherwise clips start at 0, S, 2S, … (S = frames − overlap) as long as they end before
      ``total``; the **last clip is aligned to the end**, ``(total − frames, total)``, so every
      clip has exactly F frames (the length the temporal layers were trained on). Its overlap
      with the previous clip is therefore ≥ O (up to F − 1; e.g. T = 25 → (0, 24), (1, 25)).

    Examples: T=40 → [(0, 24), (16, 40)]; T=57 → [(0, 24), (16, 40), (32, 56), (33, 57)].
    """
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    if not 0 <= overlap < frames:
        raise ValueError(f"need 0 <= overlap < frames, got overlap={overlap}, frames={frames}")
    if total <= frames:
        return [(0, total)]
    stride = frames - overlap
    spans = []
    start = 0
    while start + frames < total:
        spans.append((start, start + frames))
        start += stride
    spans.append((total - frames, total))
    return spans


def _frame_slice(x: torch.Tensor, start: int, stop: int, frame_dim: int) -> torch.Tensor:
    index = [slice(None)] * x.ndim
    index[frame_dim] = slice(start, stop)
    return x[tuple(index)]


def shared_noise(
    shape: Sequence[int],
    spans: Sequence[Span],
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    frame_dim: int = 2,
) -> list[torch.Tensor]:
    """Per-clip initial noise with Eq. 9's sharing: ``ε_i[:O] = ε_{i−1}[F−O:]``.

    The whole video's noise ``(B, C, T, h, w)`` (``shape``) is drawn once from ``generator``
    and sliced per span, so any two clips covering the same absolute frame see the identical
    noise there (for the end-aligned last clip, its whole overlap), and non-shared frames are
    independent draws. Returns views into one tensor (do not modify them in place).
    """
    gen_device = generator.device if generator is not None else (device or "cpu")
    noise = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32)
    noise = noise.to(device=device if device is not None else gen_device, dtype=dtype)
    total = noise.shape[frame_dim]
    for start, stop in spans:
        if not 0 <= start < stop <= total:
            raise ValueError(f"span {(start, stop)} outside [0, {total})")
    return [_frame_slice(noise, start, stop, frame_dim) for start, stop in spans]


class SharedStepNoise:
    """Per-step SDE noise shared across overlapping clips (extension of Eq. 9 to the sampler).

    For step k a whole-video standard-normal tensor is drawn from a generator seeded with
    ``(seed, k)`` and sliced to the clip's span; regenerating it per clip costs one
    ``randn`` over the video per step but no memory. ``for_clip(span)`` is a ``noise_sampler``
    for :func:`~fvr_bench.methods.ip_fvr.sampler.dpmpp_2m_sde`.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seed: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        frame_dim: int = 2,
    ) -> None:
        self.shape = tuple(shape)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self.frame_dim = frame_dim

    def whole(self, step: int) -> torch.Tensor:
        """The whole video's noise (B, C, T, h, w) for sampler step ``step``."""
        gen = torch.Generator(device="cpu").manual_seed((self.seed * 1_000_003 + step) % (2**63))
        z = torch.randn(self.shape, generator=gen, dtype=torch.float32)
        return z.to(device=self.device, dtype=self.dtype)

    def for_clip(self, span: Span) -> NoiseSampler:
        start, stop = span

        def sample(step: int, s: float, s_next: float) -> torch.Tensor:
            return _frame_slice(self.whole(step), start, stop, self.frame_dim)

        return sample


class ExponentialBlender:
    """Paper Eq. 10: at every denoising step replace clip i's leading positions by earlier clips.

    Clips are sampled one after another with the same sigma grid; the blender is each clip's
    sampler ``step_hook`` (:meth:`hook`). At step k of clip i it first overwrites positions of
    clip i's state z_t with frames **recorded from earlier clips at the same step k**, then
    records the frames of clip i that later clips will need. Replacement, not weighting.

    ``mode="literal"`` — Eq. 10 as printed, ``z_t^{1:O−1}(i) = stack_j z_t^{F−2^j+1:F}(i−s+j)``,
    j = 0 … s−1, 2^s = O (s = 3 for O = 8). In 0-indexed clip positions:

    ========  ===================================  ============
    j         source                               to positions
    ========  ===================================  ============
    0         clip i−3, last frame (F−1)           0
    1         clip i−2, last 2 frames (F−2, F−1)   1, 2
    2         clip i−1, last 4 frames (F−4 … F−1)  3, 4, 5, 6
    ========  ===================================  ============

    Position O−1 = 7 keeps clip i's own state. These sources are **not temporally aligned**
    with the positions they overwrite (clip i−1's last 4 frames are the absolute frames of clip
    i's positions 4–7, written to 3–6; clip i−2/i−3 tails lie before clip i); that is what the
    paper writes. The paper leaves i − s + j < 0 open: here a term whose source clip does not
    exist is skipped, so clip 1 gets only the j = 2 block and clip 2 the j = 1, 2 blocks, and
    the positions of a skipped block keep clip i's own state. Needs O a power of two. The
    "frame F" of a source is its last frame, so the end-aligned last clip is handled alike.

    ``mode="aligned"`` — the temporally consistent variant: every position of clip i whose
    absolute frame is also covered by an earlier clip is replaced by that frame's state from
    the **nearest earlier clip that covers it**. With increasing spans that is always clip i−1
    (if clip i−2 covers a frame of clip i, so does clip i−1), so the rule is: positions
    ``0 … stop_{i−1} − start_i − 1`` of clip i ← positions ``start_i − start_{i−1} …`` of clip
    i−1. For the regular grid these are exactly the first O positions; for the end-aligned last
    clip its whole (longer) overlap. Clip i thus denoises only its new frames, conditioned at
    every step on the already-decided overlap (inpainting-by-replacement).

    Records are kept only as long as a later clip needs them (literal: 3 clips back, the last
    O/2 frames of each; aligned: the previous clip's overlap), detached, on the state's device.
    """

    def __init__(
        self,
        spans: Sequence[Span],
        frames: int = CLIP_FRAMES,
        overlap: int = CLIP_OVERLAP,
        mode: BlendMode = "literal",
        frame_dim: int = 2,
    ) -> None:
        if mode not in ("literal", "aligned"):
            raise ValueError(f"unknown blending mode {mode!r}")
        self.spans = [tuple(span) for span in spans]
        self.frames = frames
        self.overlap = overlap
        self.mode = mode
        self.frame_dim = frame_dim
        if mode == "literal":
            s = round(math.log2(overlap)) if overlap > 0 else -1
            if overlap < 2 or 2**s != overlap:
                raise ValueError(f"literal mode needs the overlap to be a power of two >= 2, got {overlap}")
            self.s = s
        self._plans = [self._plan(i) for i in range(len(self.spans))]
        # first source position each clip must record, and the last clip that reads it
        self._record_from: dict[int, int] = {}
        self._last_user: dict[int, int] = {}
        for dst_clip, plan in enumerate(self._plans):
            for src_clip, src_start, _src_stop, _dst_start, _dst_stop in plan:
                self._record_from[src_clip] = min(self._record_from.get(src_clip, src_start), src_start)
                self._last_user[src_clip] = max(self._last_user.get(src_clip, dst_clip), dst_clip)
        self._records: dict[tuple[int, int], torch.Tensor] = {}

    # ------------------------------------------------------------------ the replacement plan
    def _plan(self, clip: int) -> list[tuple[int, int, int, int, int]]:
        start, stop = self.spans[clip]
        length = stop - start
        plan = []
        if clip == 0:
            return plan
        if self.mode == "literal":
            for j in range(self.s):
                src = clip - self.s + j
                if src < 0:
                    continue  # boundary: the source clip does not exist
                n = 2**j
                src_len = self.spans[src][1] - self.spans[src][0]
                dst_start, dst_stop = n - 1, 2 * n - 1
                if dst_stop > length or n > src_len:
                    raise ValueError(f"clip {clip} too short for literal blending")
                plan.append((src, src_len - n, src_len, dst_start, dst_stop))
        else:
            prev_start, prev_stop = self.spans[clip - 1]
            covered = min(prev_stop, stop) - start
            if covered > 0:
                plan.append((clip - 1, start - prev_start, start - prev_start + covered, 0, covered))
        return plan

    def replacement_plan(self, clip: int) -> list[tuple[int, int, int, int, int]]:
        """``[(src_clip, src_start, src_stop, dst_start, dst_stop), …]`` in clip positions."""
        return list(self._plans[clip])

    # ------------------------------------------------------------------ per-step operation
    def apply(self, clip: int, step: int, z: torch.Tensor) -> torch.Tensor:
        """Blend clip ``clip``'s state at sampler step ``step`` and record what later clips need.

        z: (B, C, F, h, w) state of the clip (any consistent scaling: all clips share the sigma
        grid, so VP and k-diffusion states are proportional by the same factor). Returns a new
        tensor when something was replaced, ``z`` itself otherwise.
        """
        if step == 0:
            # a new clip started: forget records no later clip will read
            for key in [k for k in self._records if self._last_user.get(k[0], -1) < clip]:
                del self._records[key]
        plan = self._plans[clip]
        if plan:
            z = z.clone()
            for src, src_start, src_stop, dst_start, dst_stop in plan:
                key = (src, step)
                if key not in self._records:
                    raise KeyError(
                        f"clip {src} step {step} was not recorded: sample clips in order with the same sigmas"
                    )
                record = self._records[key]
                offset = self._record_from[src]
                source = _frame_slice(record, src_start - offset, src_stop - offset, self.frame_dim)
                _frame_slice(z, dst_start, dst_stop, self.frame_dim).copy_(source)
        if clip in self._record_from:
            tail = _frame_slice(z, self._record_from[clip], z.shape[self.frame_dim], self.frame_dim)
            self._records[(clip, step)] = tail.detach().clone()
        return z

    def hook(self, clip: int) -> StepHook:
        """``step_hook`` for clip ``clip``'s sampler run."""

        def step_hook(step: int, z: torch.Tensor, s: float) -> torch.Tensor:
            return self.apply(clip, step, z)

        return step_hook

    def reset(self) -> None:
        """Drop all records (e.g. before the next video)."""
        self._records.clear()


def stitch(
    clips: Sequence[torch.Tensor],
    spans: Sequence[Span],
    total: int,
    overlap: int | None = None,
    mode: StitchMode = "earlier",
    frame_dim: int = 2,
) -> torch.Tensor:
    """Assemble per-clip outputs (B, C, F_i, h, w) into the video (B, C, total, h, w).

    Every absolute frame is taken from exactly one clip (no averaging):

    * ``"earlier"`` (default): an overlapped frame comes from the earliest clip covering it —
      clip i contributes ``[stop_{i−1}, stop_i)``. Both blending modes overwrite clip i's
      leading positions with earlier clips' states during sampling, so the earlier clip is the
      reference for the overlap; in ``literal`` mode clip i's overlap is not even aligned.
    * ``"later"``: from the latest clip covering it — clip i contributes ``[start_i, start_{i+1})``.
    * ``"middle"``: cut each consecutive overlap in the middle (VEnhancer's Aug-2024 chunking):
      clip i starts at ``start_i + (stop_{i−1} − start_i) // 2``.

    ``overlap``: the nominal O; if given, every consecutive pair except the (end-aligned) last
    must overlap by exactly O (a consistency check only).
    """
    if len(clips) != len(spans) or not spans:
        raise ValueError("need one clip per span and at least one span")
    spans = [tuple(span) for span in spans]
    for clip, (start, stop) in zip(clips, spans):
        if clip.shape[frame_dim] != stop - start:
            raise ValueError(f"clip with {clip.shape[frame_dim]} frames for span {(start, stop)}")
    if spans[0][0] != 0 or spans[-1][1] != total:
        raise ValueError(f"spans must cover [0, {total})")
    for (a0, a1), (b0, b1) in itertools.pairwise(spans):
        if not (a0 < b0 and a1 < b1 and b0 <= a1):
            raise ValueError(f"spans {(a0, a1)} and {(b0, b1)} must increase and touch or overlap")
    if overlap is not None:
        for (a0, a1), (b0, b1) in itertools.pairwise(spans[:-1]):
            if a1 - b0 != overlap:
                raise ValueError(f"spans {(a0, a1)} and {(b0, b1)} overlap by {a1 - b0}, expected {overlap}")

    # boundaries[i] = first absolute frame taken from clip i
    boundaries = [0]
    for i in range(1, len(spans)):
        start, prev_stop = spans[i][0], spans[i - 1][1]
        if mode == "earlier":
            b = prev_stop
        elif mode == "later":
            b = start
        elif mode == "middle":
            b = start + (prev_stop - start) // 2
        else:
            raise ValueError(f"unknown stitch mode {mode!r}")
        boundaries.append(max(b, boundaries[-1]))  # keep the pieces ordered
    boundaries.append(total)

    pieces = []
    for i, (clip, (start, _stop)) in enumerate(zip(clips, spans)):
        lo, hi = boundaries[i], boundaries[i + 1]
        if hi > lo:
            pieces.append(_frame_slice(clip, lo - start, hi - start, frame_dim))
    out = torch.cat(pieces, dim=frame_dim)
    assert out.shape[frame_dim] == total
    return out
