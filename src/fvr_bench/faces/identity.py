"""Identity embeddings per frame of a video or a (restored, GT) pair: dlib or ArcFace.

Frames without a face follow :mod:`fvr_bench.faces.analysis`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fvr_bench.errors import ConfigError
from fvr_bench.faces.align import Geometry
from fvr_bench.faces.analysis import (
    STATUS_FALLBACK,
    STATUS_MISSING,
    STATUS_NO_FACE_GT,
    STATUS_OWN,
    FrameAnalysis,
)
from fvr_bench.faces.dlib import shared_dlib
from fvr_bench.faces.embedders import ArcFaceIRSE50
from fvr_bench.faces.frames import Frame
from fvr_bench.faces.mtcnn import shared_mtcnn
from fvr_bench.faces.provenance import package_version, weights_identity


class IdentityBackend:
    """Identity embeddings per frame: ``"dlib"`` (128-D descriptors) or ``"arcface"``
    (IR-SE50 on MTCNN-aligned crops, 512-D)."""

    def __init__(self, kind: str = "dlib", detector: str = "hog", upsample: int | str = "auto",
                 weights_path: str | None = None, random_weights: bool = False,
                 mtcnn_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), mtcnn_min_face_size: int = 20) -> None:
        if kind not in ("dlib", "arcface"):
            raise ConfigError(f"identity backend must be 'dlib' or 'arcface', got {kind!r}")
        self.kind = kind
        if kind == "dlib":
            self.impl: Any = shared_dlib(detector, upsample)
        else:
            mtcnn = shared_mtcnn(tuple(float(t) for t in mtcnn_thresholds), int(mtcnn_min_face_size))
            self.impl = ArcFaceIRSE50(weights_path, random_weights, mtcnn=mtcnn)

    @property
    def dim(self) -> int:
        return 128 if self.kind == "dlib" else 512

    def settings(self) -> dict[str, Any]:
        if self.kind == "dlib":
            return {"identity": "dlib_resnet_v1_128", **self.impl.settings()}
        return {"identity": "arcface_irse50", **self.impl.settings()}

    def required_weights(self) -> list[str]:
        if self.kind == "dlib":
            return self.impl.required_weights(identity=True)
        return self.impl.required_weights()

    def weights_file(self) -> tuple[str | None, str | None]:
        if self.kind == "dlib":
            return weights_identity("dlib_face_recognition_resnet")
        return self.impl.weights_file()

    def backend_version(self) -> str:
        return package_version("dlib") if self.kind == "dlib" else package_version("torch", "facenet_pytorch")

    def detect_many(self, frames: list[Frame], device: torch.device) -> list[Geometry | None]:
        if self.kind == "dlib":
            return [self.impl.detect(f) for f in frames]
        return self.impl.detect_many(frames, device)

    def embed_many(self, frames: list[Frame], geometries: list[Geometry], device: torch.device) -> list[np.ndarray]:
        if self.kind == "dlib":
            return [self.impl.descriptor(f, g) for f, g in zip(frames, geometries)]
        return self.impl.embed_many(frames, geometries, device)

    def video(self, frames: list[Frame], device: torch.device) -> FrameAnalysis:
        """No-reference: each frame's own face; frames without one are ``missing``."""
        geometries = self.detect_many(frames, device)
        values = np.full((len(frames), self.dim), np.nan)
        status = [STATUS_MISSING if g is None else STATUS_OWN for g in geometries]
        keep = [i for i, g in enumerate(geometries) if g is not None]
        for i, emb in zip(keep, self.embed_many([frames[i] for i in keep], [geometries[i] for i in keep], device)):
            values[i] = emb
        return FrameAnalysis(values, status)

    def pair(self, pred: list[Frame], gt: list[Frame], device: torch.device) -> tuple[FrameAnalysis, FrameAnalysis]:
        """Full-reference: GT frames first; restored frames fall back to the GT geometry."""
        gt_geo = self.detect_many(gt, device)
        pred_geo = self.detect_many(pred, device)
        pred_status, gt_status, use_pred, use_gt = [], [], [], []
        for i, (p, g) in enumerate(zip(pred_geo, gt_geo)):
            if g is None:
                pred_status.append(STATUS_NO_FACE_GT)
                gt_status.append(STATUS_NO_FACE_GT)
                continue
            gt_status.append(STATUS_OWN)
            pred_status.append(STATUS_OWN if p is not None else STATUS_FALLBACK)
            use_gt.append((i, g))
            use_pred.append((i, p if p is not None else g))
        pred_values = np.full((len(pred), self.dim), np.nan)
        gt_values = np.full((len(gt), self.dim), np.nan)
        for frames, chosen, values in ((gt, use_gt, gt_values), (pred, use_pred, pred_values)):
            if chosen:
                embeddings = self.embed_many([frames[i] for i, _ in chosen], [geo for _, geo in chosen], device)
                for (i, _), emb in zip(chosen, embeddings):
                    values[i] = emb
        return FrameAnalysis(pred_values, pred_status), FrameAnalysis(gt_values, gt_status)
