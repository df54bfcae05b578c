"""facenet-pytorch MTCNN: the largest face and its 5 points, batched per frame size.

The P/R/O-nets load from the weight registry and run on the input frames' device;
detections are memoised per frame (:data:`MEMO`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fvr_bench import weights as weight_registry
from fvr_bench.errors import ConfigError
from fvr_bench.faces.align import Geometry, largest_box
from fvr_bench.faces.frames import Frame
from fvr_bench.faces.memo import MEMO
from fvr_bench.faces.shared import SharedBackend, shared


class MTCNNDetector(SharedBackend):
    """facenet-pytorch MTCNN (P/R/O-nets from the registry), largest face, 5 points."""

    _lazy = ("_nets",)

    def __init__(self, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), min_face_size: int = 20,
                 factor: float = 0.709) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        self.min_face_size = int(min_face_size)
        self.factor = float(factor)
        self._nets: dict[str, tuple] = {}

    def settings(self) -> dict[str, Any]:
        return {"mtcnn_thresholds": list(self.thresholds), "mtcnn_min_face_size": self.min_face_size, "mtcnn_factor": self.factor}

    @staticmethod
    def required_weights() -> list[str]:
        return ["mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"]

    def _networks(self, device: torch.device) -> tuple:
        key = str(device)
        if key not in self._nets:
            try:
                from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
            except ImportError as error:  # pragma: no cover
                raise ConfigError("ArcFace metrics need facenet-pytorch==2.6.0 for MTCNN (see the Makefile)") from error
            nets = []
            for cls, name in ((PNet, "mtcnn_pnet"), (RNet, "mtcnn_rnet"), (ONet, "mtcnn_onet")):
                net = cls(pretrained=False)
                net.load_state_dict(torch.load(str(weight_registry.locate(name)), map_location="cpu", weights_only=True))
                nets.append(net.to(device).eval())
            self._nets[key] = tuple(nets)
        return self._nets[key]

    def detect_many(self, frames: list[Frame], device: torch.device) -> list[Geometry | None]:
        """Largest face with its 5 points per frame (memoised; misses run as one batch per
        frame size on ``device``)."""
        key_of = lambda f: (self.thresholds, self.min_face_size, self.factor, f.digest)  # noqa: E731
        results: list[Geometry | None] = [None] * len(frames)
        todo: dict[tuple, list[int]] = {}
        for index, frame in enumerate(frames):
            found, value = MEMO.lookup("mtcnn.detect", key_of(frame))
            if found:
                results[index] = value
            else:
                todo.setdefault(frame.image.shape, []).append(index)
        for indices in todo.values():
            unique: dict[str, int] = {}
            for index in indices:
                unique.setdefault(frames[index].digest, index)
            order = list(unique.values())
            from facenet_pytorch.models.utils.detect_face import detect_face

            pnet, rnet, onet = self._networks(device)
            batch = torch.from_numpy(np.stack([frames[i].image for i in order])).to(device=device, dtype=torch.float32)
            with torch.no_grad():
                boxes, points = detect_face(batch, self.min_face_size, pnet, rnet, onet, list(self.thresholds), self.factor, device)
            for index, frame_boxes, frame_points in zip(order, boxes, points):
                geometry = None
                if len(frame_boxes):
                    frame_boxes = np.asarray(frame_boxes, dtype=np.float64)
                    best = largest_box([tuple(b[:4]) for b in frame_boxes])
                    geometry = Geometry(
                        box=tuple(float(v) for v in frame_boxes[best, :4]),
                        points=np.asarray(frame_points[best], dtype=np.float64).reshape(5, 2),
                        score=float(frame_boxes[best, 4]),
                    )
                MEMO.store("mtcnn.detect", key_of(frames[index]), geometry)
            for index in indices:
                results[index] = MEMO.lookup("mtcnn.detect", key_of(frames[index]))[1]
        return results


def shared_mtcnn(thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), min_face_size: int = 20) -> MTCNNDetector:
    return shared(("mtcnn", thresholds, min_face_size), lambda: MTCNNDetector(thresholds, min_face_size))
