"""ArcFace identity networks used by the face metrics (definitions only, no weights).

* :class:`IRSE50` — TreB1eN/InsightFace_Pytorch ``Backbone(50, drop_ratio, 'ir_se')``
  (also facexlib's ``recognition/arcface_arch.py``): input ``(N, 3, 112, 112)`` RGB
  normalised ``(x − 0.5) / 0.5``, output ``(N, 512)`` L2-normalised. The module names
  match the released ``model_ir_se50.pth`` so its state dict loads with ``strict=True``.
  BFVR-STC's IDS uses it on MTCNN-aligned 112² crops.
* :class:`ResNetArcFace18` — the ArcFace ResNet-18 "face" variant of ronghuaiyang's
  arcface-pytorch (``ResNetFace(IRBlock, [2, 2, 2, 2], use_se=False)``), identical to
  GFPGAN's ``ResNetArcFace(block='IRBlock', layers=[2, 2, 2, 2], use_se=False)`` and to the
  FOS benchmark's ``ResNet18_Face(use_se=False)``: input ``(N, 1, 128, 128)`` grey,
  output ``(N, 512)`` **not** normalised (``fc5`` + ``bn5``). FOS feeds grey values in
  [0, 1] (no mean/std normalisation) and measures VIDD as the L2 distance of these raw
  outputs.

:func:`load_state_dict` strips the ``module.`` prefix that ``DataParallel`` checkpoints
carry (the FOS/GFPGAN ``resnet18_110.pth`` / ``arcface_resnet18.pth`` files have it).
"""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import torch
from torch import nn

# --------------------------------------------------------------------------- IR-SE50


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.size(0), -1)


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * w


class BottleneckIR(nn.Module):
    """``bottleneck_IR`` / ``bottleneck_IR_SE`` of TreB1eN (``se=True`` adds the SE module)."""

    def __init__(self, in_channel: int, depth: int, stride: int, se: bool) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


_Block = namedtuple("_Block", ["in_channel", "depth", "stride"])


def _stage(in_channel: int, depth: int, units: int, stride: int = 2) -> list[_Block]:
    return [_Block(in_channel, depth, stride)] + [_Block(depth, depth, 1) for _ in range(units - 1)]


_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}


class IRSE50(nn.Module):
    """TreB1eN ``Backbone(num_layers, drop_ratio, mode)``; ``(N, 3, 112, 112)`` in [-1, 1] →
    ``(N, 512)`` unit vectors. ``num_layers`` ∈ {50, 100, 152}, ``mode`` ∈ {"ir", "ir_se"}."""

    input_size = 112

    def __init__(self, num_layers: int = 50, drop_ratio: float = 0.6, mode: str = "ir_se") -> None:
        super().__init__()
        if num_layers not in _UNITS or mode not in ("ir", "ir_se"):
            raise ValueError(f"IR backbone: num_layers in {sorted(_UNITS)}, mode in ('ir', 'ir_se'); got {num_layers}, {mode}")
        units = _UNITS[num_layers]
        stages = [_stage(64, 64, units[0]), _stage(64, 128, units[1]), _stage(128, 256, units[2]), _stage(256, 512, units[3])]
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512), nn.Dropout(drop_ratio), Flatten(), nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512)
        )
        self.body = nn.Sequential(
            *[BottleneckIR(b.in_channel, b.depth, b.stride, se=mode == "ir_se") for stage in stages for b in stage]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer(self.body(self.input_layer(x)))
        return x / torch.norm(x, 2, 1, True)


# --------------------------------------------------------------------------- ResNet-18 (FOS)


class IRBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 use_se: bool = True) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, inplanes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.use_se = use_se
        if use_se:
            self.se = _SEBlock(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        if self.use_se:
            out = self.se(out)
        residual = self.downsample(x) if self.downsample is not None else x
        return self.prelu(out + residual)


class _SEBlock(nn.Module):
    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction), nn.PReLU(), nn.Linear(channel // reduction, channel), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class ResNetArcFace18(nn.Module):
    """``ResNetFace(IRBlock, [2, 2, 2, 2], use_se=False)``: ``(N, 1, 128, 128)`` grey →
    ``(N, 512)`` raw embeddings (128 → maxpool 64 → 64, 32, 16, 8; ``fc5`` takes 512·8·8)."""

    input_size = 128

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), use_se: bool = False) -> None:
        super().__init__()
        self.inplanes = 64
        self.use_se = use_se
        self.conv1 = nn.Conv2d(1, 64, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn4 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc5 = nn.Linear(512 * 8 * 8, 512)
        self.bn5 = nn.BatchNorm1d(512)
        for m in self.modules():  # the reference initialisation (matters only for random-weight tests)
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [IRBlock(self.inplanes, planes, stride, downsample, use_se=self.use_se)]
        self.inplanes = planes
        layers.extend(IRBlock(self.inplanes, planes, use_se=self.use_se) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn4(x))
        return self.bn5(self.fc5(x.reshape(x.size(0), -1)))


# --------------------------------------------------------------------------- loading

NETWORKS = {"arcface_irse50": IRSE50, "arcface_r18_fos": ResNetArcFace18}


def build_network(name: str, weights: str | Path | None, random_seed: int = 0) -> nn.Module:
    """The network of registry entry ``name`` in eval mode, with the weights file loaded
    (``strict=True``), or — when ``weights`` is None — a deterministic random
    initialisation seeded with ``random_seed`` (tests exercise the code path with it)."""
    cls = NETWORKS[name]
    # fork the RNG so a random init neither depends on nor disturbs the caller's RNG state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed)
        net = cls()
    if weights is not None:
        net.load_state_dict(load_state_dict(weights), strict=True)
    return net.eval().requires_grad_(False)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict on the CPU: unwraps ``{"state_dict": …}`` / ``{"params": …}``
    and strips the ``module.`` prefix of DataParallel checkpoints."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "params_ema", "params", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
