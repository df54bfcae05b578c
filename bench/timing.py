"""What the method benchmarks share: the device line, timed calls with their peak GPU memory, and
the naive-vs-optimised table rows.

Imported by the scripts next to it (``python bench/<script>.py`` puts this folder on the path).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 … (CUDA 12.x)`` or ``CPU (x86_64, N threads)``."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def timed(call: Callable[[], Any], device: torch.device) -> tuple[float, float | None, Any]:
    """``(seconds, peak GiB or None on a CPU, result)`` of one ``call()``, synchronised on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return time.perf_counter() - start, peak, result


def median_timed(call: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, float | None, Any]:
    """After one warm-up ``call()`` (kernel selection, compilation, allocator): ``(median seconds of
    repeats calls, the highest peak GiB among them or None on a CPU, the last result)``."""
    result = call()
    times, peaks = [], []
    for _ in range(repeats):
        seconds, peak, result = timed(call, device)
        times.append(seconds)
        peaks.append(peak)
    return statistics.median(times), (max(peaks) if device.type == "cuda" else None), result


def variant_header(width: int) -> str:
    """The header of the one-row-per-variant table of :func:`variant_row`."""
    return f"{'variant':{width}s} {'restore s':>10s} {'frames/s':>9s} {'peak GiB':>9s} {'vs naive':>9s}"


def variant_row(variant: str, seconds: float, frames: int, peak: float | None, naive_seconds: float | None,
                width: int) -> str:
    """One variant's seconds, frames/s, peak GiB and speed-up over the naive variant (measured in the same run)."""
    ratio = f"{naive_seconds / seconds:8.2f}×" if naive_seconds is not None else "-"
    peak_text = "-" if peak is None else f"{peak:.1f}"
    return f"{variant:{width}s} {seconds:10.2f} {frames / seconds:9.2f} {peak_text:>9s} {ratio:>9s}"
