"""BFVR-STC inference: seconds and peak memory per clip, naive vs optimised, fp32 vs bf16.

    python bench/bench_bfvr_stc.py                 # paper scale, 24×512² clip (needs a GPU)
    python bench/bench_bfvr_stc.py --tiny          # tiny config, 8×32² on CPU (smoke check)
    python bench/bench_bfvr_stc.py --frames 48     # longer clip: overlapping 24-frame windows

Random weights: the compute does not depend on their values. Variants of the same network:

* ``naive``: attention as the official code writes it (explicit ``bmm`` → softmax → ``bmm``,
  which materialises the L×L matrix: 12·64·64 = 49 152 tokens at 24×512²), NCDHW layout;
* ``optimised``: PyTorch SDPA on contiguous q/k/v (fused kernels; single head of width 256),
  channels-last-3d weights, ``cudnn.benchmark``;

each in fp32 and under bf16 autocast. One warm-up call, then the median of ``--repeats``
calls inside ``torch.inference_mode``; peak memory is ``torch.cuda.max_memory_allocated``.
The largest output difference to the naive fp32 run is printed as a correctness check.
"""

from __future__ import annotations

import argparse

import torch
from timing import device_name, median_timed

from fvr_bench.cli import compose
from fvr_bench.methods.bfvr_stc.autoencoder import set_fused_attention
from fvr_bench.methods.bfvr_stc.restorer import BFVRSTCRestorer, build_restorer


def build(tiny: bool, device: torch.device) -> BFVRSTCRestorer:
    method = compose("run", ["method=bfvr_stc_tiny" if tiny else "method=bfvr_stc"]).method
    torch.manual_seed(0)
    return build_restorer(method.architecture, method.restore).to(device).eval()


def configure(model: BFVRSTCRestorer, optimised: bool, bf16: bool) -> None:
    set_fused_attention(model, optimised)
    model.to(memory_format=torch.channels_last_3d if optimised else torch.contiguous_format)
    model.restore_settings["bf16"] = bf16
    torch.backends.cudnn.benchmark = optimised


def measure(model: BFVRSTCRestorer, clip: torch.Tensor, repeats: int) -> tuple[float, float | None, torch.Tensor]:
    """(median seconds, peak GiB or None on CPU, output) of ``model.restore(clip)``, after a warm-up."""
    with torch.inference_mode():
        seconds, peak, output = median_timed(lambda: model.restore(clip), clip.device, repeats)
    return seconds, peak, output.float().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU, 8×32² (smoke check)")
    parser.add_argument("--frames", type=int, default=None, help="clip length (default 24, tiny 8)")
    parser.add_argument("--size", type=int, default=None, help="frame side (default 512, tiny 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-naive-fp32", action="store_true", help="the L×L fp32 attention matrices need ~20 GiB")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    frames = args.frames or (8 if args.tiny else 24)
    size = args.size or (32 if args.tiny else 512)
    if device.type == "cpu" and not args.tiny:
        print("no CUDA device: paper scale on CPU is impractical; use --tiny for a smoke check")
        return

    model = build(args.tiny, device)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"device: {device_name(device)}; torch {torch.__version__}; "
          f"{'tiny' if args.tiny else 'paper-scale'} BFVR-STC ({parameters:.1f} M parameters, random weights); "
          f"clip {frames}×{size}²; window {model.restore_settings['window']}; median of {args.repeats} after one warm-up")
    clip = torch.rand(1, frames, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    variants = [("naive", False, False), ("naive", False, True), ("optimised", True, False), ("optimised", True, True)]
    if device.type == "cpu":  # bf16 autocast is a CUDA path here
        variants = [v for v in variants if not v[2]]
    elif args.skip_naive_fp32:
        variants = variants[1:]
    reference = None
    print(f"{'path':10s} {'dtype':6s} {'seconds':>9s} {'peak GiB':>9s} {'max |Δ| vs first':>18s}")
    for label, optimised, bf16 in variants:
        configure(model, optimised, bf16)
        try:
            seconds, peak, output = measure(model, clip, args.repeats)
        except torch.OutOfMemoryError:
            print(f"{label:10s} {'bf16' if bf16 else 'fp32':6s} {'out of memory':>9s}")
            torch.cuda.empty_cache()
            continue
        reference = output if reference is None else reference
        difference = (output - reference).abs().max().item()
        peak_text = f"{peak:9.2f}" if peak is not None else f"{'—':>9s}"
        print(f"{label:10s} {'bf16' if bf16 else 'fp32':6s} {seconds:9.3f} {peak_text} {difference:18.2e}")
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
