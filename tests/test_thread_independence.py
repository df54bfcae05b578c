"""Per-clip values do not depend on the number of threads.

Every metric whose files are available offline (the fidelity, NIQE, flow, face and I3D
metrics) scores the same clip in two fresh processes, ``OMP_NUM_THREADS=1`` and ``=2``
(torch and OpenCV thread pools set to match); the values must be equal to the last bit.
The networks with user-supplied weights (LPIPS, DISTS, MUSIQ, CLIP, ArcFace, RAFT,
FasterVQA) are skipped when their files are absent, as in CI; the same mechanisms
(:mod:`fvr_bench.metrics.determinism`) apply to them. One known exception is documented
there: FasterVQA's upsampling of frames smaller than its fragment grid keeps
``F.interpolate`` so that its 8-bit truncation matches the official code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fvr_bench.metrics.determinism import bilinear_resize, fixed_order_mean

HERE = Path(__file__).resolve().parent
OFFLINE_METRICS = [
    "psnr_rgb", "psnr_y", "ssim_rgb", "ssim_y", "niqe", "niqe_skvideo",
    "ewarp", "ewarp_nr", "flow_score_dis",
    "akd_mediapipe", "akd_dlib68", "ids_dlib", "facecons_id", "sigma_ids", "tlme", "tlme_nr",
    "fvd", "fvd_per_video",
]


def probe(clip: Path, threads: int) -> subprocess.Popen:
    """Start scoring ``clip`` in a fresh process with ``threads`` threads (both thread counts
    run side by side: the values must not care, and the test takes half the time)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, str(HERE / "thread_probe.py"), str(clip), *OFFLINE_METRICS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_every_offline_metric_is_bit_identical_with_1_and_2_threads(tiny_data_dir):
    clip = tiny_data_dir / "sample" / "gt" / "carphone_000"  # 9 frames of 192², a real face
    first, second = probe(clip, 1), probe(clip, 2)
    one, two = result(first), result(second)
    assert (one["threads"], two["threads"]) == (1, 2)
    computed = [m for m, value in one["values"].items() if value != "missing weights"]
    assert {"psnr_y", "ssim_rgb", "niqe", "ewarp", "akd_mediapipe", "fvd"} <= set(computed)
    differing = {m: (one["values"][m], two["values"][m]) for m in OFFLINE_METRICS if one["values"][m] != two["values"][m]}
    assert not differing


def test_fixed_order_mean_ignores_the_thread_count(one_torch_thread):
    """The reduction that used to differ: SSIM-RGB of a 512² frame in the 16th digit."""
    values = torch.rand(3, 3, 502, 502, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.set_num_threads(1)
    single = fixed_order_mean(values, start_dim=1)
    torch.set_num_threads(2)
    double = fixed_order_mean(values, start_dim=1)
    torch.set_num_threads(1)
    assert torch.equal(single, double)
    torch.testing.assert_close(single, values.mean(dim=(1, 2, 3)), rtol=1e-14, atol=0)


@pytest.mark.parametrize(("shape", "size", "scale"), [
    ((2, 3, 192, 192), (224, 224), None),   # I3D's resize of a 192² clip
    ((2, 3, 61, 75), (224, 276), None),     # non-square upsampling
    ((2, 3, 100, 80), (50, 40), None),      # shrinking (no antialias)
    ((2, 3, 30, 32), (45, 48), (1.5, 1.5)),  # a given scale factor
])
def test_bilinear_resize_is_f_interpolate_without_its_thread_dependence(shape, size, scale, one_torch_thread):
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(1)
    single = bilinear_resize(images, size, scale)
    torch.set_num_threads(2)
    double = bilinear_resize(images, size, scale)
    torch.set_num_threads(1)
    assert torch.equal(single, double)
    exact = bilinear_resize(images.double(), size, scale)
    reference = torch.nn.functional.interpolate(images.double(), size=None if scale else size, scale_factor=scale,
                                                mode="bilinear", align_corners=False)
    torch.testing.assert_close(exact, reference, rtol=0, atol=1e-12)  # the same formula
    torch.testing.assert_close(single, exact.float(), rtol=0, atol=2e-7)  # float32 rounding only
