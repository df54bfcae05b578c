"""Pretrained files VividFace loads (the Wan2.1 folder, BiSeNet face parsing).

Data only: :mod:`fvr_bench.weights` discovers every ``weights_declared`` module and
reads its ``WEIGHTS``. The DISTS files of its stage-2 loss are the metrics' own
(``dists_alpha_beta``, ``torchvision_vgg16``, declared in ``fvr_bench/metrics/weights_declared.py``).
"""

from __future__ import annotations

from fvr_bench.weights import WeightFile

WEIGHTS = (
    WeightFile("wan21_t2v_1_3b_diffusers", "Wan2.1-T2V-1.3B-Diffusers",
               "https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers (the whole folder: transformer/, vae/, "
               "text_encoder/, tokenizer/)", "Apache-2.0", ("vividface",), directory=True),
    WeightFile("bisenet_face_parsing", "79999_iter.pth",
               "zllrunning/face-parsing.PyTorch release (BiSeNet, ResNet-18, 19 CelebAMask-HQ classes)", "MIT",
               ("vividface",)),
)
