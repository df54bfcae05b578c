"""IP-FVR inference cost at paper scale: VEnhancer UNet3D + video ControlNet (2.04 B parameters),
three guidance streams, one 24-frame 720² clip (one clip of F = 24: no blending needed).

    python bench/bench_ip_fvr.py            # GPU: paper-size networks, random weights
    python bench/bench_ip_fvr.py --tiny     # CPU smoke check with the test-size networks (conf/method/ip_fvr_tiny.yaml)

Compute does not depend on weight values, so random weights give the times a user with
VEnhancer's checkpoint pays. The whole ``restore`` (VAE encode, 14 solver steps × 3 streams of
ControlNet + UNet, VAE decode; SD-2.1-class VAE and a random 24-layer OpenCLIP-H text tower) is
timed once after a one-step warm-up, with its peak GPU memory, for:

* ``naive``     — VEnhancer's white padding to 720×1280 and the three streams one after the other;
* ``optimised`` — the smallest legal size (720×768 for a 720² face) and the three streams in one batch;
* ``lowmem``    — the legal size with the streams one after the other.

The paper gives no timing; VEnhancer's users report > 40 GB for 2 s of 720p (issue #4).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from omegaconf import OmegaConf
from timing import device_name, timed, variant_header, variant_row

from fvr_bench.config import CONF_DIR
from fvr_bench.methods.ip_fvr.backbone import VENHANCER_UNET
from fvr_bench.methods.ip_fvr.restorer import IPFVRRestorer, load_restorer
from fvr_bench.methods.ip_fvr.text import OPENCLIP_VIT_H_TEXT

VARIANTS = {
    "naive": {"padding": "venhancer_720x1280", "batch_streams": False},
    "optimised": {"padding": "legal", "batch_streams": True},
    "lowmem": {"padding": "legal", "batch_streams": False},
}
# SD-2.1's VAE (AutoencoderKL defaults of its vae/config.json): 8× spatial
SD21_VAE = {"class": "kl", "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
            "latent_channels": 4, "sample_size": 768}


def build(tiny: bool, device: torch.device, restore: dict) -> IPFVRRestorer:
    tiny_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "ip_fvr_tiny.yaml"))
    if tiny:
        architecture, restore = tiny_cfg["architecture"], {**tiny_cfg["restore"], **restore}
    else:
        architecture = {"unet": dict(VENHANCER_UNET), "vae": SD21_VAE, "text_encoder": dict(OPENCLIP_VIT_H_TEXT),
                        "face_embedder": "random", "image_tokens": 4}
    dtype = "float32" if device.type == "cpu" else "float16"
    with torch.device(device):
        restorer = load_restorer(architecture, restore, image_prompt="random", allow_random_weights=True, dtype=dtype,
                                 vae_dtype=dtype)
    return restorer.to(device)


def measure(restorer: IPFVRRestorer, lq: torch.Tensor, reference: torch.Tensor, size: tuple[int, int]):
    device = next(restorer.unet.parameters()).device
    return timed(lambda: restorer.restore(lq, reference=reference, out_size=size, clip_ids=["bench"]), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="test-size networks (CPU smoke check)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type == "cpu"
    frames, size = (8, 32) if tiny else (24, 720)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    scale = "tiny test-size" if tiny else "paper-size (VEnhancer UNet3D + ControlNet, OpenCLIP-H text, SD-2.1-class VAE)"
    print(f"device: {device_name(device)}; torch {torch.__version__}; {scale} networks, random weights; "
          f"clip {frames}×{size}² from a {size // 4}² LQ, 3 guidance streams")
    generator = torch.Generator().manual_seed(0)
    lq = torch.rand(1, frames, 3, size // 4, size // 4, generator=generator).to(device)
    reference = torch.rand(1, 3, 112, 112, generator=generator).to(device)
    results = {}
    print(variant_header(12))
    if tiny:
        print("(tiny smoke check: every variant at the legal size — a 720×1280 canvas takes minutes on a CPU)")
    for variant in variants:
        settings = {**VARIANTS[variant], "padding": "legal"} if tiny else dict(VARIANTS[variant])
        restorer = build(tiny, device, settings)
        warm = build(tiny, device, {**settings, "solver_mode": "normal", "steps": 1})
        measure(warm, lq, reference, (size, size))
        del warm
        seconds, peak, out = measure(restorer, lq, reference, (size, size))
        if out.shape != (1, frames, 3, size, size) or not np.isfinite(out.numpy()).all():
            raise RuntimeError(f"{variant}: restore returned {tuple(out.shape)} / non-finite values")
        results[variant] = seconds
        print(variant_row(variant, seconds, frames, peak, results.get("naive"), 12))
        del restorer
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
