"""Face metrics: identity (IDS, σ_IDS, FaceCons, VIDD) and landmarks (AKD, TLME).

Inputs are ``(B, T, 3, H, W)`` float tensors in [0, 1] (restored ``preds``, GT ``target``).
Every metric draws its detections, landmarks and embeddings from
:mod:`fvr_bench.faces`, which computes each analysis once per frame
content and shares it between all metrics of a run. Frames are analysed as 8-bit RGB
(rounded like saved PNGs). Values are stored raw; papers print AKD and TLME ×1000 and
σ_IDS ×100 — that scaling belongs to tables.

Definitions (per clip; the evaluator averages clips)
----------------------------------------------------
``ids_arcface`` (↑) — mean over frames of cos(e(restored_t), e(gt_t)), ``e`` = ArcFace
    IR-SE50 (TreB1eN ``model_ir_se50.pth``) on MTCNN 5-point, similarity-aligned 112² RGB
    crops (BFVR-STC's IDS network and alignment). ``compat=True`` reproduces BFVR-STC's
    evaluation loop, which keeps only frame index 23 (the 24th frame) of each clip.
``ids_dlib`` (↑) — the same with dlib's 128-D face descriptor (HOG detector,
    5-point chip alignment). dlib descriptors are usually compared by Euclidean distance
    (same person below 0.6); the cosine is used here so that every IDS variant has the
    same form (1 = identical, higher is better). Offline stand-in for ArcFace IDS, not
    comparable with it in absolute value.
``akd_mediapipe`` (↓) — mean over frames of the mean over the 478 MediaPipe FaceMesh
    points of ‖p_restored − p_gt‖₂, (x, y) in normalised [0, 1] image coordinates (x/W,
    y/H), each frame analysed as given, no alignment: BFVR-STC's AKD at 512².
``akd_dlib68`` (↓) — the same with dlib's 68 points, also in normalised coordinates
    (x/W, y/H), so the value does not depend on the frame size and is on the scale of
    ``akd_mediapipe`` (not equal to it: different points).
``facecons_id`` (↑) — no reference: mean over t ≥ 1 of cos(f_t, f_0), the identity
    embedding of each frame against the first (EvalCrafter's FaceConsistency form with an
    identity network, KEEP/VividFace's variant; their exact network is not public).
    ``backend="dlib"`` (default, ships offline) or ``"arcface"`` (IR-SE50). If frame 0 has
    no face, the first frame that has one is the anchor.
``sigma_ids`` (↓) — IP-FVR: the standard deviation over frames of the per-frame identity
    similarity to GT, cos(e(restored_t), e(gt_t)); population form (ddof = 0, as
    ``numpy.std``), ``backend`` dlib (default) or arcface.
``tlme`` (↓) — temporal landmark motion error, **this project's definition** (none is
    public; PGTFormer/VividFace give no formula). With landmarks ``r_t`` (restored) and
    ``g_t`` (GT), ``K`` points in normalised (x/W, y/H) coordinates::

        TLME = 1/(T−1) · Σ_{t=0}^{T−2} 1/K · Σ_k ‖(r_{t+1,k} − r_{t,k}) − (g_{t+1,k} − g_{t,k})‖₂

    the error of the restored landmark *motion* against the GT motion: a constant
    landmark offset (a static AKD error) costs nothing, flicker and jitter do. A pair
    (t, t+1) counts only when all four landmark sets exist. ``backend="mediapipe"``
    (478 points, default) or ``"dlib68"``. VividFace prints TLME×1000.
``tlme_nr`` (↓) — no-reference form for real clips without GT (RFV-LQ): mean
    second-order landmark jitter::

        TLME_NR = 1/(T−2) · Σ_{t=1}^{T−2} 1/K · Σ_k ‖l_{t+1,k} − 2·l_{t,k} + l_{t−1,k}‖₂

    (acceleration of each point; zero for a still or uniformly moving face). A triple
    counts only when the face is found in all three frames; needs T ≥ 3.
``vidd`` (↓) — FOS ``bfrxlib`` ``calculate_vidd``: mean over adjacent pairs of
    ‖e_{t+1} − e_t‖₂, ``e`` = the raw 512-D output of the FOS ArcFace ResNet-18
    (``resnet18_110.pth``) on the whole frame resized to 128² (cv2 bilinear on 8-bit),
    grey = 0.299R + 0.587G + 0.114B in [0, 1]. FOS's docstring says "cosine similarity";
    its code computes the L2 distance, which is what is measured here. (FOS's CPU branch
    returns the last frame's features instead of the score — a bug not reproduced.)
    No reference; no face detection (FOS frames are aligned face crops).

Frames without a face: see :mod:`fvr_bench.faces.analysis` — GT frames without a
face are skipped; restored frames without their own detection are analysed with the GT
frame's geometry; the counts are kept in ``metric.face_counts`` (``frames``, ``own``,
``fallback``, ``missing``, ``no_face_gt``). A clip whose frames are all skipped scores NaN.

Progress: the metrics report the frames they finish through
:meth:`~fvr_bench.metrics.base.ClipMetric.advance` (the evaluator's per-frame bar). The
per-frame backends (dlib, MediaPipe) are called one frame at a time for that — each
per-frame result depends on its own frame only, so the values are those of one call over
the clip; the batched networks (MTCNN + IR-SE50, VIDD's ResNet-18) get the whole clip in
one call, as before, and report it at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from fvr_bench.errors import ConfigError
from fvr_bench.faces.analysis import (
    STATUS_FALLBACK,
    STATUS_MISSING,
    STATUS_NO_FACE_GT,
    FrameAnalysis,
    concat_analyses,
)
from fvr_bench.faces.embedders import ArcFaceR18FOS
from fvr_bench.faces.frames import frames_of
from fvr_bench.faces.identity import IdentityBackend
from fvr_bench.faces.landmarks import LandmarkBackend
from fvr_bench.faces.provenance import package_version
from fvr_bench.metrics.base import ClipMetric, NetworkMetric, PretrainedFiles

log = logging.getLogger(__name__)

BFVR_STC_IDS_FRAME = 23  # BFVR-STC's IDS loop keeps only this frame index (compat)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``(N, D)`` arrays (NaN rows stay NaN)."""
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


