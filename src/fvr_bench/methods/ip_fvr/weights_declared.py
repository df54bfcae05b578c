"""Pretrained files IP-FVR loads: VEnhancer's checkpoints, the OpenCLIP ViT-H-14 text tower, the
VAEs, and the IP-FVR parts no one has released (user-trained or user-supplied).

Data only: :mod:`fvr_bench.weights` discovers every ``weights_declared`` module and reads its
``WEIGHTS``. The SVD temporal-decoder VAE is read from ``svd_xt_diffusers`` (declared by SVFR);
the identity embeddings of the image prompt and the reward use ``arcface_irse50`` and MTCNN
(declared in ``fvr_bench/faces/weights_declared.py``).
"""

from __future__ import annotations

from fvr_bench.weights import WeightFile

WEIGHTS = (
    WeightFile("venhancer_paper", "venhancer_paper.pt",
               "https://huggingface.co/jwhejwhe/VEnhancer (v1, 2024-07-28); fp32 torch pickle, ≈8 GB: base UNet "
               "(input_blocks/middle_block/output_blocks/time_embed/out) + VideoControlNet.*",
               "no licence file in Vchitect/VEnhancer; base MS-Vid2Vid-XL is cc-by-nc-nd-4.0", ("ip_fvr",)),
    WeightFile("venhancer_v2", "venhancer_v2.pt",
               "https://huggingface.co/jwhejwhe/VEnhancer (v2, 2024-09-11); same key layout as venhancer_paper.pt",
               "no licence file in Vchitect/VEnhancer; base MS-Vid2Vid-XL is cc-by-nc-nd-4.0", ("ip_fvr",)),
    WeightFile("open_clip_vit_h14_laion2b", "open_clip_pytorch_model.bin",
               "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (OpenCLIP ViT-H-14 laion2b_s32b_b79k, "
               "≈3.9 GB; only the text tower is used: VEnhancer's 77×1024 context)", "MIT", ("ip_fvr",)),
    WeightFile("sd21_vae_diffusers", "stable-diffusion-2-1-vae",
               "the vae/ folder of https://huggingface.co/stabilityai/stable-diffusion-2-1 (diffusers format), saved "
               "as a folder named stable-diffusion-2-1-vae; VEnhancer v1's VAE (option method.architecture.vae_kind=sd21)",
               "CreativeML Open RAIL++-M", ("ip_fvr",), directory=True),
    WeightFile("ip_fvr_image_prompt", "ip_fvr_image_prompt.safetensors",
               "NOT RELEASED by the IP-FVR authors: the decoupled cross-attention K/V (to_k_ip/to_v_ip of every spatial "
               "attn2) + the face-embedding projection, trained with `python -m fvr_bench train method=ip_fvr "
               "stage=image_prompt` (this project's export)", "yours", ("ip_fvr",)),
    WeightFile("face2text_attributes", "face2text_attributes.pt",
               "NOT RELEASED: a CelebA 40-attribute classifier (the paper uses MOON, Rudd et al. 2016) as TorchScript: "
               "(N, 3, 224, 224) RGB in [0, 1] → (N, 40) logits in CelebA's attribute order", "yours", ("ip_fvr",)),
    WeightFile("face2text_emotion", "face2text_emotion.pt",
               "NOT RELEASED: a FER-2013 emotion classifier (the paper uses Arriaga et al. 2017, mini-Xception) as "
               "TorchScript: (N, 1, 64, 64) grey in [0, 1] → (N, 7) logits (angry, disgust, fear, happy, sad, "
               "surprise, neutral)", "yours", ("ip_fvr",)),
)
