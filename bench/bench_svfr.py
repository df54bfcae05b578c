"""SVFR inference cost at paper scale: SVD-xt UNet (12 input channels) + temporal-decoder VAE, one 81×512² clip.

    python bench/bench_svfr.py             # GPU: paper-size networks, random weights
    python bench/bench_svfr.py --tiny      # CPU smoke check with the test-size networks (conf/method/svfr_tiny.yaml)

Compute does not depend on weight values, so random weights give the times a user with the
release pays. The whole two-pass ``restore`` (pass 1: the first 16 frames, pass 2: every
frame, VAE encode/decode, ArcFace ID tokens) is timed once after a one-step warm-up, with its
peak GPU memory, for:

* ``naive``     — the official schedule as the official code runs it: fp16, one window per UNet
                  call, both guidance branches in pass 1 too (they are identical there);
* ``optimised`` — the same numbers of steps and windows: pass 1 as one branch (identical
                  result), 4 windows per UNet call, ``cudnn.benchmark``;
* ``sequential_cfg`` — ``optimised`` with the two guidance branches one after the other (memory).

The paper reports 94.60 s per video on an A100 (its length unstated); PERF.md composes plain
diffusers bf16 on an H100 at ≈40.7 s for 30 steps × 6 windows × 2 branches.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from omegaconf import OmegaConf
from timing import device_name, timed, variant_header, variant_row

from fvr_bench.config import CONF_DIR
from fvr_bench.methods.svfr.networks import SVD_XT_UNET, SVD_XT_VAE
from fvr_bench.methods.svfr.restorer import SVFRRestorer, load_restorer

VARIANTS = {
    "naive": {"window_batch": 1, "skip_identical_branch": False},
    "optimised": {"window_batch": 4, "skip_identical_branch": True},
    "sequential_cfg": {"window_batch": 4, "skip_identical_branch": True, "sequential_cfg": True},
}
SVD_XT_SCHEDULER = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "svfr_tiny.yaml").architecture.scheduler)


def centred_points(image: np.ndarray) -> np.ndarray:
    """A stand-in for the face detector (random weights generate no face): the ID path still runs."""
    h, w = image.shape[:2]
    return np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * [w, h]


def build(tiny: bool, device: torch.device, restore: dict) -> SVFRRestorer:
    if tiny:
        tiny_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "svfr_tiny.yaml"))
        architecture, restore = tiny_cfg["architecture"], {**tiny_cfg["restore"], **restore}
    else:
        architecture = {"unet": SVD_XT_UNET, "vae": SVD_XT_VAE, "scheduler": SVD_XT_SCHEDULER, "arcface_layers": [3, 13, 30, 3]}
    dtype = "float32" if device.type == "cpu" else "float16"
    with torch.device(device):  # build 1.5 B parameters where they will live
        restorer = load_restorer(architecture, restore, allow_random_weights=True, dtype=dtype, vae_dtype=dtype)
    restorer.identity.detector = centred_points
    return restorer.to(device)


def measure(restorer: SVFRRestorer, clip: torch.Tensor) -> tuple[float, float | None, torch.Tensor]:
    device = next(restorer.unet.parameters()).device
    return timed(lambda: restorer.restore_video(clip, ("bfr",), None, "bench"), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="test-size networks (CPU smoke check)")
    parser.add_argument("--frames", type=int, default=None, help="clip length (default 81; 9 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="pass-2 steps (default 30; pass 1: 50, as the official code)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type == "cpu"
    frames = args.frames or (9 if tiny else 81)
    size = 32 if tiny else 512
    steps = {} if tiny else {"steps": args.steps or 30, "first_pass_steps": 50}
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    scale = "tiny test-size" if tiny else "paper-size (SVD-xt UNet, 12 input channels + SVD-xt VAE + iresnet100)"
    print(f"device: {device_name(device)}; torch {torch.__version__}; {scale} networks, random weights; clip {frames}×{size}²")
    clip = torch.rand(frames, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    results = {}
    print(variant_header(16))
    for variant in variants:
        torch.backends.cudnn.benchmark = variant != "naive"
        restorer = build(tiny, device, {**steps, **VARIANTS[variant]})
        # warm-up on the same shapes (kernel selection, allocator), one step per pass
        warm = build(tiny, device, {**steps, "steps": 1, "first_pass_steps": 1, **VARIANTS[variant]})
        measure(warm, clip)
        del warm
        seconds, peak, out = measure(restorer, clip)
        if out.shape != clip.shape or not torch.isfinite(out).all():
            raise RuntimeError(f"{variant}: restore returned {tuple(out.shape)} / non-finite values")
        results[variant] = seconds
        print(variant_row(variant, seconds, frames, peak, results.get("naive"), 16))
        del restorer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = False


if __name__ == "__main__":
    main()
