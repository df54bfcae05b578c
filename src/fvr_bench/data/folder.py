"""Datasets laid out as folders: one clip per frame folder or per video file.

Layout of a root (GT or LQ)::

    <root>/<clip_id>/00000.png 00001.png …     a frame folder (any image type, natural order)
    <root>/<clip_id>.mp4                       or a video file (.mp4 .mov .mkv .avi .webm)
    <root>/manifest.csv                        optional: clip_id,frames,height,width,sha256

Three kinds of sets share this loader:

* paired GT + LQ roots (a set that ships its own LQ input): clip ids must match,
  frame counts must match, and the LQ frames must be no larger than the GT's with the
  same aspect ratio (to within one pixel's rounding). Any scale is accepted, integer or
  not, because the papers' own degradations draw a continuous scale (VividFace/KEEP:
  r ∈ [1, 4]) and ``data degrade`` exports their LQ at that size;
* GT only (VFHQ-test, the sample set): the evaluator degrades GT with the protocol;
* LQ only (RFV-LQ): no-reference evaluation, ``has_gt`` is False.

Manifest and checksums
----------------------
A ``manifest.csv`` (columns ``clip_id, frames, height, width, sha256``; extra columns
such as ``source`` are kept but not checked) is looked up in each root, or given
explicitly for the primary root (GT if there is one, else LQ). At ``load`` the decoded
frame count and size are checked against it: a truncated video decodes *fewer frames
without any error*, and only a known frame count catches that. ``verify()`` checks the
sha256 of every clip.

The sha256 is taken over the **decoded frames**, not over the files: the whole clip as one
C-contiguous uint8 array ``(T, H, W, 3)`` in RGB order (16-bit frames rounded to 8 bit),
before any ``max_frames`` trim or resize. That makes it independent of the PNG encoder and
its compression level, and identical for the same clip stored as a frame folder or as a
lossless video (see :func:`clip_sha256`).

Resizing
--------
``resize`` is a plain resize of every frame (no alignment, no crop), as the KEEP protocol
does for already aligned faces (``--has_aligned``: ``cv2.resize(img, (512, 512),
interpolation=cv2.INTER_LINEAR)`` in KEEP's ``inference_keep.py``). Bilinear is therefore the
default, so numbers match that protocol; ``interpolation`` accepts ``area`` (best for
shrinking), ``cubic`` and ``lanczos`` (KEEP's own VFHQ-test GT release was resized with
LANCZOS4). In a paired set the GT goes to the target size and the LQ to the target divided
by the set's scale (each side rounded to the nearest pixel), so the scale factor is preserved.
"""

from __future__ import annotations

import csv
import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch

from fvr_bench.data.base import ClipSample, VideoDataset
from fvr_bench.errors import DataError
from fvr_bench.video import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    as_uint8,
    list_frames,
    read_frame_folder,
    read_image,
    read_video,
    to_tensor,
)

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("clip_id", "frames", "height", "width", "sha256")

INTERPOLATIONS = {
    "linear": cv2.INTER_LINEAR,
    "bilinear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "nearest": cv2.INTER_NEAREST,
}

# Clip ids are matched against reference files "<identity><sep>…" (e.g. obama_003 → obama.png).
_IDENTITY_SEPARATORS = ("_", "-", "+", ".", " ")


# --------------------------------------------------------------------------- helpers


