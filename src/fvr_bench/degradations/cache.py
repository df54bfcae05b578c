"""Lossless on-disk cache of degraded clips, so every method sees the same LQ bytes and
the codec runs once per (preset, seed, clip).

Layout of one entry (``LQCache.path(key, seed, clip_id)``)::

    <root>/<deg_key>/seed<seed>/<clip>/
        lq/00000.png …      uint8 RGB frames (lossless PNG)
        mask/00000.png …    0/255 grayscale frames, only for masked presets
        entry.json          params, shapes and sha256 of the lq/mask bytes — written last

An entry is written into a hidden temporary sibling folder and moved into place with one
``os.replace``, so a killed process leaves either the complete entry or none (plus a
stray temp folder that :meth:`LQCache.load` never looks at). :meth:`load` also rejects an
entry whose ``entry.json`` is missing or disagrees with the frames on disk (a copy
interrupted by hand, a deleted frame, a corrupt PNG): it returns None and the caller
rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fvr_bench.video import as_uint8

from .base import DegradedClip, jsonable

FORMAT_VERSION = 1
ENTRY_FILE = "entry.json"
_TEMP_MARK = ".tmp-"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def safe_name(clip_id: str) -> str:
    """A folder name for a clip id: kept as is when it is already safe, else sanitised
    with a short hash appended so that distinct ids never share a folder."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", clip_id).lstrip(".") or "_"
    if cleaned == clip_id and len(clip_id) <= 120:
        return clip_id
    return f"{cleaned[:100]}-{hashlib.sha256(clip_id.encode('utf-8')).hexdigest()[:10]}"


class LQCache:
    """Degraded clips under ``root``, keyed by (``Compose.key()``, seed, clip id)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, deg_key: str, seed: int, clip_id: str) -> Path:
        return self.root / deg_key / f"seed{int(seed)}" / safe_name(clip_id)

    # ------------------------------------------------------------------ read

    def load(self, deg_key: str, seed: int, clip_id: str) -> DegradedClip | None:
        """The cached clip, or None when absent or incomplete/corrupt (then rebuild it)."""
        entry = self.path(deg_key, seed, clip_id)
        try:
            meta = json.loads((entry / ENTRY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (
            meta.get("format") != FORMAT_VERSION
            or meta.get("deg_key") != deg_key
            or meta.get("seed") != int(seed)
            or meta.get("clip_id") != clip_id
        ):
            return None
        lq = _read_frames(entry / "lq", meta.get("lq_shape"), color=True)
        if lq is None or _digest(lq) != meta.get("lq_sha256"):
            return None
        mask = None
        if meta.get("mask_shape") is not None:
            raw = _read_frames(entry / "mask", meta["mask_shape"], color=False)
            if raw is None:
                return None
            mask = raw > 127
            if _digest(mask) != meta.get("mask_sha256"):
                return None
        return DegradedClip(lq=lq, mask=mask, params=meta.get("params", {}))

    # ------------------------------------------------------------------ write

    def save(self, deg_key: str, seed: int, clip_id: str, clip: DegradedClip) -> Path:
        """Write ``clip`` atomically; replaces an existing (e.g. invalid) entry. Returns its path."""
        entry = self.path(deg_key, seed, clip_id)
        entry.parent.mkdir(parents=True, exist_ok=True)
        lq = as_uint8(np.asarray(clip.lq))
        if lq.ndim != 4 or lq.shape[-1] != 3:
            raise ValueError(f"LQCache.save: lq must be (T, H, W, 3), got {lq.shape}")
        mask = None if clip.mask is None else np.asarray(clip.mask, dtype=np.bool_)
        if mask is not None and mask.shape != lq.shape[:3]:
            raise ValueError(f"LQCache.save: mask {mask.shape} does not match lq {lq.shape}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}{_TEMP_MARK}", dir=entry.parent))
        try:
            _write_frames(tmp / "lq", lq[..., ::-1])  # RGB → BGR for OpenCV
            if mask is not None:
                _write_frames(tmp / "mask", mask.astype(np.uint8) * 255)
            meta = {
                "format": FORMAT_VERSION,
                "deg_key": deg_key,
                "seed": int(seed),
                "clip_id": clip_id,
                "lq_shape": list(lq.shape),
                "lq_sha256": _digest(lq),
                "mask_shape": None if mask is None else list(mask.shape),
                "mask_sha256": None if mask is None else _digest(mask),
                "params": jsonable(clip.params),
            }
            with open(tmp / ENTRY_FILE, "w", encoding="utf-8") as handle:
                json.dump(meta, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            if entry.exists():
                # os.replace cannot overwrite a non-empty folder: move the old one aside
                # first (itself atomic), then drop it.
                old = Path(tempfile.mkdtemp(prefix=f".{entry.name}{_TEMP_MARK}old-", dir=entry.parent))
                os.replace(entry, old / "entry")
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp, entry)
            except OSError:
                # Another process finished the same entry in between; theirs is as good.
                if self.load(deg_key, seed, clip_id) is None:
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return entry

    def get_or_compute(
        self,
        degradation: Any,
        seed: int,
        clip_id: str,
        gt: np.ndarray | Callable[[], np.ndarray],
    ) -> DegradedClip:
        """Load the entry for ``degradation.key()``, or degrade ``gt`` (an array or a
        zero-argument loader, called only on a miss), save and return it."""
        key = degradation.key()
        cached = self.load(key, seed, clip_id)
        if cached is not None:
            return cached
        frames = gt() if callable(gt) else gt
        clip = degradation(frames, seed=seed, clip_id=clip_id)
        self.save(key, seed, clip_id, clip)
        return clip

    def remove_stale_temp(self, max_age_s: float = 3600.0) -> int:
        """Delete temp folders left by killed writers, older than ``max_age_s``; returns the count."""
        removed = 0
        if not self.root.exists():
            return 0
        now = time.time()
        for path in self.root.glob(f"*/seed*/.*{_TEMP_MARK}*"):
            try:
                if path.is_dir() and now - path.stat().st_mtime > max_age_s:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
            except OSError:
                continue
        return removed


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir()
    for index, frame in enumerate(frames):
        if not cv2.imwrite(str(folder / f"{index:05d}.png"), np.ascontiguousarray(frame)):
            raise OSError(f"cannot write {folder / f'{index:05d}.png'}")


def _read_frames(folder: Path, shape: Any, *, color: bool) -> np.ndarray | None:
    """Frames ``00000.png …`` as uint8 (RGB ``(T, H, W, 3)`` or gray ``(T, H, W)``), or None
    if any is missing or unreadable or the count/shape disagrees with ``shape``."""
    if not isinstance(shape, list) or not shape:
        return None
    frames = []
    for index in range(shape[0]):
        image = cv2.imread(str(folder / f"{index:05d}.png"), cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
        if image is None:
            return None
        frames.append(image[..., ::-1] if color else image)
    if (folder / f"{shape[0]:05d}.png").exists():
        return None
    stack = np.ascontiguousarray(np.stack(frames))
    return stack if list(stack.shape) == shape else None
