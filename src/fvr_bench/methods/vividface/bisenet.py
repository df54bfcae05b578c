"""BiSeNet face parser (zllrunning/face-parsing.PyTorch), 19 CelebAMask-HQ classes.

Own implementation of the released architecture; module names follow the release so its
``79999_iter.pth`` loads with ``strict=True``:

* ``cp.resnet``: ResNet-18 trunk (7×7/2 conv, BN, ReLU, 3×3/2 max-pool, four stages of two
  basic blocks, 64/128/256/512 channels); it returns the 1/8, 1/16 and 1/32 features.
* ``cp`` (context path): a global-average branch (1×1 ConvBNReLU 512→128) added to the
  attention-refined 1/32 features (``arm32``), upsampled (nearest) to 1/16 and refined by
  ``conv_head32``; that is added to the refined 1/16 features (``arm16``), upsampled to 1/8,
  ``conv_head16``. An attention refinement module is ConvBNReLU 3×3 then a channel gate
  (global average → 1×1 conv → BN → sigmoid).
* ``ffm`` (feature fusion): concat(1/8 trunk features, context) 256 → 1×1 ConvBNReLU 256 →
  squeeze-excite gate (256 → 64 → 256, ReLU, sigmoid), ``f + f·gate``.
* ``conv_out``: ConvBNReLU 3×3 256 → 256, 1×1 conv → 19 logits, bilinear upsampling
  (align_corners=True) to the input size. ``conv_out16`` / ``conv_out32`` are the release's
  auxiliary training heads: kept so the file loads, not evaluated at inference.

Input: ``(N, 3, 512, 512)`` RGB normalised with the ImageNet mean/std (the release resizes
faces to 512² bilinearly). Classes: 0 background, 1 skin, 2 l_brow, 3 r_brow, 4 l_eye,
5 r_eye, 6 eye_g, 7 l_ear, 8 r_ear, 9 ear_r, 10 nose, 11 mouth, 12 u_lip, 13 l_lip,
14 neck, 15 neck_l, 16 cloth, 17 hair, 18 hat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 19
CLASS_NAMES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
               "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")


class ConvBNReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1×1 projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if in_channels != out_channels or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1))


class ResNet18Trunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class AttentionRefinement(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3, 1, 1)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        gate = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * gate


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18Trunk()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        global_context = F.interpolate(self.conv_avg(F.adaptive_avg_pool2d(feat32, 1)), feat32.shape[2:], mode="nearest")
        up32 = self.conv_head32(F.interpolate(self.arm32(feat32) + global_context, feat16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest"))
        return feat8, up16, up32


class FeatureFusion(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, 1, 1, 0)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat + feat * gate


class SegmentationHead(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels, 3, 1, 1)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """``(N, 3, H, W)`` ImageNet-normalised RGB → ``(N, 19, H, W)`` class logits."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = SegmentationHead(256, 256, num_classes)
        self.conv_out16 = SegmentationHead(128, 64, num_classes)  # auxiliary training head (loaded, unused)
        self.conv_out32 = SegmentationHead(128, 64, num_classes)  # auxiliary training head (loaded, unused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


def build_bisenet(state: dict[str, torch.Tensor] | None, seed: int = 0) -> BiSeNet:
    """BiSeNet in eval mode with the release's weights, or seeded random weights (tests)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BiSeNet()
    if state is not None:
        # checkpoints saved from nn.DataParallel carry a "module." prefix
        state = {key.removeprefix("module."): value for key, value in state.items()}
        net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)
