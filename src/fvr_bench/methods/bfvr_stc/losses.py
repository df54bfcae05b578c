"""BFVR-STC training losses: hinge GAN, LPIPS-VGG perceptual term, code-index cross-entropy.

Stage I (per iteration): ``L1(x̂, x) + λ_p·LPIPS(x̂, x) + λ_g·hinge_G(D(x̂)) + L_codebook + 0.1·MPR``,
λ_p = 1, λ_g = 0.4 from iteration 2001; the discriminator heads minimise
``hinge_D = mean(relu(1 − D(x))) + mean(relu(1 + D(x̂)))`` from the same iteration.
Stage II: ``CE(ℓ_S, i_S) + CE(ℓ_T, i_T) + 10·‖E_l(y) − z_q‖²`` with the indices and the
quantised latent ``z_q`` of the ground truth from the frozen stage-I network.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench import weights
from fvr_bench.metrics.perceptual import LPIPSNet, build_lpips_net
from fvr_bench.state_dicts import read_file


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−mean(D(fake))."""
    return -fake_logits.mean()


def index_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of code logits ``(B, t, h, w, K)`` against indices ``(B, t, h, w)``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))


class VideoLPIPS(nn.Module):
    """LPIPS (v0.1, VGG16) between two videos ``(B, 3, T, H, W)`` in [0, 1], mean over frames.

    The network is :func:`fvr_bench.metrics.perceptual.build_lpips_net` (frozen, eval mode);
    gradients flow to the prediction.
    """

    def __init__(self, net: LPIPSNet) -> None:
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> VideoLPIPS:
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        def frames(video: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) in [0, 1] → (B·T, 3, H, W) in [−1, 1]
            return video.transpose(1, 2).reshape(-1, video.shape[1], *video.shape[-2:]) * 2.0 - 1.0

        return self.net(frames(prediction), frames(target)).mean()


def build_perceptual_loss(pretrained: bool, lin_path: str | Path | None = None,
                          backbone_path: str | Path | None = None) -> VideoLPIPS:
    """LPIPS-VGG with the released linear layers and torchvision's VGG16, located through the
    weights registry (``lpips_vgg_lin``, ``torchvision_vgg16``; explicit paths first); seeded
    random weights when ``pretrained`` is false (tests). Files with a published checksum are verified."""
    if not pretrained:
        return VideoLPIPS(build_lpips_net("vgg", None, None))
    lin_file = weights.locate("lpips_vgg_lin", lin_path, verify=True)
    backbone_file = weights.locate("torchvision_vgg16", backbone_path, verify=True)
    lin_state, backbone_state = read_file(lin_file), read_file(backbone_file)
    return VideoLPIPS(build_lpips_net("vgg", lin_state, backbone_state))