class FaceMetric(NetworkMetric, ClipMetric):
    """Base of the face metrics: per-clip NaN-aware averaging and skip/fallback counts.

    Each declares its files once in ``self.files`` (a :class:`PretrainedFiles` built from
    its face backend, whose ``weights_file`` names them in the provenance)."""

    level: ClassVar[str] = "frame"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # plain attribute, not a metric state: diagnostics, never synchronised or reset by torchmetrics
        self.face_counts: Counter[str] = Counter()

    def _count(self, *analyses: FrameAnalysis, clip: int | None = None) -> None:
        """Counts per frame of the first analysis (restored, or the only one) of clip
        ``clip`` (its index in the batch)."""
        status = analyses[0].status
        self.face_counts["frames"] += len(status)
        self.face_counts.update(status)
        skipped = sum(s in (STATUS_MISSING, STATUS_NO_FACE_GT) for s in status)
        fallback = sum(s == STATUS_FALLBACK for s in status)
        if skipped or fallback:
            log.info("%s: %d of %d frames skipped (no face), %d analysed with the GT geometry",
                     self.metric_id, skipped, len(status), fallback)
            parts = [f"no face in {skipped} of {len(status)} frames (skipped)"] if skipped else []
            if fallback:
                parts.append(f"{fallback} of {len(status)} frames analysed with the GT face geometry")
            self.note_clip(len(status) - skipped, "; ".join(parts), clip=clip)

    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` → ``(B,)``: mean of the finite frame scores (NaN if none)."""
        frame = self.frame_scores(preds, target).to(torch.float64)
        finite = torch.isfinite(frame)
        total = torch.where(finite, frame, torch.zeros_like(frame)).sum(1)
        count = finite.sum(1)
        return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))

    @staticmethod
    def _net_device(x: torch.Tensor) -> torch.device:
        return x.device

    def _in_steps(self, index: list[int], per_frame: bool, analyse: Callable[[list[int]], Any]) -> list[Any]:
        """``analyse(frame indices)`` over ``index``: one frame at a time when the backend is
        per-frame (``per_frame``), else in one call; :meth:`advance` after each step.
        Returns the results of the steps in order."""
        steps = [[i] for i in index] if per_frame else [index]
        results = []
        for step in steps:
            results.append(analyse(step))
            self.advance(len(step))
        return results


# --------------------------------------------------------------------------- identity


class _IdentityMetric(FaceMetric):
    """Shared plumbing of the identity-embedding metrics (dlib or ArcFace IR-SE50)."""

    default_backend: ClassVar[str] = "dlib"

    def __init__(self, backend: str | None = None, detector: str = "hog", upsample: int | str = "auto",
                 weights_path: str | None = None, random_weights: bool = False,
                 mtcnn_thresholds: tuple[float, float, float] | list[float] = (0.6, 0.7, 0.7),
                 mtcnn_min_face_size: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        backend = backend or self.default_backend
        if backend == "dlib" and (weights_path is not None or random_weights):
            raise ConfigError(f"{self.metric_id}: weights_path / random_weights apply to backend=arcface only")
        self.identity = IdentityBackend(
            backend, detector=detector, upsample=upsample, weights_path=weights_path, random_weights=random_weights,
            mtcnn_thresholds=tuple(mtcnn_thresholds), mtcnn_min_face_size=mtcnn_min_face_size,
        )
        explicit = getattr(self.identity.impl, "weights_path", None)  # ArcFace's weights_path
        self.files = PretrainedFiles(
            {name: explicit if name == "arcface_irse50" else None for name in self.identity.required_weights()},
            provenance=self.identity.weights_file,
        )

    def settings(self) -> dict[str, Any]:
        return {"backend": self.identity.kind, **self.identity.settings()}

    def cpu_only(self) -> bool:
        return self.identity.kind == "dlib"  # ArcFace and MTCNN are networks on the run's device

    def backend_version(self) -> str:
        return self.identity.backend_version()

    def similarities(self, preds: torch.Tensor, target: torch.Tensor, frames: list[int] | None = None) -> torch.Tensor:
        """``(B, T)`` float64 per-frame cos(e(restored), e(gt)); NaN where skipped. Only the
        frame indices in ``frames`` are analysed when given (the rest stay NaN)."""
        batch, length = preds.shape[:2]
        out = torch.full((batch, length), float("nan"), dtype=torch.float64)
        index = list(range(length)) if frames is None else frames
        device = self._net_device(preds)
        for b in range(batch):
            steps = self._in_steps(index, self.identity.kind == "dlib",
                                   lambda i, b=b: self.identity.pair(frames_of(preds[b, i]), frames_of(target[b, i]), device))
            pred = concat_analyses([p for p, _ in steps])
            gt = concat_analyses([g for _, g in steps])
            self._count(pred, gt, clip=b)
            out[b, index] = torch.from_numpy(_cosine(pred.values, gt.values))
            self.advance(length - len(index))  # frames left out (compat): done as well
        return out.to(preds.device)


class IDSArcFace(_IdentityMetric):
    """IDS with ArcFace IR-SE50 on MTCNN-aligned 112² crops; ``(B, T)`` cosines in [-1, 1].

    Args:
        compat: BFVR-STC's quirk — only frame index 23 counts (clips need ≥ 24 frames).
        weights_path: explicit ``model_ir_se50.pth``; else the registry lookup.
        random_weights: seeded random IR-SE50 — tests only, never a reported number.
        mtcnn_thresholds, mtcnn_min_face_size: facenet-pytorch MTCNN settings.
    """

    metric_id: ClassVar[str] = "ids_arcface"
    higher_is_better: ClassVar[bool] = True
    default_backend: ClassVar[str] = "arcface"

    def __init__(self, compat: bool = False, weights_path: str | None = None, random_weights: bool = False,
                 mtcnn_thresholds: tuple[float, float, float] | list[float] = (0.6, 0.7, 0.7),
                 mtcnn_min_face_size: int = 20, **kwargs: Any) -> None:
        super().__init__("arcface", weights_path=weights_path, random_weights=random_weights,
                         mtcnn_thresholds=mtcnn_thresholds, mtcnn_min_face_size=mtcnn_min_face_size, **kwargs)
        self.compat = bool(compat)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "compat": self.compat,
                "frames": f"index {BFVR_STC_IDS_FRAME} only" if self.compat else "all"}

    @torch.no_grad()
    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T)`` cosines; with ``compat`` NaN everywhere but frame 23."""
        if not self.compat:
            return self.similarities(preds, target)
        if preds.shape[1] <= BFVR_STC_IDS_FRAME:
            raise ConfigError(
                f"ids_arcface compat=true scores frame index {BFVR_STC_IDS_FRAME} only (BFVR-STC), but the clip has "
                f"{preds.shape[1]} frames; use 24-frame clips (data.max_frames=24) or compat=false"
            )
        return self.similarities(preds, target, frames=[BFVR_STC_IDS_FRAME])


class IDSDlib(_IdentityMetric):
    """IDS with dlib's 128-D descriptors (cosine, see the module docstring); ``(B, T)``.

    Args:
        detector: ``"hog"`` (no file) or ``"mmod"`` (CNN, slower, finds harder faces).
        upsample: detector upsampling, an integer or ``"auto"`` (0, then 1 if no face).
    """

    metric_id: ClassVar[str] = "ids_dlib"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, detector: str = "hog", upsample: int | str = "auto", **kwargs: Any) -> None:
        super().__init__("dlib", detector=detector, upsample=upsample, **kwargs)

    @torch.no_grad()
    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return self.similarities(preds, target)


class SigmaIDS(_IdentityMetric):
    """σ_IDS (IP-FVR): std over frames (ddof 0) of cos(e(restored_t), e(gt_t)); ``(B,)``.

    Args:
        backend: ``"dlib"`` (default, offline) or ``"arcface"`` (IR-SE50, IP-FVR's kind).
        detector, upsample: dlib settings; weights_path, random_weights, mtcnn_*: ArcFace.
    """

    metric_id: ClassVar[str] = "sigma_ids"
    higher_is_better: ClassVar[bool] = False
    level: ClassVar[str] = "clip"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "ddof": 0, "against": "gt"}

    @torch.no_grad()
    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        sims = self.similarities(preds, target).cpu().numpy()
        out = []
        for row in sims:
            finite = row[np.isfinite(row)]
            out.append(float(finite.std()) if finite.size else float("nan"))
        return torch.tensor(out, dtype=torch.float64, device=preds.device)


class FaceConsID(_IdentityMetric):
    """FaceCons with identity embeddings: mean over t ≥ 1 of cos(f_t, f_0); ``(B,)``.

    No reference. ``backend``: ``"dlib"`` (default) or ``"arcface"``.
    """

    metric_id: ClassVar[str] = "facecons_id"
    higher_is_better: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    level: ClassVar[str] = "clip"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "anchor": "first frame with a face"}

    @torch.no_grad()
    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        for b in range(preds.shape[0]):
            device = self._net_device(preds)
            analysis = concat_analyses(self._in_steps(
                list(range(preds.shape[1])), self.identity.kind == "dlib",
                lambda i, b=b, device=device: self.identity.video(frames_of(preds[b, i]), device)))
            self._count(analysis, clip=b)
            valid = np.flatnonzero(analysis.valid)
            if valid.size < 2:
                out.append(float("nan"))
                continue
            anchor = analysis.values[valid[0]]
            sims = _cosine(analysis.values[valid[1:]], anchor[None])
            out.append(float(sims.mean()))
        return torch.tensor(out, dtype=torch.float64, device=preds.device)


# --------------------------------------------------------------------------- landmarks


class _LandmarkMetric(FaceMetric):
    default_backend: ClassVar[str] = "mediapipe"

    def __init__(self, backend: str | None = None, detector: str = "hog", upsample: int | str = "auto",
                 min_detection_confidence: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.landmarks = LandmarkBackend(backend or self.default_backend, detector=detector, upsample=upsample,
                                         min_detection_confidence=min_detection_confidence)
        self.files = PretrainedFiles(self.landmarks.required_weights(), provenance=self.landmarks.weights_file)

    def settings(self) -> dict[str, Any]:
        return {"backend": self.landmarks.kind, **self.landmarks.settings()}

    def cpu_only(self) -> bool:
        return True  # MediaPipe and dlib run on the CPU

    def backend_version(self) -> str:
        return self.landmarks.backend_version()

    def pairs(self, preds: torch.Tensor, target: torch.Tensor, b: int) -> tuple[FrameAnalysis, FrameAnalysis]:
        steps = self._in_steps(list(range(preds.shape[1])), True,
                               lambda i: self.landmarks.pair(frames_of(preds[b, i]), frames_of(target[b, i])))
        pred = concat_analyses([p for p, _ in steps])
        gt = concat_analyses([g for _, g in steps])
        self._count(pred, gt, clip=b)
        return pred, gt


class _AKD(_LandmarkMetric):
    higher_is_better: ClassVar[bool] = False

    @torch.no_grad()
    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T)`` mean landmark distance in normalised coordinates; NaN if skipped."""
        rows = []
        for b in range(preds.shape[0]):
            pred, gt = self.pairs(preds, target, b)
            rows.append(np.linalg.norm(pred.values - gt.values, axis=-1).mean(-1))  # NaN rows stay NaN
        return torch.from_numpy(np.stack(rows)).to(preds.device)


class AKDMediaPipe(_AKD):
    """AKD with MediaPipe FaceMesh (478 points, normalised (x, y)); ``(B, T)``, lower is better.

    Args:
        min_detection_confidence: FaceMesh's face-detector threshold (0.5, its default).
    """

    metric_id: ClassVar[str] = "akd_mediapipe"

    def __init__(self, min_detection_confidence: float = 0.5, **kwargs: Any) -> None:
        super().__init__("mediapipe", min_detection_confidence=min_detection_confidence, **kwargs)


class AKDDlib68(_AKD):
    """AKD with dlib's 68 landmarks, normalised (x/W, y/H); ``(B, T)``, lower is better.

    Args:
        detector: ``"hog"`` or ``"mmod"``; upsample: integer or ``"auto"``.
    """

    metric_id: ClassVar[str] = "akd_dlib68"

    def __init__(self, detector: str = "hog", upsample: int | str = "auto", **kwargs: Any) -> None:
        super().__init__("dlib68", detector=detector, upsample=upsample, **kwargs)


class TLME(_LandmarkMetric):
    """Temporal landmark motion error (this project's definition, see the module
    docstring); ``(B,)``, lower is better. ``backend``: ``"mediapipe"`` or ``"dlib68"``."""

    metric_id: ClassVar[str] = "tlme"
    higher_is_better: ClassVar[bool] = False
    level: ClassVar[str] = "clip"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "definition": "mean_t mean_k |d_t r_k - d_t g_k|_2, normalised xy (fvr_bench)"}

    @torch.no_grad()
    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        out = []
        for b in range(preds.shape[0]):
            pred, gt = self.pairs(preds, target, b)
            motion_r = np.diff(pred.values, axis=0)  # (T-1, K, 2); NaN where a frame is missing
            motion_g = np.diff(gt.values, axis=0)
            out.append(_nanmean(np.linalg.norm(motion_r - motion_g, axis=-1).mean(-1)))
        return torch.tensor(out, dtype=torch.float64, device=preds.device)


class TLMENR(_LandmarkMetric):
    """No-reference landmark jitter (second-order, see the module docstring); ``(B,)``,
    lower is better; needs T ≥ 3. ``backend``: ``"mediapipe"`` or ``"dlib68"``."""

    metric_id: ClassVar[str] = "tlme_nr"
    higher_is_better: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    level: ClassVar[str] = "clip"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "definition": "mean_t mean_k |l_t+1 - 2 l_t + l_t-1|_2, normalised xy (fvr_bench)"}

    @torch.no_grad()
    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        for b in range(preds.shape[0]):
            analysis = concat_analyses(self._in_steps(list(range(preds.shape[1])), True,
                                                      lambda i, b=b: self.landmarks.video(frames_of(preds[b, i]))))
            self._count(analysis, clip=b)
            points = analysis.values
            if len(points) < 3:
                out.append(float("nan"))
                continue
            accel = points[2:] - 2.0 * points[1:-1] + points[:-2]
            out.append(_nanmean(np.linalg.norm(accel, axis=-1).mean(-1)))
        return torch.tensor(out, dtype=torch.float64, device=preds.device)


# --------------------------------------------------------------------------- VIDD


class VIDD(FaceMetric):
    """FOS VIDD: mean over adjacent pairs of the L2 distance of ArcFace-R18 embeddings
    (128² grey whole frames); ``(B,)``, lower is better, no reference, T ≥ 2.

    Args:
        weights_path: explicit ``resnet18_110.pth``; else the registry lookup.
        random_weights: seeded random network — tests only, never a reported number.
    """

    metric_id: ClassVar[str] = "vidd"
    higher_is_better: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    level: ClassVar[str] = "clip"

    def __init__(self, weights_path: str | None = None, random_weights: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = ArcFaceR18FOS(weights_path, random_weights)
        self.files = PretrainedFiles({name: weights_path for name in self.net.required_weights()},
                                     provenance=self.net.weights_file)

    def settings(self) -> dict[str, Any]:
        return {**self.net.settings(), "distance": "l2", "pairs": "adjacent"}

    def backend_version(self) -> str:
        return package_version("torch", "cv2")

    @torch.no_grad()
    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        for b in range(preds.shape[0]):
            frames = frames_of(preds[b])
            self.face_counts["frames"] += len(frames)
            if len(frames) < 2:
                out.append(float("nan"))
                self.advance(len(frames))
                continue
            emb = self.net.embed_frames(frames, self._net_device(preds))  # one batch: reported at once
            self.advance(len(frames))
            out.append(float(np.linalg.norm(emb[1:] - emb[:-1], axis=-1).mean()))
        return torch.tensor(out, dtype=torch.float64, device=preds.device)


__all__ = [
    "AKDDlib68",
    "AKDMediaPipe",
    "FaceConsID",
    "FaceMetric",
    "IDSArcFace",
    "IDSDlib",
    "SigmaIDS",
    "TLME",
    "TLMENR",
    "VIDD",
]
