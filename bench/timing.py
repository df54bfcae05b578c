"""What the method benchmarks share: the device line and one timed call with its peak GPU memory.

Imported by the scripts next to it (``python bench/<script>.py`` puts this folder on the path).
"""

from __future__ import annotations

import platform
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
