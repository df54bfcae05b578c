"""Temporal-consistency metrics: warping error E_warp (Lai et al. 2018) and Flow-Score (EvalCrafter).

Inputs are ``(B, T, 3, H, W)`` float tensors in [0, 1], ``T >= 2``; each metric gives one
value per clip (``level = "clip"``). Optical flow comes from
:mod:`fvr_bench.metrics.backends.flow` (OpenCV DIS / Farneback offline, RAFT-large with
its pretrained file).

E_warp — Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018, as their
``compute_flow_occlusion.py`` + ``evaluate_WarpError.py`` compute it. For every adjacent
pair (t, t+1), on the frames the flow is taken from (the GT / input frames by default):

* ``F`` = forward flow t → t+1 (on frame t's grid), ``Bk`` = backward flow t+1 → t (on
  frame t+1's grid);
* occluded(x) if ``‖Bk_w + F‖² > 0.01·(‖Bk_w‖² + ‖F‖²) + 0.5`` with
  ``Bk_w = warp(Bk, F)`` (the backward flow brought to frame t's grid), or on a motion
  boundary ``‖∇F‖² > 0.01·‖F‖² + 0.002`` (``∇`` = forward differences
  ``f(x) − f(x+1)`` along x and y, zero in the last column/row);
  Lai's ``detect_occlusion(fw_flow, bw_flow)`` names these the other way round — its
  caller passes ``(bw_flow, fw_flow)`` — so inside it "fw_flow_w" is our ``Bk_w`` and
  "bw_flow" our ``F``; what is computed is the same. PROTOCOLS writes it in their names;
* ``M = 1 − occluded``; the restored frame t+1 is warped back to t with ``F``:
  ``Ô_{t+1}(x) = O_{t+1}(x + F(x))``;
* ``e_t = Σ M·(Ô_{t+1} − O_t)² / (3·ΣM)``, the sum over pixels and the three channels of
  [0, 1] RGB (Lai reads the mask PNG as 3 channels, so ΣM counts every channel: this is
  the mean over non-occluded pixels and channels). A pair with no non-occluded pixel
  contributes 0, as in their code;
* ``E_warp = mean_t e_t`` per clip; the evaluator averages clips. Lower is better.
  IP-FVR prints E_warp×1000; the value stored here is the raw one.

Warping is bilinear backward warping (:func:`backward_warp`) with ``grid_sample``,
``align_corners=True`` (pixel centres at integer coordinates, so a flow of d pixels moves
exactly d pixels) and ``padding_mode="border"``: a sample that falls outside the frame
takes the nearest border pixel — exactly what FlowNet2's ``Resample2d``, the warping layer
of Lai's code, does (it clamps the four neighbour indices to the frame). Consequence, as
in Lai's code: pixels that leave the frame are not excluded by the forward-backward check
when the flow is smooth there, and compare against the replicated border.
``mask_out_of_frame=True`` (not the default) also counts them as occluded.

Deviations (all named in the provenance settings):

* flow network: Lai uses FlowNet2 (CUDA only, weights not redistributable). Id ``ewarp``
  uses OpenCV DIS (MEDIUM) — the offline default, *not* comparable in absolute value with
  FlowNet2 numbers; ``ewarp_farneback`` uses Farneback; ``ewarp_raft`` torchvision
  RAFT-large (20 iterations, C+T+S+K+H weights), the closest learned substitute here;
* Lai resizes frames to a multiple of 64 for FlowNet2 and resizes the flow back; DIS and
  Farneback run at full resolution, RAFT pads to a multiple of 8;
* frames are rounded to 8-bit levels first (``quantize=True``) because Lai's script
  measures JPEG frames read from disk; the lossy JPEG step itself is not reproduced.

``flow_from``: ``"target"`` (default, Lai / PROTOCOLS: the flow and the occlusion mask
come from the GT frames, ``needs_reference=True``) or ``"preds"`` (no reference: the flow
comes from the restored frames themselves — for RFV-LQ, where no GT exists). With
``"preds"`` the metric id gets the suffix ``_nr`` (``ewarp_nr``, ``ewarp_raft_nr`` …): a
restorer's own flicker and jitter then partly enter the flow and get explained away, so the
value measures self-consistency and is not comparable with the GT-flow E_warp.

Flow-Score — EvalCrafter ``calculate_flow_score``: the mean over adjacent pairs of the mean
over all pixels of ``‖F‖₂`` (forward flow t → t+1 of the restored frames, full
resolution), RAFT with 20 iterations → id ``flow_score``. ``flow_score_dis`` (DIS MEDIUM)
and ``flow_score_farneback`` are offline proxies: same formula, different flow, different
values. EvalCrafter averages over RAFT's padded frame; here the flow is cropped back to the
frame first (identical when H and W are multiples of 8, e.g. 512²).
``higher_is_better = False``: in restoration the motion is the GT's, so extra apparent
motion is jitter or flicker; EvalCrafter itself uses the score as a motion-amount
descriptor, not as a quality direction — read it next to the GT's own Flow-Score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fvr_bench.errors import ConfigError
from fvr_bench.metrics.backends.flow import (
    FLOW_BACKENDS,
    FlowBackend,
    build_flow_backend,
    video_flow,
)
from fvr_bench.metrics.base import ClipMetric, NetworkMetric, PretrainedFiles
from fvr_bench.metrics.fidelity import quantize_8bit

# Lai et al. 2018 (after Ruder et al. 2016) occlusion thresholds, in pixels² / unitless.
FB_RELATIVE = 0.01
FB_ABSOLUTE = 0.5
MB_RELATIVE = 0.01
MB_ABSOLUTE = 0.002

FLOW_FROM = ("target", "preds")


# --------------------------------------------------------------------------- building blocks


def _sampling_grid(flow: torch.Tensor) -> torch.Tensor:
    """``(N, 2, H, W)`` pixel flow → ``(N, H, W, 2)`` grid of ``x + flow(x)`` normalised
    for ``grid_sample(align_corners=True)`` (pixel i at ``2i/(size−1) − 1``)."""
    n, _, height, width = flow.shape
    ys = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    xs = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    # a 1-pixel axis has no extent: every sample sits on its only pixel (avoids 0/0)
    gx = 2.0 * (xs + flow[:, 0]) / (width - 1) - 1.0 if width > 1 else torch.zeros_like(flow[:, 0])
    gy = 2.0 * (ys + flow[:, 1]) / (height - 1) - 1.0 if height > 1 else torch.zeros_like(flow[:, 1])
    return torch.stack([gx.expand(n, height, width), gy.expand(n, height, width)], dim=-1)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear backward warping: ``out(x) = image(x + flow(x))``.

    ``image``: ``(N, C, H, W)``; ``flow``: ``(N, 2, H, W)`` in pixels (channel 0 = x,
    1 = y) → ``(N, C, H, W)`` in the dtype of ``image`` (the flow is cast to it).
    ``grid_sample`` with ``align_corners=True`` (pixel i sits at normalised
    ``2i/(W−1) − 1``, so integer flows move whole pixels exactly) and
    ``padding_mode="border"``: samples outside the frame take the nearest border pixel,
    as FlowNet2's ``Resample2d`` that Lai et al. warp with.
    """
    if (
        image.ndim != 4
        or flow.ndim != 4
        or flow.shape[1] != 2
        or image.shape[0] != flow.shape[0]
        or image.shape[-2:] != flow.shape[-2:]
    ):
        raise ValueError(
            f"backward_warp: image (N, C, H, W) and flow (N, 2, H, W) must match, got {tuple(image.shape)}, {tuple(flow.shape)}"
        )
    grid = _sampling_grid(flow.to(image.dtype))
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _squared_norm(flow: torch.Tensor) -> torch.Tensor:
    """``(N, 2, H, W)`` → ``(N, H, W)`` ``u² + v²`` (Lai's ``compute_flow_magnitude``)."""
    return flow[:, 0].square() + flow[:, 1].square()


