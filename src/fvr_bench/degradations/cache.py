"""Lossless on-disk cache of degraded clips, so every method sees the same LQ bytes and
the codec runs once per (preset, seed, clip content).

An entry is keyed by everything that determines its LQ bytes (:class:`EntryKey`): the
degradation's resolved config (``Compose.key()``), the seed, the clip id (it seeds the
draws), the sha256 of the ground-truth frames *as loaded* (after the dataset's resize and
frame selection, so two datasets with a clip of the same name, or one clip at two sizes
or lengths, never share an entry) and :func:`ops_code_version` (the source of the
degradation modules and the versions of the libraries whose output they depend on).

Layout of one entry (``LQCache.path(key)``)::

    <root>/<deg_key>/seed<seed>/<clip>/<entry digest>/
        lq/00000.png …      uint8 RGB frames (lossless PNG)
        mask/00000.png …    0/255 grayscale frames, only for masked presets
        entry.json          the key, params, shapes and sha256 of the lq/mask bytes — written last

An entry is written into a hidden temporary sibling folder and moved into place with one
``os.replace``, so a killed process leaves either the complete entry or none (plus a
stray temp folder that :meth:`LQCache.load` never looks at). :meth:`load` rejects an
entry whose ``entry.json`` is missing or names another key, or disagrees with the frames
on disk (an interrupted copy, a deleted or truncated frame, an altered pixel, a frame
count that is not the GT's): it returns None and the caller recomputes and replaces it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fvr_bench.video import as_uint8

from .base import DegradedClip, jsonable, stable_hash

FORMAT_VERSION = 2
ENTRY_FILE = "entry.json"
_TEMP_MARK = ".tmp-"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def gt_digest(frames: np.ndarray) -> str:
    """sha256 of ground-truth frames as the degradation receives them: their dtype, shape
    and bytes (``(T, H, W, 3)``, float32 in [0, 1] or uint8)."""
    frames = np.ascontiguousarray(frames)
    header = f"{frames.dtype.str}{frames.shape}".encode()
    return hashlib.sha256(header + frames.tobytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def ops_code_version() -> str:
    """16 hex digits that change whenever the code producing LQ bytes may change: the
    source of every module of :mod:`fvr_bench.degradations` except this cache, and the
    versions of PyAV (it bundles FFmpeg/libx264), OpenCV and NumPy (resampling, random
    streams). A manual version constant would be forgotten once; this cannot be."""
    import av

    here = Path(__file__).resolve().parent
    sources = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
               for path in sorted(here.glob("*.py")) if path.name != Path(__file__).name}
    libraries = {"av": av.__version__, "cv2": cv2.__version__, "numpy": np.__version__}
    return stable_hash({"sources": sources, "libraries": libraries})


@dataclass(frozen=True)
class EntryKey:
    """Everything that determines one cache entry's LQ bytes."""

    degradation: str  # Compose.key(): the resolved degradation config and its version
    seed: int
    clip_id: str
    gt_sha256: str  # gt_digest of the frames as loaded
    gt_frames: int
    code: str  # ops_code_version()

    @classmethod
    def of(cls, degradation: Any, seed: int, clip_id: str, gt: np.ndarray) -> EntryKey:
        return cls(degradation.key(), int(seed), clip_id, gt_digest(gt), int(len(gt)), ops_code_version())

    @property
    def digest(self) -> str:
        return stable_hash(asdict(self))


def safe_name(clip_id: str) -> str:
    """A folder name for a clip id: kept as is when it is already safe, else sanitised
    with a short hash appended so that distinct ids never share a folder."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", clip_id).lstrip(".") or "_"
    if cleaned == clip_id and len(clip_id) <= 120:
        return clip_id
    return f"{cleaned[:100]}-{hashlib.sha256(clip_id.encode('utf-8')).hexdigest()[:10]}"


class LQCache:
    """Degraded clips under ``root``, keyed by :class:`EntryKey`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: EntryKey) -> Path:
        return self.root / key.degradation / f"seed{key.seed}" / safe_name(key.clip_id) / key.digest

    # ------------------------------------------------------------------ read

    def load(self, key: EntryKey) -> DegradedClip | None:
        """The cached clip, or None when absent, incomplete, corrupt or of another key
        (then recompute it)."""
        entry = self.path(key)
        try:
            meta = json.loads((entry / ENTRY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta.get("format") != FORMAT_VERSION or meta.get("key") != asdict(key):
            return None
        lq_shape = meta.get("lq_shape")
        if not isinstance(lq_shape, list) or not lq_shape or lq_shape[0] != key.gt_frames:
            return None
        lq = _read_frames(entry / "lq", lq_shape, color=True)
        if lq is None or _digest(lq) != meta.get("lq_sha256"):
            return None
        mask = None
        if meta.get("mask_shape") is not None:
            if meta["mask_shape"] != lq_shape[:3]:
                return None
            raw = _read_frames(entry / "mask", meta["mask_shape"], color=False)
            if raw is None:
                return None
            mask = raw > 127
            if _digest(mask) != meta.get("mask_sha256"):
                return None
        return DegradedClip(lq=lq, mask=mask, params=meta.get("params", {}))

    # ------------------------------------------------------------------ write

    def save(self, key: EntryKey, clip: DegradedClip) -> Path:
        """Write ``clip`` atomically; replaces an existing (e.g. invalid) entry. Returns its path."""
        entry = self.path(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        lq = as_uint8(np.asarray(clip.lq))
        if lq.ndim != 4 or lq.shape[-1] != 3:
            raise ValueError(f"LQCache.save: lq must be (T, H, W, 3), got {lq.shape}")
        if lq.shape[0] != key.gt_frames:
            raise ValueError(f"LQCache.save: lq has {lq.shape[0]} frames, the GT {key.gt_frames}")
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
                "key": asdict(key),
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
                if self.load(key) is None:
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return entry

    def get_or_compute(self, degradation: Any, seed: int, clip_id: str, gt: np.ndarray) -> DegradedClip:
        """The entry for (``degradation``, ``seed``, ``clip_id``, the content of ``gt``), or
        ``gt`` degraded, saved and returned. ``gt``: ``(T, H, W, 3)`` frames as loaded."""
        gt = np.asarray(gt)
        key = EntryKey.of(degradation, seed, clip_id, gt)
        cached = self.load(key)
        if cached is not None:
            return cached
        clip = degradation(gt, seed=seed, clip_id=clip_id)
        self.save(key, clip)
        return clip

    def remove_stale_temp(self, max_age_s: float = 3600.0) -> int:
        """Delete temp folders left by killed writers, older than ``max_age_s``; returns the count."""
        removed = 0
        if not self.root.exists():
            return 0
        now = time.time()
        for path in self.root.glob(f"*/seed*/*/.*{_TEMP_MARK}*"):
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
