"""ArcFace identity embedders on top of the networks of :mod:`fvr_bench.faces.arcface`.

* :class:`ArcFaceIRSE50` — MTCNN 5 points (largest face) → ArcFace 112² alignment
  (:func:`~fvr_bench.faces.align.align_arcface`) → IR-SE50 on RGB ``(x − 0.5)/0.5`` →
  512-D unit vector.
* :class:`ArcFaceR18FOS` — FOS ``bfrxlib`` descriptor: the whole frame (FOS frames are
  aligned face crops), ``cv2.resize`` to 128² (bilinear, on 8-bit), /255, grey =
  0.299R + 0.587G + 0.114B, ResNet-18 ArcFace → raw 512-D output.

Networks run on the input frames' device and are shared through :data:`NETWORKS`;
embeddings are memoised per frame (:data:`MEMO`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from fvr_bench import weights as weight_registry
from fvr_bench.faces.align import Geometry, align_arcface
from fvr_bench.faces.frames import Frame
from fvr_bench.faces.memo import MEMO
from fvr_bench.faces.mtcnn import MTCNNDetector
from fvr_bench.faces.provenance import weights_identity


class _Networks:
    """Identity networks shared by all metrics: one instance per (name, weights, device)."""

    def __init__(self) -> None:
        self._nets: dict[tuple, torch.nn.Module] = {}
        self._lock = threading.Lock()

    def get(self, name: str, weights: Path | None, seed: int, device: torch.device) -> torch.nn.Module:
        from fvr_bench.faces.arcface import build_network

        key = (name, str(weights) if weights is not None else f"random:{seed}", str(device))
        with self._lock:
            if key not in self._nets:
                self._nets[key] = build_network(name, weights, random_seed=seed).to(device)
            return self._nets[key]

    def clear(self) -> None:
        with self._lock:
            self._nets.clear()


NETWORKS = _Networks()


class _WeightsMixin:
    """Resolves an identity network's weights lazily; ``random_weights`` builds a seeded
    random network instead (tests; never for reported numbers)."""

    registry_name = ""

    def __init__(self, weights_path: str | None = None, random_weights: bool = False, random_seed: int = 0) -> None:
        self.weights_path = weights_path
        self.random_weights = bool(random_weights)
        self.random_seed = int(random_seed)
        self._resolved: Path | None = None

    def weights(self) -> Path | None:
        if self.random_weights:
            return None
        if self._resolved is None:
            self._resolved = weight_registry.locate(self.registry_name, self.weights_path)
        return self._resolved

    def weights_tag(self) -> str:
        return f"random:{self.random_seed}" if self.random_weights else str(self.weights())

    def weights_file(self) -> tuple[str | None, str | None]:
        if self.random_weights:
            return f"random-init(seed={self.random_seed})", None
        return weights_identity(self.registry_name, self.weights_path)

    def network(self, device: torch.device) -> torch.nn.Module:
        return NETWORKS.get(self.registry_name, self.weights(), self.random_seed, device)


class ArcFaceIRSE50(_WeightsMixin):
    """MTCNN-aligned 112² crops → IR-SE50 512-D unit embeddings."""

    registry_name = "arcface_irse50"

    def __init__(self, weights_path: str | None = None, random_weights: bool = False, random_seed: int = 0,
                 mtcnn: MTCNNDetector | None = None) -> None:
        super().__init__(weights_path, random_weights, random_seed)
        self.mtcnn = mtcnn or MTCNNDetector()

    def settings(self) -> dict[str, Any]:
        return {"align": "mtcnn5_arcface112", "input": "rgb112_pm1", **self.mtcnn.settings()}

    def required_weights(self) -> list[str]:
        return self.mtcnn.required_weights() + ([] if self.random_weights else [self.registry_name])

    def detect_many(self, frames: list[Frame], device: torch.device) -> list[Geometry | None]:
        return self.mtcnn.detect_many(frames, device)

    def embed_many(self, frames: list[Frame], geometries: list[Geometry], device: torch.device) -> list[np.ndarray]:
        """512-D unit embeddings ``(512,)`` float64 of each frame aligned with its geometry."""
        tag = self.weights_tag()
        keys = [(tag, f.digest, g.key) for f, g in zip(frames, geometries)]
        todo = {}
        for index, key in enumerate(keys):
            if not MEMO.lookup("arcface_irse50.embed", key)[0] and key not in todo:
                todo[key] = index
        if todo:
            crops = np.stack([align_arcface(frames[i].image, geometries[i].points) for i in todo.values()])
            x = torch.from_numpy(crops).to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
            x = (x - 0.5) / 0.5
            with torch.no_grad():
                out = self.network(device)(x).double().cpu().numpy()
            for key, embedding in zip(todo, out):
                MEMO.store("arcface_irse50.embed", key, embedding)
        return [MEMO.lookup("arcface_irse50.embed", key)[1] for key in keys]


class ArcFaceR18FOS(_WeightsMixin):
    """FOS ``Descriptor('arcface_resnet18')``: whole frame → 128² grey [0, 1] → 512-D raw."""

    registry_name = "arcface_r18_fos"
    _GREY = (0.299, 0.587, 0.114)  # FOS to_gray(mode='rgb') weights

    def settings(self) -> dict[str, Any]:
        return {"input": "whole_frame_gray128_01", "resize": "cv2_linear_uint8"}

    def required_weights(self) -> list[str]:
        return [] if self.random_weights else [self.registry_name]

    def embed_frames(self, frames: list[Frame], device: torch.device) -> np.ndarray:
        """``(N, 512)`` float64 raw embeddings of whole frames (memoised per frame)."""
        tag = self.weights_tag()
        keys = [(tag, f.digest) for f in frames]
        todo = {}
        for index, key in enumerate(keys):
            if not MEMO.lookup("arcface_r18_fos.embed", key)[0] and key not in todo:
                todo[key] = index
        if todo:
            # FOS resizes the 8-bit image with cv2 (bilinear), then /255 and grey in float
            small = np.stack([cv2.resize(frames[i].image, (128, 128), interpolation=cv2.INTER_LINEAR) for i in todo.values()])
            x = torch.from_numpy(small).to(device=device, dtype=torch.float64) / 255.0
            grey = sum(w * x[..., c] for c, w in enumerate(self._GREY))[:, None].to(torch.float32)
            with torch.no_grad():
                out = self.network(device)(grey).double().cpu().numpy()
            for key, embedding in zip(todo, out):
                MEMO.store("arcface_r18_fos.embed", key, embedding)
        return np.stack([MEMO.lookup("arcface_r18_fos.embed", key)[1] for key in keys])
