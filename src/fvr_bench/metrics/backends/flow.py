"""Optical flow backends behind one interface: OpenCV DIS, OpenCV Farneback, RAFT-large.

Every backend is a callable ``backend(first, second) -> flow``:

* ``first``, ``second``: ``(N, C, H, W)`` float tensors in [0, 1], ``C`` = 3 (RGB) or 1
  (grey), on any device;
* ``flow``: ``(N, 2, H, W)`` float32 on the device of ``first``, in pixels, channel 0 = x
  (columns, to the right), channel 1 = y (rows, down), defined on the grid of ``first``:
  ``first(x) ≈ second(x + flow(x))`` — the convention of OpenCV's ``calc`` and of RAFT, so
  :func:`fvr_bench.metrics.temporal.backward_warp` of ``second`` with it gives ``first``.

:func:`video_flow` turns a clip ``(…, T, C, H, W)`` into the flows of its adjacent pairs
``(…, T − 1, 2, H, W)`` (forward t → t+1, or backward t+1 → t).

Backends (``FLOW_BACKENDS``; :func:`build_flow_backend` makes one by name):

``dis``  OpenCV Dense Inverse Search (Kroeger et al. 2016), ``cv2.DISOpticalFlow``, preset
    MEDIUM by default (coarse-to-fine patch search with mean-normalised patches plus
    variational refinement). MEDIUM, not ULTRAFAST: the warping error and its occlusion
    mask are only as good as the flow, and MEDIUM is 10–15× slower but still cheap
    (measured on 2 CPU cores: 8 ms per 176×144 pair, 0.10 s per 512² pair, vs 0.5 ms /
    11 ms for ULTRAFAST). ``preset`` = ``ultrafast`` | ``fast`` | ``medium``. Needs frames
    with a side ≥ 12 pixels. Runs on the CPU.
``farneback``  ``cv2.calcOpticalFlowFarneback`` with OpenCV's documented example
    parameters: ``pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5,
    poly_sigma=1.2, flags=0`` (all overridable). Runs on the CPU.
``raft``  torchvision's RAFT-large (``torchvision.models.optical_flow.raft_large``) with
    the pretrained file ``raft_large`` of :data:`fvr_bench.weights.REGISTRY`
    (``raft_large_C_T_SKHT_V2-ff5fadd5.pth``, trained C+T+S+K+H), 20 refinement
    iterations as EvalCrafter, inputs scaled to [-1, 1] (what the original RAFT does to its
    0-255 input internally), frames replicate-padded to a multiple of 8 split evenly
    between both sides (RAFT's ``InputPadder``, "sintel" mode) and the flow cropped back.
    Runs on the inputs' device; frames must be at least 128×128 (torchvision's check of its
    correlation pyramid; the original RAFT code has no such limit). The weights are loaded on the first call, never at
    construction. ``random_weights=True`` builds the network with seeded random weights
    instead — for tests of the code path only, never for a reported number.
    Deviation from EvalCrafter: it uses the original RAFT code with ``raft-things.pth``;
    torchvision's port with the C+T+S+K+H weights gives different (not calibrated) values.

The OpenCV backends work on 8-bit grey frames, as ``cv2`` expects: RGB → uint8 by
``floor(255·x + 0.5)`` (the rounding of :func:`fvr_bench.video.as_uint8`), then
``cv2.cvtColor(RGB2GRAY)`` (BT.601 weights 0.299/0.587/0.114). Grey (1-channel) input is
used as it is.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fvr_bench.errors import ConfigError
from fvr_bench.metrics.base import DeclaresFiles, PretrainedFiles
from fvr_bench.state_dicts import load_state, read_file

FLOW_BACKENDS = ("dis", "farneback", "raft")

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

# OpenCV's documented example parameters (tutorial "Optical Flow", dense Farneback).
FARNEBACK_DEFAULTS = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}

RAFT_WEIGHTS = "raft_large"  # key in fvr_bench.weights.REGISTRY
RAFT_ITERATIONS = 20  # EvalCrafter: model(image1, image2, iters=20, test_mode=True)
RAFT_MIN_SIZE = 128  # torchvision checks that the 1/8 feature maps are >= 16 for its 4-level pyramid


def _check_pair(first: torch.Tensor, second: torch.Tensor) -> None:
    if first.ndim != 4 or first.shape != second.shape or first.shape[1] not in (1, 3):
        raise ValueError(
            f"optical flow: expected two (N, 3|1, H, W) tensors of one shape, got {tuple(first.shape)} "
            f"and {tuple(second.shape)}"
        )


def to_gray_uint8(frames: torch.Tensor) -> np.ndarray:
    """``(N, 3|1, H, W)`` float in [0, 1] → ``(N, H, W)`` uint8 grey (BT.601 via OpenCV)."""
    x = frames.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    levels = torch.floor(x * 255.0 + 0.5).to(torch.uint8).numpy()  # as fvr_bench.video.as_uint8
    if levels.shape[1] == 1:
        return np.ascontiguousarray(levels[:, 0])
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY) for f in levels])


class FlowBackend(DeclaresFiles):
    """Base of the flow backends: ``backend(first, second) -> (N, 2, H, W)`` (module docstring)."""

    name: ClassVar[str] = ""

    def __call__(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        _check_pair(first, second)
        return self.flow(first, second)

    def flow(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Everything that changes the flow (goes into a metric's provenance)."""
        return {"backend": self.name}

    def version(self) -> str:
        return f"opencv-{cv2.__version__}"

    def pretrained_files(self) -> PretrainedFiles:
        """The registry files this backend needs (none for the OpenCV backends)."""
        return PretrainedFiles()


