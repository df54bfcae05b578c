"""VividFace inference cost at paper scale: Wan2.1-1.3B DiT + Wan VAE, one 81×512² clip.

    python bench/bench_vividface.py                 # GPU: paper-size networks, random weights
    python bench/bench_vividface.py --tiny          # CPU smoke check with the test-size networks

Compute does not depend on weight values, so random weights give the times a user with
the released Wan weights pays. Seconds (median of ``--repeats`` after one warm-up) and peak
GPU memory are split into VAE encode / one DiT evaluation / VAE decode, for a naive path
(plain bf16, PyTorch defaults) and the optional speed-ups in the same run:

* ``benchmark``     — ``torch.backends.cudnn.benchmark = True`` (the VAE is all 3-D convolutions);
* ``compile``       — ``benchmark`` + ``torch.compile`` of the DiT (``method.restorer.compile_transformer``);
* ``channels_last`` — ``benchmark`` + the VAE in ``channels_last_3d`` memory format;
* ``tiling``        — the naive path with diffusers' spatial VAE tiling (less memory, not faster).

The DiT gets the cached empty-prompt embedding (random here), as the restorer does.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from timing import device_name, median_timed

from fvr_bench.methods.vividface.backbone import (
    WAN21_T2V_1_3B_TRANSFORMER,
    WAN21_VAE,
    decode_latents,
    encode_frames,
)
from fvr_bench.methods.vividface.restorer import VividFaceRestorer, build_restorer

TINY_TRANSFORMER = {"patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 16, "out_channels": 16,
                        "text_dim": 32, "freq_dim": 256, "ffn_dim": 32, "num_layers": 2, "cross_attn_norm": True,
                        "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 32}
TINY_VAE = {"base_dim": 3, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1, "temperal_downsample": [False, True, True]}
VARIANTS = ("naive", "benchmark", "compile", "channels_last", "tiling")


def build(tiny: bool, device: torch.device, cache: Path, variant: str) -> VividFaceRestorer:
    """A restorer with random weights: paper-size (or tiny) DiT and VAE, a random cached text embedding."""
    transformer, vae = (TINY_TRANSFORMER, TINY_VAE) if tiny else (WAN21_T2V_1_3B_TRANSFORMER, WAN21_VAE)
    text_dim, length = transformer["text_dim"], (16 if tiny else 512)
    if not cache.is_file():
        torch.save({"embedding": torch.randn(1, length, text_dim)}, cache)
    dtype = "float32" if device.type == "cpu" else "bfloat16"
    with torch.device(device):  # initialise 1.3 B parameters where they will live
        module = build_restorer(
            backbone={"transformer": transformer, "vae": vae, "max_sequence_length": length, "text_embedding_cache": str(cache)},
            allow_random_weights=True,
        )
    module.to(device).for_inference(dtype, dtype, compile_transformer=variant == "compile")
    if variant == "channels_last":
        for layer in module.vae.modules():  # only 5-D weights have a 3-D channels-last layout
            if isinstance(layer, torch.nn.Conv3d):
                layer.weight.data = layer.weight.data.to(memory_format=torch.channels_last_3d)
    if variant == "tiling":
        module.vae.enable_tiling()
    return module


@torch.inference_mode()
def bench_variant(module: VividFaceRestorer, variant: str, clip: torch.Tensor, repeats: int) -> str:
    """One table row: encode / DiT / decode / sum / the whole windowed ``restore``."""
    device = clip.device
    encode_s, encode_peak, latents = median_timed(lambda: encode_frames(module.vae, clip), device, repeats)
    dit_s, dit_peak, restored = median_timed(lambda: module.one_step(latents), device, repeats)
    decode_s, decode_peak, _ = median_timed(lambda: decode_latents(module.vae, restored), device, repeats)
    restore_s, _, out = median_timed(lambda: module.restore(clip), device, repeats)
    if out.shape != clip.shape or not torch.isfinite(out).all():
        raise RuntimeError(f"{variant}: restore returned {tuple(out.shape)} / non-finite values")
    peaks = "/".join("-" if p is None else f"{p:.1f}" for p in (encode_peak, dit_peak, decode_peak))
    return (f"{variant:14s} {encode_s:9.3f} {dit_s:8.3f} {decode_s:9.3f} {encode_s + dit_s + decode_s:8.3f} "
            f"{restore_s:12.3f}   {peaks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="test-size networks (CPU smoke check)")
    parser.add_argument("--frames", type=int, default=None, help="clip length, 1 + 4k (default 81; 9 with --tiny)")
    parser.add_argument("--size", type=int, default=None, help="frame side, multiple of 16 (default 512; 32 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frames = args.frames or (9 if args.tiny else 81)
    size = args.size or (32 if args.tiny else 512)
    if args.variants:
        variants = [v for v in args.variants.split(",") if v]
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {VARIANTS}")
    else:
        # torch.compile on a CPU needs a C++ toolchain and says nothing about GPU speed
        variants = list(VARIANTS) if device.type == "cuda" else ["naive", "channels_last"]
    scale = "tiny test-size" if args.tiny else "paper-size (Wan2.1-T2V-1.3B DiT + Wan2.1 VAE)"
    print(f"device: {device_name(device)}; torch {torch.__version__}; {scale} networks, random weights; "
          f"clip {frames}×{size}²; median of {args.repeats} after one warm-up")
    if device.type == "cpu" and not args.tiny:
        print("warning: paper-size networks on a CPU take minutes per step; use --tiny for a smoke check")

    clip = torch.rand(1, frames, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    print(f"{'variant':14s} {'encode s':>9s} {'DiT s':>8s} {'decode s':>9s} {'total s':>8s} {'restore() s':>12s}"
          f"   peak GiB enc/DiT/dec")
    with tempfile.TemporaryDirectory() as folder:
        for variant in variants:
            torch.backends.cudnn.benchmark = variant in ("benchmark", "compile", "channels_last")
            print(bench_variant(build(args.tiny, device, Path(folder) / "text.pt", variant), variant, clip, args.repeats))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = False


if __name__ == "__main__":
    main()