def natural_key(text: str) -> list:
    """Sort key that puts ``clip2`` before ``clip10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def clip_sha256(frames: np.ndarray) -> str:
    """sha256 of a clip's decoded frames: uint8 RGB ``(T, H, W, 3)``, C order.

    Float frames in [0, 1] are rounded to uint8 first (as :func:`fvr_bench.video.as_uint8`).
    """
    array = np.ascontiguousarray(as_uint8(frames))
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"clip_sha256 expects (T, H, W, 3) frames, got shape {array.shape}")
    return hashlib.sha256(array.tobytes()).hexdigest()


@dataclass(frozen=True)
class ManifestRow:
    """One clip of a manifest; ``extra`` keeps the columns that are not checked."""

    clip_id: str
    frames: int
    height: int | None
    width: int | None
    sha256: str | None
    extra: dict


def read_manifest(path: str | Path) -> dict[str, ManifestRow]:
    """Read ``manifest.csv`` into ``{clip_id: ManifestRow}``.

    Required columns: ``clip_id, frames``; ``height, width, sha256`` may be empty.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in ("clip_id", "frames") if c not in columns]
            if missing:
                raise DataError(
                    f"{path}: manifest lacks column(s) {', '.join(missing)} "
                    f"(expected header {','.join(MANIFEST_COLUMNS)})"
                )
            rows: dict[str, ManifestRow] = {}
            for line, record in enumerate(reader, start=2):
                clip_id = (record.get("clip_id") or "").strip()
                if not clip_id:
                    continue
                try:
                    frames = int(record["frames"])
                    height = int(record["height"]) if record.get("height") else None
                    width = int(record["width"]) if record.get("width") else None
                except ValueError as error:
                    raise DataError(f"{path}, line {line} (clip '{clip_id}'): not an integer ({error})") from error
                if clip_id in rows:
                    raise DataError(f"{path}, line {line}: clip '{clip_id}' is listed twice")
                extra = {k: v for k, v in record.items() if k not in MANIFEST_COLUMNS and k is not None}
                rows[clip_id] = ManifestRow(clip_id, frames, height, width, (record.get("sha256") or "").strip() or None, extra)
    except OSError as error:
        raise DataError(f"{path}: cannot read manifest ({error})") from error
    return rows


def write_manifest(path: str | Path, rows: Iterable[dict], columns: Sequence[str] = MANIFEST_COLUMNS) -> None:
    """Write a manifest atomically (temporary file renamed into place)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    os.replace(tmp, path)


#: A folder of this name inside a clip root holds reference faces, not a clip (used as ``ref_root``
#: when none is given).
REFERENCES_FOLDER = "references"


def scan_clips(root: Path) -> dict[str, Path]:
    """``{clip_id: path}`` for the frame folders and video files directly in ``root``
    (a ``references/`` folder is not a clip: it holds the reference faces).

    Hidden entries (``.name``: half-written temporary folders, macOS metadata) are skipped.
    Raises DataError when two entries share a clip id (``a/`` and ``a.mp4``).
    """
    clips: dict[str, Path] = {}
    for entry in root.iterdir():
        if entry.name.startswith(".") or entry.name in ("__MACOSX", REFERENCES_FOLDER):
            continue
        if entry.is_dir():
            clip_id = entry.name
        elif entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
            clip_id = entry.stem
        else:
            continue
        if clip_id in clips:
            raise DataError(
                f"{root}: clip id '{clip_id}' is ambiguous: both {clips[clip_id].name} and {entry.name}; "
                "keep one of them"
            )
        clips[clip_id] = entry
    return dict(sorted(clips.items(), key=lambda item: natural_key(item[0])))


def _as_size(resize: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``resize`` → ``(height, width)``: an int is a square side."""
    if resize is None:
        return None
    if isinstance(resize, (int, np.integer)):
        size = (int(resize), int(resize))
    else:
        values = [int(v) for v in resize]
        if len(values) != 2:
            raise DataError(f"resize must be an int or [height, width], got {list(resize)}")
        size = (values[0], values[1])
    if min(size) <= 0:
        raise DataError(f"resize must be positive, got {size}")
    return size


def _resize_frames(frames: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """float32 ``(T, H, W, 3)`` → ``(T, size[0], size[1], 3)``; a no-op at the same size."""
    if frames.shape[1:3] == size:
        return frames
    out = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=interpolation) for f in frames])
    # cubic/lanczos overshoot; keep the [0, 1] contract.
    return np.clip(out, 0.0, 1.0, out=out)


def _scaled_size(target: tuple[int, int], gt_size: tuple[int, int], lq_size: tuple[int, int]) -> tuple[int, int]:
    """The LQ size that keeps the LQ/GT scale when the GT is resized to ``target``
    (``(height, width)`` each): every side scaled by its own ratio, rounded, at least 1."""
    return tuple(max(1, round(t * lq / gt)) for t, gt, lq in zip(target, gt_size, lq_size))


def _video_header_frames(path: Path) -> int:
    """Frame count the container's header announces (0 when unknown, e.g. many .mkv)."""
    import av

    try:
        with av.open(str(path)) as container:
            return int(container.streams.video[0].frames or 0)
    except Exception:  # a broken header is reported by the decoder, not here
        return 0


def _frame_count_words(count: int) -> str:
    return f"{count} frame" + ("" if count == 1 else "s")


# --------------------------------------------------------------------------- dataset


