"""Pretrained files BFVR-STC loads (its release checkpoint, DINOv2 for the stage-I discriminator).

Data only: :mod:`fvr_bench.weights` discovers every ``weights_declared`` module and
reads its ``WEIGHTS``. The LPIPS files of its perceptual loss are the metrics' own
(``lpips_vgg_lin``, ``torchvision_vgg16``, declared in ``fvr_bench/metrics/weights_declared.py``).
"""

from __future__ import annotations

from fvr_bench.weights import TORCH_HUB, WeightFile

WEIGHTS = (
    WeightFile("bfvr_stc_official", "ckpt-bfvr.pth",
               "Dixin-Lab/BFVR-STC release checkpoint (https://github.com/Dixin-Lab/BFVR-STC, 'Download Pre-trained "
               "Models'); BasicSR layout, params_ema", "see release", ("bfvr_stc",)),
    WeightFile("dinov2_vits14", "dinov2_vits14_pretrain.pth",
               "Meta DINOv2 ViT-S/14 (facebookresearch/dinov2); BFVR-STC's stage-I discriminator features", "Apache-2.0",
               ("bfvr_stc",), url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
               library_dirs=(TORCH_HUB,)),
)
