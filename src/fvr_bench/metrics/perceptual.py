"""LPIPS (Zhang et al. 2018, v0.1) and DISTS (Ding et al. 2020), own implementations.

Both are full-reference, per frame, averaged over the frames of a clip; lower is better.
Inputs are ``(B, T, 3, H, W)`` float RGB in [0, 1]; frames are scored in float32, batched
(``chunk_frames`` frames of prediction and target in one pass), on the inputs' device.

LPIPS (``lpips_alex`` / ``lpips_vgg``), exactly as the ``lpips`` package (0.1.4) computes
``LPIPS(net=…, version='0.1')(x, y, normalize=True)``:

1. frames → [−1, 1] (``2x − 1``);
2. ``ScalingLayer``: ``(x − shift) / scale`` with shift = (−0.030, −0.088, −0.188),
   scale = (0.458, 0.448, 0.450);
3. torchvision ImageNet backbone, five ReLU outputs — AlexNet ``features[0:2]``, ``[2:5]``,
   ``[5:8]``, ``[8:10]``, ``[10:12]`` (relu1…relu5, 64/192/384/256/256 channels) or VGG16
   ``features[0:4]``, ``[4:9]``, ``[9:16]``, ``[16:23]``, ``[23:30]`` (relu1_2 … relu5_3,
   64/128/256/512/512 channels);
4. each feature unit-normalised over channels, ``f / (‖f‖₂ + 1e-10)``;
5. squared difference, 1×1 convolution without bias by the learned weights of
   ``alex.pth`` / ``vgg.pth`` (keys ``lin{k}.model.1.weight``, shape ``(1, C_k, 1, 1)``),
   spatial mean, sum over the five layers.

``compat_double_normalize=True`` reproduces BFVR-STC's evaluation quirk: its frames are
already mapped to [−1, 1] and then passed with ``normalize=True``, so step 1 is applied
twice and the backbone sees ``2(2x − 1) − 1 = 4x − 3`` ∈ [−3, 1] (then the ScalingLayer).
Only for comparing with BFVR-STC's printed numbers; the default is the standard metric.

DISTS (``dists``), exactly as ``DISTS_pytorch`` (0.1, ``DISTS_pt.py``) computes
``DISTS()(x, y)`` on [0, 1] inputs (no resizing):

* VGG16 (torchvision ImageNet weights) with every max-pool replaced by an L2 pooling
  (``sqrt(conv(x², g) + 1e-12)``, ``g`` = the normalised outer product of
  ``hanning(5)[1:-1]`` = (0.5, 1, 0.5), stride 2, padding 1, per channel);
* input normalised with the ImageNet mean/std; six stages: the raw [0, 1] image (3
  channels) and relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (3+64+128+256+512+512 = 1475
  channels);
* per channel, spatial statistics: structure S1 = (2 μx μy + c1) / (μx² + μy² + c1),
  texture S2 = (2 σxy + c2) / (σx² + σy² + c2), c1 = c2 = 1e-6, with σ² the biased
  variance and σxy = E[xy] − μx μy (as the reference computes it);
* ``alpha``, ``beta`` of ``weights.pt`` (``(1, 1475, 1, 1)`` each) divided by
  ``Σα + Σβ``; DISTS = 1 − Σ_k Σ_c (α S1 + β S2).

Weights are looked up with :func:`fvr_bench.weights.locate` on first use, never at
import or construction: ``lpips_alex_lin`` / ``lpips_vgg_lin`` (the linear layers),
``torchvision_alexnet`` / ``torchvision_vgg16`` (the backbones; only the ``features.*``
entries are used, the classifier is ignored), ``dists_alpha_beta``. Explicit paths
(``lin_path``, ``backbone_path``, ``weights_path``) come first. Files with a published
checksum (torchvision's) are verified (``verify_weights``); the provenance records the
sha256 of every file used. ``pretrained=False`` builds seeded random weights — for
tests only; it is recorded in the provenance so such numbers never share a column with
real ones.

``quantize=True`` (default) first rounds frames to 8-bit levels as
:func:`fvr_bench.metrics.fidelity.quantize_8bit` does (what saving them as PNG does),
so the in-memory score equals the score of the saved frames, as in PSNR/SSIM.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench import weights
from fvr_bench.errors import ConfigError
from fvr_bench.metrics.base import ClipMetric, NetworkMetric, PretrainedFiles
from fvr_bench.metrics.fidelity import quantize_8bit
from fvr_bench.state_dicts import read_file as _load_file  # also imported by musiq, fastervqa

log = logging.getLogger(__name__)

# LPIPS v0.1 ScalingLayer: maps [-1, 1] input to ImageNet-normalised statistics
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LPIPS_EPS = 1e-10
DISTS_C1 = 1e-6
DISTS_C2 = 1e-6

# channels of the five LPIPS layers and the slice bounds into torchvision's `features`
LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
LPIPS_SLICES = {"alex": (0, 2, 5, 8, 10, 12), "vgg": (0, 4, 9, 16, 23, 30)}
LPIPS_WEIGHTS = {"alex": ("lpips_alex_lin", "torchvision_alexnet"), "vgg": ("lpips_vgg_lin", "torchvision_vgg16")}
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
VGG16_POOLS = (4, 9, 16, 23)  # indices of the max-pools DISTS replaces (the last one, 30, is unused)

# torchvision's layer lists: "M" = max-pool, int = 3×3 conv + ReLU (VGG16 config "D")
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


# --------------------------------------------------------------------------- backbones


def alexnet_features() -> nn.Sequential:
    """torchvision ``alexnet().features`` (same indices, so ``features.{i}.*`` keys load)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )  # fmt: skip


