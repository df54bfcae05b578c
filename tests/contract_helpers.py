"""Helpers shared by the contract suites (test_metric_contract.py, test_restorer_contract.py).

Only the stable surface of the package is used here — the config tree (``fvr_bench.config``)
and the error types — so the suites keep working while modules behind the configs move.
Frames are read and written with PIL directly, not through ``fvr_bench.video`` / ``io``.
"""

from __future__ import annotations

import pytest

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fvr_bench.config import CONF_DIR


def config_files(group: str) -> list[Path]:
    """Every ``conf/<group>/*.yaml``, sorted: a new file is picked up by the suites as is."""
    return sorted((CONF_DIR / group).glob("*.yaml"))


def read_frames(folder: Path) -> torch.Tensor:
    """The PNG frames of ``folder`` in name order → float32 ``(T, 3, H, W)`` in [0, 1]."""
    files = sorted(folder.glob("*.png"))
    assert files, f"no frames in {folder}"
    frames = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def write_frames(folder: Path, frames: torch.Tensor) -> None:
    """``(T, 3, H, W)`` in [0, 1] → ``folder/00000.png …`` (8-bit, rounded half up)."""
    folder.mkdir(parents=True, exist_ok=True)
    array = torch.floor(frames.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for index, frame in enumerate(array):
        Image.fromarray(frame).save(folder / f"{index:05d}.png")


def path_overrides(tmp: Path) -> list[str]:
    """Run-config overrides that keep every path a config may write to under ``tmp``."""
    return [
        f"paths.data_dir={tmp / 'data'}",
        f"paths.output_dir={tmp / 'outputs'}",
        f"paths.cache_dir={tmp / 'cache'}",
        "progress=false",
        "device=cpu",
    ]


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Any outgoing connection raises: nothing under test may download weights."""

    def refuse(self, address, *args, **kwargs):
        raise OSError(f"contract suite: network access to {address!r} is not allowed (no downloads)")

    original = socket.socket.connect
    socket.socket.connect = refuse
    try:
        yield
    finally:
        socket.socket.connect = original


def mark_known_bug(request, bugs: dict[tuple[str, str], str], param: str) -> None:
    """Mark the running case ``xfail(strict=True)`` when ``(test name, <param>'s file stem)``
    is in ``bugs``: fixing the bug then makes the case fail until its entry is removed."""
    params = request.node.callspec.params if hasattr(request.node, "callspec") else {}
    stem = params[param].stem if param in params else None
    reason = bugs.get((request.node.originalname, stem))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