def flow_gradient_energy(flow: torch.Tensor) -> torch.Tensor:
    """``(N, 2, H, W)`` → ``(N, H, W)`` ``Σ_{u,v} (∂x² + ∂y²)`` with Lai's forward
    differences ``f(x) − f(x+1)``, 0 in the last column / row."""
    dx = F.pad((flow[..., :, :-1] - flow[..., :, 1:]).square().sum(dim=1), (0, 1, 0, 0))
    dy = F.pad((flow[..., :-1, :] - flow[..., 1:, :]).square().sum(dim=1), (0, 0, 0, 1))
    return dx + dy


def out_of_frame(flow: torch.Tensor) -> torch.Tensor:
    """``(N, 2, H, W)`` → ``(N, H, W)`` bool: ``x + flow(x)`` lies outside ``[0, W−1]×[0, H−1]``."""
    height, width = flow.shape[-2:]
    xs = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    ys = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    return (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)


def _occluded(flow_fw: torch.Tensor, bw_warped: torch.Tensor, mask_out_of_frame: bool) -> torch.Tensor:
    fw_mag = _squared_norm(flow_fw)
    inconsistent = _squared_norm(bw_warped + flow_fw) > FB_RELATIVE * (_squared_norm(bw_warped) + fw_mag) + FB_ABSOLUTE
    boundary = flow_gradient_energy(flow_fw) > MB_RELATIVE * fw_mag + MB_ABSOLUTE
    occluded = inconsistent | boundary
    if mask_out_of_frame:
        occluded = occluded | out_of_frame(flow_fw)
    return occluded