def vgg16_features() -> nn.Sequential:
    """torchvision ``vgg16().features`` (31 modules; same indices as torchvision)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers)


def _random_init(features: nn.Sequential) -> None:
    """Kaiming-normal convs, zero biases (torchvision's VGG init): keeps activations of a
    random deep net in a useful range for tests."""
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)


def load_features_state(features: nn.Sequential, state: dict[str, torch.Tensor], source: str) -> dict[str, list[str]]:
    """Load the ``features.*`` entries of a torchvision ImageNet classifier state dict.

    Every parameter of ``features`` must be present with its shape; ``classifier.*``
    (and ``avgpool``) entries are ignored — LPIPS and DISTS use the conv trunk only. Any
    other key means the file is not a torchvision checkpoint of this net and is an error.
    Returns ``{"used": [...], "ignored": [...]}`` (key names in the file).
    """
    own = features.state_dict()
    picked = {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}
    ignored = sorted(key for key in state if key.startswith(("classifier.", "avgpool.")))
    unknown = sorted(set(state) - {f"features.{k}" for k in picked} - set(ignored))
    missing = sorted(set(own) - set(picked))
    extra = sorted(set(picked) - set(own))
    if unknown or missing or extra:
        raise ConfigError(
            f"{source}: not a torchvision checkpoint of this backbone "
            f"(missing features.{missing[:4]}, unexpected {(unknown + ['features.' + k for k in extra])[:4]})"
        )
    for key, value in picked.items():
        if value.shape != own[key].shape:
            raise ConfigError(f"{source}: features.{key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    features.load_state_dict({k: v.float() for k, v in picked.items()}, strict=True)
    return {"used": sorted(f"features.{k}" for k in picked), "ignored": ignored}


# --------------------------------------------------------------------------- file checks

def verified_sha256(name: str, path: Path, verify: bool) -> str:
    """The file's sha256; with ``verify``, checked against the registry's published
    checksum (full or torchvision's 8-hex-digit prefix) when there is one."""
    return weights.check_sha256(name, path) if verify else weights.sha256_of(path)


# --------------------------------------------------------------------------- LPIPS


def normalize_channels(features: torch.Tensor, eps: float = LPIPS_EPS) -> torch.Tensor:
    """``lpips.normalize_tensor``: divide by the channel L2 norm plus ``eps`` (not inside the sqrt)."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPSNet(nn.Module):
    """The LPIPS v0.1 network: ``(N, 3, H, W)`` ×2 in [−1, 1] → ``(N,)`` distances.

    ``slices``: the five backbone stages (``slice1`` … ``slice5`` as in the ``lpips``
    package); ``lins``: five ``(1, C_k, 1, 1)`` non-negative weights.
    """

    def __init__(self, net: str) -> None:
        super().__init__()
        features = alexnet_features() if net == "alex" else vgg16_features()
        bounds = LPIPS_SLICES[net]
        self.net_name = net
        self.features = features
        self.slices = [features[bounds[k] : bounds[k + 1]] for k in range(5)]  # views sharing modules
        self.lins = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in LPIPS_CHANNELS[net]])
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        outputs = []
        for stage in self.slices:
            h = stage(h)
            outputs.append(h)  # every next stage starts with a (non in-place) pool, so h survives
        return outputs

    def per_layer(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(N, 5)``: the spatially averaged weighted distance of each layer."""
        both = self.layer_outputs(torch.cat([x, y]))
        n = x.shape[0]
        values = []
        for feats, lin in zip(both, self.lins):
            diff = (normalize_channels(feats[:n]) - normalize_channels(feats[n:])).square()
            values.append(F.conv2d(diff, lin).mean(dim=(2, 3)).reshape(n))
        return torch.stack(values, dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        layers = self.per_layer(x, y)
        total = layers[:, 0]
        for k in range(1, layers.shape[1]):  # sequential sum, as the reference adds res[l]
            total = total + layers[:, k]
        return total


def load_lpips_lins(net: LPIPSNet, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``lin{k}.model.1.weight`` (k = 0…4) of the official ``alex.pth`` / ``vgg.pth``.
    Every key must be consumed and none may be missing. Returns the keys used."""
    expected = [f"lin{k}.model.1.weight" for k in range(5)]
    missing = [k for k in expected if k not in state]
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ConfigError(f"{source}: not an LPIPS v0.1 linear-layer file (missing {missing}, unexpected {extra[:4]})")
    for key, lin in zip(expected, net.lins):
        if state[key].shape != lin.shape:
            raise ConfigError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(lin.shape)}")
        lin.data.copy_(state[key].float())
    return expected


def build_lpips_net(
    net: str, lin_state: dict[str, torch.Tensor] | None, backbone_state: dict[str, torch.Tensor] | None, seed: int = 0
) -> LPIPSNet:
    """LPIPS network in eval mode; ``None`` states → seeded random weights (tests only):
    Kaiming backbone and non-negative linear weights (the released ones are ≥ 0 too)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LPIPSNet(net)
        if backbone_state is None:
            _random_init(model.features)
        if lin_state is None:
            for lin in model.lins:
                lin.data.uniform_(0.0, 2.0 / lin.shape[1])
    if backbone_state is not None:
        load_features_state(model.features, backbone_state, f"{net} backbone")
    if lin_state is not None:
        load_lpips_lins(model, lin_state, f"lpips {net} linear layers")
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- DISTS


class L2Pool(nn.Module):
    """DISTS_pytorch's ``L2pooling(filter_size=5, stride=2)``: ``sqrt(g ⊛ x² + 1e-12)`` with a
    3×3 Hann window (``hanning(5)[1:-1]`` outer product, normalised), per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = np.hanning(5)[1:-1]
        g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
        g = g / g.sum()
        self.register_buffer("filter", g[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x.square(), self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTSNet(nn.Module):
    """DISTS: ``(N, 3, H, W)`` ×2 in [0, 1] → ``(N,)``. ``stages[0]`` … ``stages[4]`` follow
    DISTS_pytorch's ``stage1`` … ``stage5`` (the VGG16 convs with L2 pooling)."""

    def __init__(self) -> None:
        super().__init__()
        features = vgg16_features()
        self.features = features
        pools = {index: L2Pool(channels) for index, channels in zip(VGG16_POOLS, (64, 128, 256, 512))}
        self.pools = nn.ModuleList(pools.values())
        bounds = (0, 4, 9, 16, 23, 30)
        self.stages = []
        for k in range(5):
            start, stop = bounds[k], bounds[k + 1]
            layers = [pools[start]] if start in pools else []
            first = start + 1 if start in pools else start  # the max-pool is replaced, not kept
            layers += [features[i] for i in range(first, stop)]
            self.stages.append(nn.Sequential(*layers))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.alpha = nn.Parameter(torch.zeros(1, sum(DISTS_CHANNELS), 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, sum(DISTS_CHANNELS), 1, 1))

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        outputs = [x]  # stage 0 is the raw [0, 1] image, not the normalised one
        for stage in self.stages:
            h = stage(h)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        both = self.stage_outputs(torch.cat([x, y]))
        w_sum = self.alpha.sum() + self.beta.sum()
        alpha = torch.split(self.alpha / w_sum, DISTS_CHANNELS, dim=1)
        beta = torch.split(self.beta / w_sum, DISTS_CHANNELS, dim=1)
        dist1 = dist2 = 0
        for k, feats in enumerate(both):
            fx, fy = feats[:n], feats[n:]
            x_mean = fx.mean([2, 3], keepdim=True)
            y_mean = fy.mean([2, 3], keepdim=True)
            s1 = (2 * x_mean * y_mean + DISTS_C1) / (x_mean**2 + y_mean**2 + DISTS_C1)
            dist1 = dist1 + (alpha[k] * s1).sum(1, keepdim=True)
            x_var = ((fx - x_mean) ** 2).mean([2, 3], keepdim=True)
            y_var = ((fy - y_mean) ** 2).mean([2, 3], keepdim=True)
            xy_cov = (fx * fy).mean([2, 3], keepdim=True) - x_mean * y_mean
            s2 = (2 * xy_cov + DISTS_C2) / (x_var + y_var + DISTS_C2)
            dist2 = dist2 + (beta[k] * s2).sum(1, keepdim=True)
        return (1 - (dist1 + dist2)).reshape(n)


def load_dists_alpha_beta(net: DISTSNet, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``alpha`` and ``beta`` (``(1, 1475, 1, 1)``) of DISTS_pytorch's ``weights.pt``;
    exactly these two keys. Returns the keys used."""
    expected = ["alpha", "beta"]
    if sorted(state) != expected:
        raise ConfigError(f"{source}: expected exactly the keys {expected} of DISTS weights.pt, got {sorted(state)[:6]}")
    for key in expected:
        param = getattr(net, key)
        if state[key].shape != param.shape:
            raise ConfigError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(param.shape)}")
        param.data.copy_(state[key].float())
    return expected


def build_dists_net(
    alpha_beta: dict[str, torch.Tensor] | None, backbone_state: dict[str, torch.Tensor] | None, seed: int = 0
) -> DISTSNet:
    """DISTS network in eval mode; ``None`` states → seeded random weights (tests only;
    alpha/beta ~ N(0.1, 0.01) as DISTS_pytorch initialises them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DISTSNet()
        if backbone_state is None:
            _random_init(model.features)
        if alpha_beta is None:
            model.alpha.data.normal_(0.1, 0.01)
            model.beta.data.normal_(0.1, 0.01)
    if backbone_state is not None:
        load_features_state(model.features, backbone_state, "dists backbone")
    if alpha_beta is not None:
        load_dists_alpha_beta(model, alpha_beta, "dists alpha/beta")
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- metrics


class _PerceptualMetric(NetworkMetric, ClipMetric):
    """Shared plumbing: lazy network (:meth:`NetworkMetric.network`), per-device copy,
    chunked frame pairs, the pretrained files declared once (:meth:`_declare`)."""

    higher_is_better: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = True
    level: ClassVar[str] = "frame"

    def _init_common(self, pretrained: bool, seed: int, quantize: bool, chunk_frames: int | None, verify: bool) -> None:
        if chunk_frames is not None and (isinstance(chunk_frames, bool) or int(chunk_frames) < 1):
            raise ConfigError(f"{self.metric_id}: chunk_frames must be a positive integer or null, got {chunk_frames!r}")
        self.pretrained = bool(pretrained)
        self.seed = int(seed)
        self.quantize = bool(quantize)
        self.chunk_frames = None if chunk_frames is None else int(chunk_frames)
        self.verify_weights = bool(verify)
        # the networks live in a plain dict, not as submodules: Metric.to()/state_dict()/
        # set_dtype never see them; built on first use, they follow the input's device
        self._nets: dict[str, nn.Module] = {}

    def random_weights_label(self) -> str | None:
        """The provenance ``weights`` of ``pretrained=False``."""
        return f"random(seed={self.seed})"

    def _declare(self, files: dict[str, str | None], extra: dict[str, str | None] | None = None) -> None:
        """The pretrained files (``{registry name: explicit path}``) when ``pretrained``,
        plus ``extra`` files needed either way (not part of the provenance)."""
        own = dict(files) if self.pretrained else {}
        self.files = PretrainedFiles({**own, **(extra or {})}, self.verify_weights, identity=list(own),
                                     random=self.random_weights_label())

    def _on_first_build(self) -> None:
        if not self.pretrained:
            log.warning("%s: RANDOM weights (pretrained=False) — for tests only", self.metric_id)

    def _prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` → float32 in [0, 1], rounded to 8-bit levels with ``quantize``."""
        if self.quantize:
            return (quantize_8bit(frames) / 255.0).to(torch.float32)
        return frames.to(torch.float32)

    def _pairs(self, preds: torch.Tensor, target: torch.Tensor, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Apply ``score`` to chunks of frame pairs: ``(B, T, 3, H, W)`` ×2 → ``(B, T)``."""
        batch, frames = preds.shape[:2]
        flat_p = preds.reshape(batch * frames, *preds.shape[2:])
        flat_t = target.reshape(batch * frames, *target.shape[2:])
        chunk = self.chunk_frames or (16 if preds.device.type == "cuda" else 4)
        out = [
            score(self._prepare(flat_p[i : i + chunk]), self._prepare(flat_t[i : i + chunk]))
            for i in range(0, flat_p.shape[0], chunk)
        ]
        return torch.cat(out).reshape(batch, frames)


class LPIPS(_PerceptualMetric):
    """LPIPS v0.1 per frame, mean over frames; lower is better (see the module docstring).

    Input ``(B, T, 3, H, W)`` float in [0, 1] (both); output ``(B, T)`` float32 per-frame
    distances ≥ 0 (exactly 0 for identical frames). AlexNet needs frames of at least 32²,
    VGG16 of 16².

    Args:
        net: ``"alex"`` (id ``lpips_alex``, pyiqa's default) or ``"vgg"`` (id ``lpips_vgg``,
            BFVR-STC).
        compat_double_normalize: BFVR-STC's quirk — the backbone sees ``4x − 3`` ∈ [−3, 1]
            instead of ``2x − 1`` (see the module docstring). Compat only.
        quantize: round frames to 8-bit levels first.
        lin_path / backbone_path: explicit ``alex.pth``/``vgg.pth`` and torchvision
            checkpoint; otherwise looked up in the weights registry.
        pretrained: False → seeded random weights (tests only; recorded in provenance).
        seed: seed of the random weights.
        verify_weights: check files with a published checksum (torchvision's) against it.
        chunk_frames: frame pairs per pass (does not change the number); None: 4 on a
            CPU, 16 on a GPU.
    """

    metric_id: ClassVar[str] = "lpips_alex"  # the instance's id follows net

    def __init__(
        self,
        net: str = "alex",
        compat_double_normalize: bool = False,
        quantize: bool = True,
        lin_path: str | None = None,
        backbone_path: str | None = None,
        pretrained: bool = True,
        seed: int = 0,
        verify_weights: bool = True,
        chunk_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if net not in LPIPS_CHANNELS:
            raise ConfigError(f"lpips: net must be one of {sorted(LPIPS_CHANNELS)}, got {net!r}")
        self.net = net
        self.metric_id = f"lpips_{net}"
        self.compat_double_normalize = bool(compat_double_normalize)
        self._init_common(pretrained, seed, quantize, chunk_frames, verify_weights)
        lin_name, backbone_name = LPIPS_WEIGHTS[net]
        self._declare({lin_name: lin_path, backbone_name: backbone_path})

    def _build(self) -> LPIPSNet:
        if not self.pretrained:
            return build_lpips_net(self.net, None, None, self.seed)
        lin_name, backbone_name = LPIPS_WEIGHTS[self.net]
        lin = _load_file(self.files.path(lin_name))
        backbone = _load_file(self.files.path(backbone_name))
        return build_lpips_net(self.net, lin, backbone)

    def to_net_input(self, frames: torch.Tensor) -> torch.Tensor:
        """[0, 1] → what the LPIPS network is fed before its ScalingLayer: ``2x − 1``, or
        with ``compat_double_normalize`` that mapping applied twice (``4x − 3``)."""
        x = frames * 2 - 1
        if self.compat_double_normalize:
            x = x * 2 - 1
        return x

    @torch.no_grad()
    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] (both) → ``(B, T)`` float32 LPIPS."""
        assert target is not None
        net = self.network(preds.device)
        return self._pairs(preds, target, lambda x, y: net(self.to_net_input(x), self.to_net_input(y)))

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "net": self.net,
            "version": "0.1",
            "net_input_range": "[-3, 1] (BFVR-STC double normalisation)" if self.compat_double_normalize else "[-1, 1]",
            "compat_double_normalize": self.compat_double_normalize,
            "quantize": self.quantize,
        }
        if not self.pretrained:
            out["pretrained"] = False
            out["seed"] = self.seed
        return out


class DISTS(_PerceptualMetric):
    """DISTS per frame, mean over frames; lower is better (see the module docstring).

    Input ``(B, T, 3, H, W)`` float in [0, 1] (both), no resizing; output ``(B, T)``
    float32, ≈ 0 for identical frames (float rounding of σxy = E[xy] − μx μy); with the
    released non-negative alpha/beta it stays below 1 + Σβ/(Σα + Σβ) (S2 can be negative)
    and is in practice within [0, 1]. Frames need at least 16² (four L2 pools).

    Args:
        quantize: round frames to 8-bit levels first.
        weights_path / backbone_path: explicit ``weights.pt`` (alpha/beta) and torchvision
            VGG16 checkpoint; otherwise looked up in the weights registry.
        pretrained: False → seeded random weights (tests only; recorded in provenance).
        seed: seed of the random weights.
        verify_weights: check files with a published checksum (torchvision's) against it.
        chunk_frames: frame pairs per pass (does not change the number); None: 4 on a
            CPU, 16 on a GPU.
    """

    metric_id: ClassVar[str] = "dists"

    def __init__(
        self,
        quantize: bool = True,
        weights_path: str | None = None,
        backbone_path: str | None = None,
        pretrained: bool = True,
        seed: int = 0,
        verify_weights: bool = True,
        chunk_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_common(pretrained, seed, quantize, chunk_frames, verify_weights)
        self._declare({"dists_alpha_beta": weights_path, "torchvision_vgg16": backbone_path})

    def _build(self) -> DISTSNet:
        if not self.pretrained:
            return build_dists_net(None, None, self.seed)
        alpha_beta = _load_file(self.files.path("dists_alpha_beta"))
        backbone = _load_file(self.files.path("torchvision_vgg16"))
        return build_dists_net(alpha_beta, backbone)

    @torch.no_grad()
    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` in [0, 1] (both) → ``(B, T)`` float32 DISTS."""
        assert target is not None
        net = self.network(preds.device)
        return self._pairs(preds, target, net)

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"resize": False, "quantize": self.quantize, "c1": DISTS_C1, "c2": DISTS_C2}
        if not self.pretrained:
            out["pretrained"] = False
            out["seed"] = self.seed
        return out


__all__ = [
    "DISTS",
    "LPIPS",
    "DISTSNet",
    "L2Pool",
    "LPIPSNet",
    "PretrainedFiles",
    "alexnet_features",
    "build_dists_net",
    "build_lpips_net",
    "load_dists_alpha_beta",
    "load_features_state",
    "load_lpips_lins",
    "normalize_channels",
    "vgg16_features",
]
