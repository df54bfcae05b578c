"""insightface ``arcface_torch`` IResNet, as SVFR uses it for its identity tokens.

The module names follow insightface's ``iresnet.py`` exactly (``conv1``, ``bn1``,
``prelu``, ``layer1``..``layer4`` of :class:`IBasicBlock`, ``bn2``, ``dropout``, ``fc``,
``features``), so the released Glint360K iresnet100 (``insightface_glint360k.pth``, the
file SVFR ships) loads with ``strict=True``.

Unlike insightface's forward, :meth:`IResNet.forward` also returns layer4's output
before ``bn2``: SVFR projects that ``(N, 512, 7, 7)`` map to its 49 ID tokens.

Input: ``(N, 3, 112, 112)`` RGB normalised to [-1, 1] (``(x - 0.5) / 0.5``); the ``fc``
expects the 7×7 map that only a 112² input gives (four stride-2 stages: 112 → 7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

INPUT_SIZE = 112
MAP_SIZE = 7  # 112 / 2**4
STAGE_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5
IRESNET100_LAYERS = (3, 13, 30, 3)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution, padding 1, no bias (the only kind insightface's blocks use)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN → conv3×3 → BN → PReLU → conv3×3 (stride) → BN,
    plus the identity (or ``downsample`` when the stride or width changes).

    ``(N, inplanes, H, W)`` → ``(N, planes, H / stride, W / stride)``.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        # insightface strides the second convolution, not the first
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


def make_stage(inplanes: int, planes: int, blocks: int, stride: int = 2) -> nn.Sequential:
    """``blocks`` :class:`IBasicBlock` s; the first changes width/stride through
    ``downsample`` = (``0``: 1×1 conv with the stride, no bias; ``1``: BN)."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes, eps=BN_EPS),
        )
    layers = [IBasicBlock(inplanes, planes, stride, downsample)]
    layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class IResNet(nn.Module):
    """ArcFace IResNet (insightface ``arcface_torch``), ``layers`` blocks per stage.

    ``forward``: ``(N, 3, 112, 112)`` RGB in [-1, 1] → (embedding ``(N, num_features)``,
    not L2-normalised; layer4 map ``(N, 512, 7, 7)`` before ``bn2``).
    """

    def __init__(self, layers: Sequence[int], num_features: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"IResNet needs 4 stage depths, got {list(layers)}")
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0], eps=BN_EPS)
        self.prelu = nn.PReLU(STAGE_WIDTHS[0])
        inplanes = STAGE_WIDTHS[0]
        for index, (planes, blocks) in enumerate(zip(STAGE_WIDTHS, layers), start=1):
            setattr(self, f"layer{index}", make_stage(inplanes, planes, int(blocks)))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(STAGE_WIDTHS[-1], eps=BN_EPS)
        # not in-place (insightface's is): harmless at p=0 and keeps autograd simple
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(STAGE_WIDTHS[-1] * MAP_SIZE * MAP_SIZE, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        # insightface freezes the embedding BN's scale; kept for faithful training behaviour
        self.features.weight.requires_grad = False

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 112, 112)`` in [-1, 1] → layer4 output ``(N, 512, 7, 7)`` (before ``bn2``)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, 112, 112)`` RGB in [-1, 1] → (``(N, num_features)`` embedding,
        ``(N, 512, 7, 7)`` layer4 map before ``bn2``)."""
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"IResNet needs (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) input, got {tuple(x.shape)}")
        layer4_map = self.backbone(x)
        flat = self.dropout(torch.flatten(self.bn2(layer4_map), 1))
        return self.features(self.fc(flat)), layer4_map


def iresnet100(num_features: int = 512, dropout: float = 0.0) -> IResNet:
    """The Glint360K iresnet100 of ``insightface_glint360k.pth`` (stages 3, 13, 30, 3)."""
    return IResNet(IRESNET100_LAYERS, num_features=num_features, dropout=dropout)