def occlusion_mask(flow_fw: torch.Tensor, flow_bw: torch.Tensor, mask_out_of_frame: bool = False) -> torch.Tensor:
    """Occluded pixels of frame t (Lai et al. 2018 / Ruder et al. 2016).

    ``flow_fw``: ``(N, 2, H, W)`` flow t → t+1 on frame t's grid; ``flow_bw``: flow
    t+1 → t on frame t+1's grid → ``(N, H, W)`` bool, True = occluded: forward-backward
    inconsistent (``‖warp(bw, fw) + fw‖² > 0.01(‖warp(bw, fw)‖² + ‖fw‖²) + 0.5``) or on a
    motion boundary of the forward flow (``‖∇fw‖² > 0.01‖fw‖² + 0.002``); with
    ``mask_out_of_frame`` also where ``x + fw(x)`` leaves the frame.
    """
    return _occluded(flow_fw, backward_warp(flow_bw, flow_fw), mask_out_of_frame)


def pair_warping_errors(
    frames: torch.Tensor, flow_fw: torch.Tensor, flow_bw: torch.Tensor, mask_out_of_frame: bool = False
) -> torch.Tensor:
    """Warping error of every adjacent pair.

    ``frames``: ``(N + 1, C, H, W)`` in [0, 1] (the frames judged: O_0 … O_N);
    ``flow_fw``/``flow_bw``: ``(N, 2, H, W)`` forward (t → t+1) and backward (t+1 → t)
    flows of the flow source → ``(N,)`` float64 ``Σ M·(warp(O_{t+1}, fw) − O_t)² / (C·ΣM)``,
    0 where ``ΣM = 0``. Computed in float64 (so an integer flow reproduces pixels exactly).
    """
    if frames.shape[0] != flow_fw.shape[0] + 1 or flow_fw.shape != flow_bw.shape:
        raise ValueError(
            f"pair_warping_errors: {frames.shape[0]} frames need {frames.shape[0] - 1} flows each way, "
            f"got {tuple(flow_fw.shape)} and {tuple(flow_bw.shape)}"
        )
    x = frames.to(torch.float64)
    channels = x.shape[1]
    fw = flow_fw.to(device=x.device, dtype=torch.float64)
    bw = flow_bw.to(device=x.device, dtype=torch.float64)
    # O_{t+1} and the backward flow are sampled at the same points x + fw(x): one pass
    warped = F.grid_sample(
        torch.cat([x[1:], bw], dim=1), _sampling_grid(fw), mode="bilinear", padding_mode="border", align_corners=True
    )
    keep = ~_occluded(fw, warped[:, channels:], mask_out_of_frame)  # (N, H, W)
    squared = ((warped[:, :channels] - x[:-1]).square().sum(dim=1) * keep).sum(dim=(1, 2))
    count = keep.sum(dim=(1, 2)).to(torch.float64) * channels
    # Lai: N == 0 → divide the (all-zero) masked sum by the pixel count → 0
    return torch.where(count > 0, squared / count.clamp(min=1.0), torch.zeros_like(squared))


# --------------------------------------------------------------------------- metrics