class _OpenCVFlow(FlowBackend):
    """Shared loop of the OpenCV backends: one grey uint8 pair at a time, on the CPU."""

    def flow(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        a, b = to_gray_uint8(first), to_gray_uint8(second)
        flows = np.stack([self.pair(x, y) for x, y in zip(a, b)]) if len(a) else np.zeros((0, *a.shape[1:], 2), np.float32)
        # (N, H, W, 2) → (N, 2, H, W)
        return torch.from_numpy(np.ascontiguousarray(flows.transpose(0, 3, 1, 2), dtype=np.float32)).to(first.device)

    def pair(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class DISFlow(_OpenCVFlow):
    """OpenCV DIS optical flow; ``preset`` in ``DIS_PRESETS`` (default ``medium``)."""

    name: ClassVar[str] = "dis"

    def __init__(self, preset: str = "medium") -> None:
        if preset not in DIS_PRESETS:
            raise ConfigError(f"flow backend dis: preset must be one of {tuple(DIS_PRESETS)}, got {preset!r}")
        self.preset = preset
        self._dis = None

    def pair(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        if max(first.shape) < 12:
            raise ValueError(f"flow backend dis: frames of {first.shape[1]}x{first.shape[0]} are too small (a side must be >= 12)")
        if self._dis is None:  # one instance, reused: creation allocates the pyramids
            self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.preset])
        return self._dis.calc(first, second, None)

    def settings(self) -> dict[str, Any]:
        return {"backend": self.name, "preset": self.preset, "input": "gray_uint8_bt601"}

    def __getstate__(self) -> dict[str, Any]:  # cv2 objects do not pickle (metric copies, DDP)
        return {**self.__dict__, "_dis": None}


class FarnebackFlow(_OpenCVFlow):
    """OpenCV Farneback dense flow with :data:`FARNEBACK_DEFAULTS` unless overridden."""

    name: ClassVar[str] = "farneback"

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(FARNEBACK_DEFAULTS)
        if unknown:
            raise ConfigError(f"flow backend farneback: unknown parameter(s) {sorted(unknown)}; known: {sorted(FARNEBACK_DEFAULTS)}")
        self.params = {**FARNEBACK_DEFAULTS, **params}

    def pair(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        p = self.params
        return cv2.calcOpticalFlowFarneback(
            first, second, None, p["pyr_scale"], int(p["levels"]), int(p["winsize"]), int(p["iterations"]),
            int(p["poly_n"]), p["poly_sigma"], int(p["flags"]),
        )

    def settings(self) -> dict[str, Any]:
        return {"backend": self.name, **self.params, "input": "gray_uint8_bt601"}


def pad_to_multiple(images: torch.Tensor, multiple: int = 8) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Replicate-pad ``(N, C, H, W)`` to multiples of ``multiple``, split evenly (extra pixel
    at the bottom/right), as RAFT's ``InputPadder`` in "sintel" mode. Returns the padded
    tensor and ``(left, right, top, bottom)``."""
    height, width = images.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    if pad_h or pad_w:
        images = F.pad(images, pad, mode="replicate")
    return images, pad


class RAFTFlow(FlowBackend):
    """torchvision RAFT-large, ``iterations`` refinement steps (default 20, EvalCrafter).

    Args:
        weights_path: explicit path of ``raft_large_C_T_SKHT_V2-ff5fadd5.pth``; otherwise
            :func:`fvr_bench.weights.locate` searches ``$FVR_BENCH_WEIGHTS``, the user cache
            and torch hub's cache. A missing file raises
            :class:`~fvr_bench.errors.WeightsMissingError` on the first call.
        random_weights: build the network with random weights (seed 0) — tests only.
        iterations: number of recurrent refinement steps; the last prediction is used.
        chunk_pairs: pairs per forward pass (memory only, not the value); None: 8 on a
            GPU, 1 on a CPU.
    """

    name: ClassVar[str] = "raft"

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        random_weights: bool = False,
        iterations: int = RAFT_ITERATIONS,
        chunk_pairs: int | None = None,
    ) -> None:
        if int(iterations) < 1:
            raise ConfigError(f"flow backend raft: iterations must be >= 1, got {iterations!r}")
        self.weights_path = None if weights_path is None else str(weights_path)
        self.random_weights = bool(random_weights)
        self.iterations = int(iterations)
        self.chunk_pairs = None if chunk_pairs is None else max(1, int(chunk_pairs))
        self._net: torch.nn.Module | None = None
        # declared once: the file (checksum-verified when loaded), named in the provenance
        # by its registry file name; hashing is not loading, provenance may come first
        self.files = PretrainedFiles({} if self.random_weights else {RAFT_WEIGHTS: self.weights_path},
                                     verify=True, label="registry")

    def pretrained_files(self) -> PretrainedFiles:
        return self.files

    def version(self) -> str:
        import torchvision

        return f"torchvision-{torchvision.__version__}"

    def settings(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": "torchvision.raft_large",
            "iterations": self.iterations,
            "input": "rgb_[-1,1]",
            "padding": "replicate_to_8_centered",
            "random_weights": self.random_weights,
        }

    def network(self, device: torch.device) -> torch.nn.Module:
        """The RAFT network on ``device``, built (and its weights loaded) on first use."""
        if self._net is None:
            from torchvision.models.optical_flow import raft_large

            if self.random_weights:
                with torch.random.fork_rng(devices=[]):  # reproducible, and the global RNG is untouched
                    torch.manual_seed(0)
                    net = raft_large(weights=None, progress=False)
            else:
                path = self.files.path(RAFT_WEIGHTS)  # WeightsMissingError names the file; sha256 checked
                net = raft_large(weights=None, progress=False)
                load_state(net, read_file(path), str(path))
            self._net = net.eval().requires_grad_(False)
        return self._net.to(device)

    @torch.no_grad()
    def flow(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        height, width = first.shape[-2:]
        if min(height, width) < RAFT_MIN_SIZE:
            # torchvision's correlation pyramid needs 1/8-resolution feature maps of >= 16
            raise ValueError(
                f"flow backend raft: frames of {width}x{height} are too small; torchvision's RAFT needs "
                f"H and W >= {RAFT_MIN_SIZE} (use flow=dis for small frames)"
            )
        net = self.network(first.device)
        chunk = self.chunk_pairs or (8 if first.is_cuda else 1)
        flows = []
        for start in range(0, first.shape[0], chunk):
            a = first[start : start + chunk].float().clamp(0.0, 1.0)
            b = second[start : start + chunk].float().clamp(0.0, 1.0)
            if a.shape[1] == 1:
                a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
            a, pad = pad_to_multiple(a * 2.0 - 1.0)
            b, _ = pad_to_multiple(b * 2.0 - 1.0)
            out = net(a.contiguous(), b.contiguous(), num_flow_updates=self.iterations)[-1]
            flows.append(out[..., pad[2] : pad[2] + height, pad[0] : pad[0] + width].float())
        if not flows:
            return torch.zeros((0, 2, height, width), dtype=torch.float32, device=first.device)
        return torch.cat(flows)

    def __getstate__(self) -> dict[str, Any]:  # never pickle the network with the metric
        return {**self.__dict__, "_net": None}


def build_flow_backend(name: str, **options: Any) -> FlowBackend:
    """A backend by name (``dis`` | ``farneback`` | ``raft``) with its options."""
    classes = {"dis": DISFlow, "farneback": FarnebackFlow, "raft": RAFTFlow}
    if name not in classes:
        raise ConfigError(f"unknown optical flow backend {name!r}; choose one of {FLOW_BACKENDS}")
    try:
        return classes[name](**options)
    except TypeError as error:
        raise ConfigError(f"flow backend {name}: {error}") from error


def video_flow(frames: torch.Tensor, backend: FlowBackend, direction: str = "forward") -> torch.Tensor:
    """Flows of the adjacent pairs of a clip.

    ``frames``: ``(…, T, C, H, W)`` float in [0, 1] → ``(…, T − 1, 2, H, W)`` float32 in
    pixels. ``direction="forward"``: entry t is the flow t → t+1 on frame t's grid;
    ``"backward"``: the flow t+1 → t on frame t+1's grid.
    """
    if frames.ndim < 4 or frames.shape[-4] < 2:
        raise ValueError(f"optical flow of a clip needs (…, T >= 2, C, H, W) frames, got {tuple(frames.shape)}")
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    lead = frames.shape[:-4]
    count = frames.shape[-4] - 1
    flat = frames.reshape(-1, *frames.shape[-4:])
    a = flat[:, :-1].reshape(-1, *frames.shape[-3:])
    b = flat[:, 1:].reshape(-1, *frames.shape[-3:])
    flow = backend(a, b) if direction == "forward" else backend(b, a)
    return flow.reshape(*lead, count, 2, *frames.shape[-2:])


__all__ = [
    "DIS_PRESETS",
    "FARNEBACK_DEFAULTS",
    "FLOW_BACKENDS",
    "RAFT_ITERATIONS",
    "RAFT_MIN_SIZE",
    "RAFT_WEIGHTS",
    "DISFlow",
    "FarnebackFlow",
    "FlowBackend",
    "RAFTFlow",
    "build_flow_backend",
    "pad_to_multiple",
    "to_gray_uint8",
    "video_flow",
]