class ClipFolderDataset(VideoDataset):
    """Clips from frame folders and/or video files under a GT root, an LQ root, or both.

    Args:
        name:          dataset id (the ``data=`` option; used in output paths).
        gt_root:       folder of GT clips, or None for an LQ-only (no-reference) set.
        lq_root:       folder of LQ clips, or None when the evaluator degrades GT.
        max_frames:    keep the first N frames of each clip (BFVR-STC: 24), None = all.
        resize:        plain resize of every frame to ``int`` (square) or ``[H, W]``; None = as stored.
        card:          the dataset card (``datasets/<name>/README.md``), named in "not found" errors.
        manifest:      ``manifest.csv`` of the primary root (GT, else LQ); default ``<root>/manifest.csv``.
        root:          alias of ``gt_root`` (``data=folder data.root=<path>``).
        ref_root:      reference face images (identity-guided methods), see :meth:`reference_path`;
                       None: ``<GT or LQ root>/references/`` when it exists.
        interpolation: resize filter: ``linear`` (KEEP's ``--has_aligned`` resize), ``area``,
                       ``cubic``, ``lanczos``, ``nearest``.
        title:         human name used in messages ("VFHQ-test"); default ``name``.
        prepare:       command that builds the set, named in "not found" errors.
        fps:           frame rate of frame folders without an ``fps`` manifest column (videos
                       report their own).

    ``load(clip_id)`` returns a :class:`ClipSample` with ``gt``/``lq`` float32 tensors
    ``(T, 3, H, W)`` in [0, 1] and ``reference`` ``(3, Hr, Wr)`` or None. Nothing is read at
    construction (configs instantiate without data); roots are scanned on first use.
    """

    def __init__(
        self,
        name: str,
        gt_root: str | Path | None = None,
        lq_root: str | Path | None = None,
        max_frames: int | None = None,
        resize: int | Sequence[int] | None = None,
        card: str | None = None,
        manifest: str | Path | None = None,
        *,
        root: str | Path | None = None,
        ref_root: str | Path | None = None,
        interpolation: str = "linear",
        title: str | None = None,
        prepare: str | None = None,
        fps: float = 25.0,
    ) -> None:
        if root is not None:
            if gt_root is not None and Path(gt_root) != Path(root):
                raise DataError(f"dataset '{name}': give either root or gt_root (root is an alias of gt_root), not both")
            gt_root = root
        if gt_root is None and lq_root is None:
            raise DataError(f"dataset '{name}': no clips: set gt_root (or root) and/or lq_root")
        if max_frames is not None and int(max_frames) < 1:
            raise DataError(f"dataset '{name}': max_frames must be >= 1, got {max_frames}")
        if interpolation not in INTERPOLATIONS:
            raise DataError(
                f"dataset '{name}': unknown interpolation '{interpolation}' (choose {', '.join(INTERPOLATIONS)})"
            )
        self.name = name
        self.title = title or name
        self.gt_root = Path(gt_root) if gt_root is not None else None
        self.lq_root = Path(lq_root) if lq_root is not None else None
        self._ref_root = Path(ref_root) if ref_root is not None else None
        self.max_frames = int(max_frames) if max_frames is not None else None
        self.size = _as_size(resize)
        self.interpolation = interpolation
        self.card = card
        self.prepare = prepare
        self.fps = float(fps)
        self.manifest_path = Path(manifest) if manifest is not None else None
        self.has_gt = self.gt_root is not None
        self._clips: dict[str, dict[str, Path]] | None = None
        self._manifests: dict[str, tuple[Path, dict[str, ManifestRow]]] | None = None

    def __repr__(self) -> str:
        return (
            f"ClipFolderDataset(name={self.name!r}, gt_root={self.gt_root}, lq_root={self.lq_root}, "
            f"max_frames={self.max_frames}, resize={self.size})"
        )

    # ------------------------------------------------------------------ scanning

    @property
    def _roots(self) -> dict[str, Path]:
        """``{"GT": root, "LQ": root}`` for the roots this set has, GT first."""
        roots = {}
        if self.gt_root is not None:
            roots["GT"] = self.gt_root
        if self.lq_root is not None:
            roots["LQ"] = self.lq_root
        return roots

    def _not_found(self, role: str, root: Path, problem: str) -> DataError:
        """The message for a missing/empty root: where it was looked for and how to get it."""
        layout = f"expected {root}/<clip_id>/00000.png … or {root}/<clip_id>.mp4"
        message = f"{self.title} {problem} at {root} ({role} clips; {layout})"
        hints = []
        if self.prepare:
            hints.append(f"build it with `{self.prepare}`")
        if self.card:
            hints.append(f"see {self.card} for how to obtain it and where to put it")
        if hints:
            message += ": " + "; ".join(hints)
        if not self.card and not self.prepare:
            message += ": check the path (data.gt_root / data.lq_root, or paths.data_dir)"
        return DataError(message)

    def _scan(self) -> dict[str, dict[str, Path]]:
        if self._clips is not None:
            return self._clips
        clips: dict[str, dict[str, Path]] = {}
        for role, root in self._roots.items():
            if not root.is_dir():
                raise self._not_found(role, root, "not found" if not root.exists() else "is not a folder")
            found = scan_clips(root)
            if not found:
                raise self._not_found(role, root, "has no clips (empty folder)")
            clips[role] = found
        if len(clips) == 2:
            gt_ids, lq_ids = set(clips["GT"]), set(clips["LQ"])
            if gt_ids != lq_ids:
                parts = []
                for role, ids, root in (("LQ", gt_ids - lq_ids, self.lq_root), ("GT", lq_ids - gt_ids, self.gt_root)):
                    if ids:
                        listed = sorted(ids, key=natural_key)
                        more = f" and {len(listed) - 10} more" if len(listed) > 10 else ""
                        parts.append(f"missing in {role} ({root}): {', '.join(listed[:10])}{more}")
                raise DataError(f"{self.title}: GT and LQ clip ids differ; " + "; ".join(parts))
        self._clips = clips
        self._load_manifests()
        return clips

    def _load_manifests(self) -> None:
        """Manifests per role; clip ids a manifest lists but the disk lacks are an error."""
        manifests: dict[str, tuple[Path, dict[str, ManifestRow]]] = {}
        primary = "GT" if self.gt_root is not None else "LQ"
        for role, root in self._roots.items():
            path = self.manifest_path if (role == primary and self.manifest_path is not None) else root / MANIFEST_NAME
            if not path.is_file():
                if role == primary and self.manifest_path is not None:
                    warnings.warn(
                        f"{self.title}: manifest {path} not found; frame counts and checksums are not checked",
                        stacklevel=3,
                    )
                continue
            rows = read_manifest(path)
            on_disk = set(self._clips[role])
            missing = sorted(set(rows) - on_disk, key=natural_key)
            if missing:
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                raise DataError(
                    f"{self.title}: {len(missing)} clip(s) listed in {path} are missing from {root}: "
                    f"{', '.join(missing[:10])}{more} (incomplete download or copy?)"
                )
            extra = sorted(on_disk - set(rows), key=natural_key)
            if extra:
                warnings.warn(
                    f"{self.title}: {len(extra)} clip(s) in {root} are not in {path} and are not checked: "
                    f"{', '.join(extra[:10])}",
                    stacklevel=3,
                )
            manifests[role] = (path, rows)
        self._manifests = manifests

    def check(self) -> None:
        """Scan the roots now: raises DataError for missing/empty roots, id mismatches, bad manifests."""
        self._scan()

    def clip_ids(self) -> list[str]:
        """Clip ids in natural order (folder names / video file stems)."""
        clips = self._scan()
        return list(clips["GT"] if "GT" in clips else clips["LQ"])

    def path(self, clip_id: str, role: str = "GT") -> Path:
        """The frame folder or video file of a clip (``role``: ``GT`` or ``LQ``)."""
        clips = self._scan()
        if role not in clips:
            raise DataError(f"{self.title} has no {role} clips")
        if clip_id not in clips[role]:
            known = list(clips[role])
            raise DataError(
                f"{self.title}: no clip '{clip_id}' in {self._roots[role]} "
                f"({len(known)} clips, e.g. {', '.join(known[:5])})"
            )
        return clips[role][clip_id]

    # ------------------------------------------------------------------ reading

    def _manifest_row(self, role: str, clip_id: str) -> tuple[ManifestRow | None, Path | None]:
        entry = (self._manifests or {}).get(role)
        if entry is None:
            return None, None
        path, rows = entry
        return rows.get(clip_id), path

    def _read(self, clip_id: str, role: str, max_frames: int | None) -> tuple[np.ndarray, float, Path]:
        """Decode one side of a clip: float32 ``(T, H, W, 3)`` in [0, 1], fps, source path.

        Checks the manifest's frame count and size, and warns when a video decodes fewer
        frames than its header announces (the signature of a truncated file).
        """
        path = self.path(clip_id, role)
        where = f"{self.title} clip '{clip_id}' ({role}, {path})"
        row, manifest = self._manifest_row(role, clip_id)
        try:
            if path.is_dir():
                files = list_frames(path)
                if not files:
                    raise DataError(
                        f"{where}: frame folder has no frames (no files ending in {', '.join(IMAGE_SUFFIXES)})"
                    )
                total = len(files)  # a frame folder's full length is known without decoding
                frames = read_frame_folder(path, max_frames)
                # frame folders carry no rate; a manifest "fps" column (the sample set has one) does
                fps = self.fps
                if row is not None and row.extra.get("fps"):
                    try:
                        fps = float(row.extra["fps"])
                    except ValueError:
                        pass
            else:
                frames, fps = read_video(path, max_frames)
                total = None
        except DataError as error:
            if str(error).startswith(where):
                raise
            raise DataError(f"{self.title} clip '{clip_id}' ({role}): {error}") from error

        decoded = len(frames)
        if row is not None:
            expected_total = row.frames
            expected = min(expected_total, max_frames) if max_frames is not None else expected_total
            if (total is not None and total != expected_total) or decoded != expected:
                got = total if total is not None and total != expected_total else decoded
                raise DataError(
                    f"{where}: {_frame_count_words(got)} but {manifest} says {expected_total} "
                    f"(truncated or incomplete file? re-download or re-extract it)"
                )
            height, width = frames.shape[1:3]
            if (row.height is not None and row.height != height) or (row.width is not None and row.width != width):
                raise DataError(
                    f"{where}: frames are {width}x{height} but {manifest} says {row.width}x{row.height} (W x H)"
                )
        elif total is None and (max_frames is None or decoded < max_frames):
            header = _video_header_frames(path)
            if header > decoded:
                warnings.warn(
                    f"{where}: decoded {decoded} frames but the file header announces {header}; "
                    "the file may be truncated",
                    stacklevel=3,
                )
        return frames, fps, path

    def load(self, clip_id: str) -> ClipSample:
        """Read one clip: ``gt``/``lq`` float32 tensors ``(T, 3, H, W)`` in [0, 1].

        Raises DataError naming the clip and the file for every problem: no frames,
        undecodable or truncated files, frames of different sizes, GT/LQ frame-count or
        size mismatch, manifest mismatch, missing reference image.
        """
        self._scan()
        gt = lq = None
        fps = self.fps
        sources = []
        if self.gt_root is not None:
            gt, fps, gt_path = self._read(clip_id, "GT", self.max_frames)
            sources.append(str(gt_path))
        if self.lq_root is not None:
            lq, lq_fps, lq_path = self._read(clip_id, "LQ", self.max_frames)
            sources.append(str(lq_path))
            if gt is None:
                fps = lq_fps

        if gt is not None and lq is not None:
            self._check_pair(clip_id, gt, lq, gt_path, lq_path)

        if self.size is not None:
            flag = INTERPOLATIONS[self.interpolation]
            if gt is not None:
                if lq is not None:
                    lq = _resize_frames(lq, _scaled_size(self.size, gt.shape[1:3], lq.shape[1:3]), flag)
                gt = _resize_frames(gt, self.size, flag)
            else:
                lq = _resize_frames(lq, self.size, flag)

        reference = self.load_reference(clip_id) if self.ref_root is not None else None
        return ClipSample(
            clip_id=clip_id,
            gt=to_tensor(gt) if gt is not None else None,
            lq=to_tensor(lq) if lq is not None else None,
            reference=reference,
            fps=float(fps),
            source=" | ".join(sources),
        )

    def _check_pair(self, clip_id: str, gt: np.ndarray, lq: np.ndarray, gt_path: Path, lq_path: Path) -> None:
        """GT/LQ must have the same frame count; the LQ is at most the GT size, with the GT's
        aspect ratio up to rounding (``round(gw·lh/gh)`` within one pixel of ``lw``)."""
        where = f"{self.title} clip '{clip_id}' (GT {gt_path}, LQ {lq_path})"
        if len(gt) != len(lq):
            raise DataError(f"{where}: GT has {_frame_count_words(len(gt))}, LQ has {len(lq)}")
        (gh, gw), (lh, lw) = gt.shape[1:3], lq.shape[1:3]
        if lh > gh or lw > gw or abs(gw * lh / gh - lw) > 1.0 or abs(gh * lw / gw - lh) > 1.0:
            raise DataError(
                f"{where}: LQ frames are {lw}x{lh}, GT frames {gw}x{gh} (W x H); the LQ must be the GT size "
                "or smaller with the same aspect ratio (a downscaled GT)"
            )

    # ------------------------------------------------------------------ references

    @property
    def ref_root(self) -> Path | None:
        """``ref_root`` as given, else a ``references/`` folder inside the GT (or LQ) root when
        there is one (looked up on use: nothing is read at construction)."""
        if self._ref_root is not None:
            return self._ref_root
        primary = self.gt_root if self.gt_root is not None else self.lq_root
        inside = primary / REFERENCES_FOLDER if primary is not None else None
        return inside if inside is not None and inside.is_dir() else None

    def reference_path(self, clip_id: str) -> Path:
        """The reference image of a clip, looked up in ``ref_root`` in this order:

        1. ``<ref_root>/<clip_id>.<image ext>`` (one image per clip);
        2. ``<ref_root>/<clip_id>/`` → its first image in natural order;
        3. ``<ref_root>/<identity>.<image ext>`` where ``clip_id`` starts with ``<identity>``
           followed by ``_ - + .`` or a space (one image per identity; the longest match wins).
        """
        if self.ref_root is None:
            raise DataError(f"{self.title}: no ref_root configured (clip '{clip_id}' needs a reference image)")
        root = self.ref_root
        if not root.is_dir():
            raise DataError(f"{self.title} clip '{clip_id}': reference folder {root} not found")
        images = {p.stem: p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
        if clip_id in images:
            return images[clip_id]
        folder = root / clip_id
        if folder.is_dir():
            files = list_frames(folder)
            if files:
                return files[0]
        matches = [
            stem for stem in images
            if clip_id.startswith(stem) and len(clip_id) > len(stem) and clip_id[len(stem)] in _IDENTITY_SEPARATORS
        ]
        if matches:
            return images[max(matches, key=len)]
        raise DataError(
            f"{self.title} clip '{clip_id}': no reference image in {root} "
            f"(looked for {clip_id}.png/.jpg…, {clip_id}/, or <identity>.png with '{clip_id}' = '<identity>_…')"
        )

    def load_reference(self, clip_id: str) -> torch.Tensor:
        """Reference face image as float32 ``(3, Hr, Wr)`` in [0, 1]."""
        path = self.reference_path(clip_id)
        try:
            image = read_image(path)
        except DataError as error:
            raise DataError(f"{self.title} clip '{clip_id}' (reference): {error}") from error
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

    # ------------------------------------------------------------------ checksums

    def verify(self, clip_ids: Sequence[str] | None = None, raise_on_error: bool = True, progress: bool = False) -> dict[str, str]:
        """Check every clip's sha256 (see :func:`clip_sha256`) against the manifest.

        Reads each whole clip (all frames, no resize). Returns ``{"<role>/<clip_id>": "ok" |
        problem}``; with ``raise_on_error`` a DataError lists every clip that failed.
        Raises DataError when no root has a manifest with sha256 values.
        """
        self._scan()
        ids = list(clip_ids) if clip_ids is not None else self.clip_ids()
        report: dict[str, str] = {}
        checked_roles = list(self._manifests or {})
        if not checked_roles:
            raise DataError(f"{self.title}: no manifest.csv found, nothing to verify")
        todo = [(role, clip_id) for role in checked_roles for clip_id in ids]
        if progress:
            from tqdm import tqdm

            todo = tqdm(todo, desc=f"verifying {self.title}", unit="clip")
        for role, clip_id in todo:
            key = f"{role}/{clip_id}"
            row, manifest = self._manifest_row(role, clip_id)
            if row is None or not row.sha256:
                report[key] = f"no sha256 in {manifest}"
                continue
            try:
                frames, _, _ = self._read(clip_id, role, None)
            except DataError as error:
                report[key] = str(error)
                continue
            digest = clip_sha256(frames)
            report[key] = "ok" if digest == row.sha256 else (
                f"sha256 mismatch for {self.path(clip_id, role)}: {digest} != {row.sha256} in {manifest}"
            )
        bad = {k: v for k, v in report.items() if v != "ok"}
        if bad and raise_on_error:
            lines = "\n".join(f"  {k}: {v}" for k, v in bad.items())
            raise DataError(f"{self.title}: {len(bad)} of {len(report)} clip(s) failed verification:\n{lines}")
        return report