class _FlowMetric(NetworkMetric, ClipMetric):
    """Shared plumbing: the flow backend, 8-bit rounding, chunking, weights."""

    level: ClassVar[str] = "clip"
    _ids: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        flow: str,
        flow_options: Mapping[str, Any] | None,
        weights_path: str | None,
        random_weights: bool,
        quantize: bool,
        chunk_pairs: int | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if flow not in FLOW_BACKENDS:
            raise ConfigError(f"{self._ids.get('dis', 'flow metric')}: flow must be one of {FLOW_BACKENDS}, got {flow!r}")
        options = dict(flow_options or {})
        if flow == "raft":
            options.setdefault("weights_path", weights_path)
            options.setdefault("random_weights", random_weights)
        elif weights_path is not None or random_weights:
            raise ConfigError(f"weights_path / random_weights apply to flow=raft only, not flow={flow}")
        self.flow = flow
        # a plain attribute, not a submodule: Metric.to(dtype) must never cast RAFT, and the
        # network must not enter the metric's state_dict
        self.backend: FlowBackend = build_flow_backend(flow, **options)
        self.quantize = bool(quantize)
        self.chunk_pairs = None if chunk_pairs is None else max(1, int(chunk_pairs))

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """``(…, 3, H, W)`` in [0, 1] → float32, rounded to 8-bit levels when ``quantize``."""
        if self.quantize:
            return (quantize_8bit(frames) / 255.0).to(torch.float32)
        return frames.to(torch.float32).clamp(0.0, 1.0)

    def _chunk(self, device: torch.device) -> int:
        # pairs per pass bound memory (float64 copies, RAFT activations); never the value
        return self.chunk_pairs or (16 if device.type == "cuda" else 8)

    @staticmethod
    def _check_clip(metric_id: str, preds: torch.Tensor) -> None:
        if preds.shape[1] < 2:
            raise ValueError(f"{metric_id}: needs clips of at least 2 frames, got {preds.shape[1]}")

    def cpu_only(self) -> bool:
        return self.flow != "raft"  # OpenCV's flows run on the CPU; RAFT is a network on the run's device

    def pretrained_files(self) -> PretrainedFiles:
        return self.backend.pretrained_files()  # RAFT's file (explicit weights_path honoured), or none

    def backend_version(self) -> str:
        return f"torch-{torch.__version__};{self.backend.version()}"


class EWarp(_FlowMetric):
    """Warping error E_warp of Lai et al. 2018 (module docstring): lower is better, raw value.

    Args:
        flow: ``"dis"`` (id ``ewarp``, offline default), ``"farneback"``
            (``ewarp_farneback``) or ``"raft"`` (``ewarp_raft``).
        flow_from: ``"target"`` (flow and occlusion from GT, needs a reference) or
            ``"preds"`` (from the restored frames; no reference; id suffix ``_nr``).
        flow_options: backend options (DIS ``preset``; Farneback parameters; RAFT
            ``iterations``, ``chunk_pairs``).
        weights_path: explicit RAFT weights file (flow=raft).
        random_weights: RAFT with random weights — tests only, never a reported number.
        mask_out_of_frame: also treat pixels whose flow leaves the frame as occluded (not
            in Lai's code; default False).
        quantize: round frames to 8-bit levels first (Lai measures saved JPEG frames).
        chunk_pairs: adjacent pairs per pass (memory only); None: 8 on a CPU, 16 on a GPU.
    """

    metric_id: ClassVar[str] = "ewarp"  # the instance's id follows flow and flow_from
    higher_is_better: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = True  # the instance's follows flow_from
    level: ClassVar[str] = "clip"
    _ids: ClassVar[dict[str, str]] = {"dis": "ewarp", "farneback": "ewarp_farneback", "raft": "ewarp_raft"}

    def __init__(
        self,
        flow: str = "dis",
        flow_from: str = "target",
        flow_options: Mapping[str, Any] | None = None,
        weights_path: str | None = None,
        random_weights: bool = False,
        mask_out_of_frame: bool = False,
        quantize: bool = True,
        chunk_pairs: int | None = None,
        **kwargs: Any,
    ) -> None:
        if flow_from not in FLOW_FROM:
            raise ConfigError(f"ewarp: flow_from must be one of {FLOW_FROM}, got {flow_from!r}")
        super().__init__(flow, flow_options, weights_path, random_weights, quantize, chunk_pairs, **kwargs)
        self.flow_from = flow_from
        self.mask_out_of_frame = bool(mask_out_of_frame)
        self.needs_reference = flow_from == "target"
        self.metric_id = self._ids[flow] + ("" if self.needs_reference else "_nr")

    @torch.no_grad()
    def pair_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] → ``(B, T − 1)`` float64 warping error per pair."""
        self._check_clip(self.metric_id, preds)
        source = target if self.flow_from == "target" else preds
        if source is None:
            raise ConfigError(f"{self.metric_id}: flow_from=target needs ground truth; use flow_from=preds without it")
        if source.shape != preds.shape:
            raise ValueError(f"{self.metric_id}: prediction {tuple(preds.shape)} and target {tuple(source.shape)} differ in shape")
        batch, frames = preds.shape[:2]
        chunk = self._chunk(preds.device)
        rows = []
        for b in range(batch):
            errors = []
            for start in range(0, frames - 1, chunk):
                stop = min(start + chunk, frames - 1) + 1  # frames start … stop-1 hold the pairs of this chunk
                flow_frames = self.prepare(source[b, start:stop])
                fw = video_flow(flow_frames, self.backend, "forward")
                bw = video_flow(flow_frames, self.backend, "backward")
                errors.append(pair_warping_errors(self.prepare(preds[b, start:stop]), fw, bw, self.mask_out_of_frame))
            rows.append(torch.cat(errors))
        return torch.stack(rows)

    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] → ``(B,)`` float64 E_warp (mean over pairs)."""
        return self.pair_scores(preds, target).mean(dim=1)

    def settings(self) -> dict[str, Any]:
        return {
            "flow": self.backend.settings(),
            "flow_from": self.flow_from,
            "occlusion": f"fb>{FB_RELATIVE}*(|bw_w|^2+|fw|^2)+{FB_ABSOLUTE} or |grad fw|^2>{MB_RELATIVE}*|fw|^2+{MB_ABSOLUTE}",
            "mask_out_of_frame": self.mask_out_of_frame,
            "warp": "bilinear_align_corners_border",
            "quantize": self.quantize,
            "data_range": 1,
        }


