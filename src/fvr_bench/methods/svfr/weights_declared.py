"""Pretrained files SVFR loads: the SVD-xt folder and the three files of the official release.

Data only: :mod:`fvr_bench.weights` discovers every ``weights_declared`` module and reads its
``WEIGHTS``. The MTCNN files that find the 5 points of the ID crop are the faces package's
(``mtcnn_pnet`` / ``mtcnn_rnet`` / ``mtcnn_onet``, shipped in facenet-pytorch); dlib's 68-point
predictor for the training landmarks is ``dlib_shape_predictor_68``.
"""

from __future__ import annotations

from fvr_bench.weights import WeightFile

WEIGHTS = (
    WeightFile("svd_xt_diffusers", "stable-video-diffusion-img2vid-xt",
               "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt (gated) — SVFR reads vae/ "
               "(fp16 variant, ≈0.2 GB), scheduler/ and unet/config.json only; the 3 GB SVD UNet weights and the "
               "unused CLIP image encoder are not needed at inference (training starts from unet/ weights)",
               "stable-video-diffusion-community", ("svfr",), directory=True),
    WeightFile("svfr_unet", "unet.pth",
               "wangzhiyaoo/SVFR release (github.com/wangzhiyaoo/SVFR README: Google Drive; mirror "
               "huggingface.co/zsxkib/SVFR-Weights); fp16 pickle, 3.05 GB: the full SVD UNet state dict, conv_in [320, 12, 3, 3]",
               "non-commercial research use only (SVFR README; code MIT)", ("svfr",)),
    WeightFile("svfr_id_linear", "id_linear.pth",
               "wangzhiyaoo/SVFR release (github.com/wangzhiyaoo/SVFR README: Google Drive; mirror "
               "huggingface.co/zsxkib/SVFR-Weights); fp16 pickle, 1.05 MB: project1024.weight [1024, 512, 1, 1], final_norm.weight/bias [1024]",
               "non-commercial research use only (SVFR README; code MIT)", ("svfr",)),
    WeightFile("svfr_arcface_glint360k", "insightface_glint360k.pth",
               "wangzhiyaoo/SVFR release (github.com/wangzhiyaoo/SVFR README: Google Drive; mirror "
               "huggingface.co/zsxkib/SVFR-Weights); fp32 pickle, 261 MB: insightface arcface_torch iresnet100 trained on Glint360K",
               "insightface model terms: non-commercial research use", ("svfr",)),
)
