"""Scores one clip with every metric whose files are here and prints ``{id: value}`` as
JSON (values as ``repr``, set-level features as sha256). Run by
``test_thread_independence.py`` under different thread counts; not a test itself.

usage: python thread_probe.py <frame folder> <metric id> [<metric id> ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import cv2
import torch

THREADS = int(os.environ["OMP_NUM_THREADS"])
torch.set_num_threads(THREADS)
cv2.setNumThreads(THREADS)

from omegaconf import OmegaConf  # noqa: E402

from fvr_bench.config import CONF_DIR, compose  # noqa: E402
from fvr_bench.config import build  # noqa: E402
from fvr_bench.metrics.base import SetMetric  # noqa: E402
from fvr_bench.video import read_frame_folder, to_tensor  # noqa: E402


def main() -> None:
    gt = to_tensor(read_frame_folder(Path(sys.argv[1]), max_frames=5))[None]  # 5 frames: I3D loops them to 9
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))
    pred = (gt + 0.04 * noise).clamp(0.0, 1.0)
    values = {}
    for metric_id in sys.argv[2:]:
        cfg = compose("run", [])  # the metric configs interpolate run-level keys (compat)
        OmegaConf.set_struct(cfg, False)
        cfg.probe = OmegaConf.load(CONF_DIR / "metric" / f"{metric_id}.yaml")
        if "resolution" in cfg.probe:  # I3D at 112²: the same kernels and resize path, a quarter of the work
            cfg.probe.resolution = 112
        metric = build(cfg.probe, metric_id)
        if metric.missing_weights():
            values[metric_id] = "missing weights"
            continue
        target = gt if metric.needs_reference else None
        if isinstance(metric, SetMetric):
            features = metric.features(pred, target)
            values[metric_id] = {name: hashlib.sha256(array.double().numpy().tobytes()).hexdigest()
                                 for name, array in sorted(features.items())}
        else:
            values[metric_id] = repr(metric.score(pred, target).item())
    print(json.dumps({"threads": torch.get_num_threads(), "values": values}))


if __name__ == "__main__":
    main()