class FlowScore(_FlowMetric):
    """EvalCrafter Flow-Score: mean ``‖flow‖`` (pixels) over pixels and adjacent pairs of the
    restored frames (module docstring). No reference.

    Args:
        flow: ``"raft"`` (id ``flow_score``, EvalCrafter's network family), ``"dis"``
            (``flow_score_dis``, offline proxy) or ``"farneback"`` (``flow_score_farneback``).
        flow_options, weights_path, random_weights, quantize, chunk_pairs: as :class:`EWarp`.
    """

    metric_id: ClassVar[str] = "flow_score"  # the instance's id follows flow
    higher_is_better: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    level: ClassVar[str] = "clip"
    _ids: ClassVar[dict[str, str]] = {"raft": "flow_score", "dis": "flow_score_dis", "farneback": "flow_score_farneback"}

    def __init__(
        self,
        flow: str = "raft",
        flow_options: Mapping[str, Any] | None = None,
        weights_path: str | None = None,
        random_weights: bool = False,
        quantize: bool = True,
        chunk_pairs: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(flow, flow_options, weights_path, random_weights, quantize, chunk_pairs, **kwargs)
        self.metric_id = self._ids[flow]

    @torch.no_grad()
    def pair_scores(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] → ``(B, T − 1)`` float64 mean flow magnitude per pair."""
        self._check_clip(self.metric_id, preds)
        batch, frames = preds.shape[:2]
        chunk = self._chunk(preds.device)
        rows = []
        for b in range(batch):
            scores = []
            for start in range(0, frames - 1, chunk):
                stop = min(start + chunk, frames - 1) + 1
                fw = video_flow(self.prepare(preds[b, start:stop]), self.backend, "forward")
                scores.append(torch.linalg.vector_norm(fw.to(torch.float64), dim=1).mean(dim=(-2, -1)))
            rows.append(torch.cat(scores))
        return torch.stack(rows)

    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] → ``(B,)`` float64 Flow-Score in pixels."""
        return self.pair_scores(preds, target).mean(dim=1)

    def settings(self) -> dict[str, Any]:
        return {"flow": self.backend.settings(), "direction": "forward", "quantize": self.quantize, "reduce": "mean_l2_pixels_then_pairs"}


__all__ = [
    "FLOW_FROM",
    "EWarp",
    "FlowScore",
    "backward_warp",
    "flow_gradient_energy",
    "occlusion_mask",
    "out_of_frame",
    "pair_warping_errors",
]
