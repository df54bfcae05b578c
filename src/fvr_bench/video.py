"""Reading and writing frames and videos; colour conversions.

In memory a clip is a float32 array ``(T, H, W, 3)`` in [0, 1] (numpy, at the I/O edge)
or a tensor ``(T, 3, H, W)`` (torch, everywhere else). Every reader raises
:class:`~fvr_bench.errors.DataError` naming the file and the problem.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch

from fvr_bench.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


# --------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one frame as RGB float32 ``(H, W, 3)`` in [0, 1].

    Grayscale frames are repeated to three channels, the alpha channel of RGBA frames is
    dropped (faces in VFR sets are opaque), 16-bit frames are scaled by 1/65535.
    """
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: cannot be decoded as an image (corrupt, truncated or not an image)")
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    elif image.dtype == np.float32:
        scale = 1.0
    else:
        raise DataError(f"{path}: unsupported pixel type {image.dtype} (expected 8- or 16-bit)")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.shape[2] != 3:
        raise DataError(f"{path}: {image.shape[2]} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    rgb = image[:, :, ::-1].astype(np.float32) / np.float32(scale)
    return np.ascontiguousarray(np.clip(rgb, 0.0, 1.0))


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """The image files of a frame folder in natural order (``2.png`` before ``10.png``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: frame folder does not exist")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=_natural_key)


def read_frame_folder(folder: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """Read a folder of frames as float32 ``(T, H, W, 3)`` in [0, 1]."""
    folder = Path(folder)
    files = list_frames(folder)
    if not files:
        raise DataError(f"{folder}: no frames (no files ending in {', '.join(IMAGE_SUFFIXES)})")
    if max_frames is not None:
        files = files[:max_frames]
    frames = [read_image(files[0])]
    for path in files[1:]:
        frame = read_image(path)
        if frame.shape != frames[0].shape:
            raise DataError(
                f"{path}: frame size {frame.shape[1]}x{frame.shape[0]} differs from "
                f"{files[0].name} ({frames[0].shape[1]}x{frames[0].shape[0]}) in the same clip"
            )
        frames.append(frame)
    return np.stack(frames)


def write_frame_folder(folder: str | os.PathLike, frames: np.ndarray) -> None:
    """Write uint8 ``(T, H, W, 3)`` frames as ``00000.png …`` atomically.

    The frames go to a temporary sibling folder that is renamed into place, so a killed
    process never leaves a half-written clip behind.
    """
    folder = Path(folder)
    frames = as_uint8(frames)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for index, frame in enumerate(frames):
            cv2.imwrite(str(tmp / f"{index:05d}.png"), frame[:, :, ::-1])
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- videos


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video file with PyAV as float32 ``(T, H, W, 3)`` in [0, 1] and its fps."""
    import av

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: video file does not exist")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: contains no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else 25.0
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except DataError:
        raise
    except Exception as error:  # PyAV raises a zoo of FFmpeg error types
        raise DataError(f"{path}: cannot be decoded as a video ({type(error).__name__}: {error})") from error
    if not frames:
        raise DataError(f"{path}: no decodable frames (corrupt or truncated video)")
    return np.stack(frames).astype(np.float32) / np.float32(255.0), fps


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0, lossless: bool = True) -> None:
    """Write uint8 ``(T, H, W, 3)`` RGB frames; lossless means FFV1 (``.mkv``), bit-exact RGB.

    Lossy output uses H.264 (yuv420p, CRF 18) for viewing. Written to a temporary file
    and renamed into place.
    """
    import av

    path = Path(path)
    frames = as_uint8(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    height, width = frames.shape[1:3]
    with av.open(str(tmp), mode="w") as container:
        if lossless:
            stream = container.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1001))
            stream.pix_fmt = "bgr0"
        else:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18"}
            height, width = height - height % 2, width - width % 2
        stream.width, stream.height = width, height
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), format="rgb24")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    os.replace(tmp, path)


def read_clip(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """A clip from either a frame folder or a video file, float32 ``(T, H, W, 3)``."""
    path = Path(path)
    if path.is_dir():
        return read_frame_folder(path, max_frames)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return read_video(path, max_frames)[0]
    raise DataError(f"{path}: neither a frame folder nor a video file ({', '.join(VIDEO_SUFFIXES)})")


# --------------------------------------------------------------------------- conversions


def as_uint8(frames: np.ndarray) -> np.ndarray:
    """float [0, 1] → uint8 with rounding (uint8 passes through)."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """numpy ``(T, H, W, 3)`` (uint8 or float [0, 1]) → float32 tensor ``(T, 3, H, W)``."""
    if frames.dtype == np.uint8:
        frames = frames.astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float()


def to_numpy(frames: torch.Tensor) -> np.ndarray:
    """tensor ``(T, 3, H, W)`` in [0, 1] → float32 numpy ``(T, H, W, 3)``."""
    return frames.detach().float().cpu().permute(0, 2, 3, 1).contiguous().numpy()


def rgb_to_y(rgb: torch.Tensor) -> torch.Tensor:
    """Luma of ITU-R BT.601 YCbCr, as MATLAB's ``rgb2ycbcr`` and BasicSR compute it.

    ``(..., 3, H, W)`` RGB in [0, 1] → ``(..., 1, H, W)`` Y in [16/255, 235/255].
    """
    weights = rgb.new_tensor([65.481, 128.553, 24.966]).view(3, 1, 1) / 255.0
    return (rgb * weights).sum(dim=-3, keepdim=True) + 16.0 / 255.0


def _natural_key(path: Path) -> list:
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]
