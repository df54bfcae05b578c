"""Real video compression, ``[·]_FFMPEG(crf)``: encode the clip with FFmpeg through PyAV and
decode it back.

Why each setting is what it is:

- libx264, yuv420p, CRF mode (``crf`` drawn as an integer, both ends included), encoded
  into an in-memory MP4 exactly as KEEP's and BFVR-STC's training code do.
- ``thread_count = 1``: x264's output depends on its thread count (frame threads limit the
  motion search), so "auto" threads would give different bytes on machines with
  different core counts. One thread makes the LQ clip a function of (seed, clip, config).
- ``asm=0`` (x264's C code, ``x264_asm: false``, the default): measured here, x264's SIMD
  paths are (a) not bit-exact with its C reference (its float mbtree kernels use
  approximations — AVX2 and C give different bitstreams for the same input), so the
  bytes would depend on the CPU's instruction set (AVX2 / AVX-512 / ARM NEON), and
  (b) with AVX-512 not even repeatable: the same 96×112 clip encoded 120 times in one
  process gave two different bitstreams. The C path is repeatable and identical on every
  machine, at ~2.5× the encode time (≈2.4 s for 24 frames of 512², single thread).
  ``x264_asm: true`` trades that guarantee for speed.
- ``fps`` is explicit because x264's CRF rate control depends on the frame rate (at
  1 fps a 24-frame 256² clip takes about twice the bits it takes at 25 fps). KEEP and
  BFVR-STC open the stream with ``rate=1``; presets say which they use.
- Odd sizes (yuv420p needs even ones): padded to even by edge replication, cropped back.
- RGB ↔ YUV 4:2:0 is done here in NumPy (BT.601 limited range — FFmpeg's default for
  untagged yuv420p — 2×2 mean chroma downsampling, centre-sited bilinear upsampling), and
  PyAV is handed/asked for yuv420p planes. PyAV's own ``rgb24`` conversion (swscale,
  without SWS_BITEXACT) picks SIMD paths per CPU whose rounding is not specified to
  match; elementwise float64 NumPy gives the same bytes on every platform, and the
  colour handling is written down here instead of being a library default.
- ``codec: mpeg4`` is a compat mode reproducing BFVR-STC's ``do_ffmpeg_degrade``, which
  passes ``crf`` to FFmpeg's ``mpeg4`` encoder; that encoder has no CRF and ignores it, so
  the quality is set by the bit rate older PyAV put on every new stream (1024 kb/s,
  tolerance 128 kb/s; BFVR-STC pins av==12.3.0; PyAV PR #1782 later made it 0), which
  this mode sets explicitly so it does not depend on the installed PyAV. The drawn crf
  is still recorded, marked ``crf_ignored``. FFmpeg's mpeg4 encoder picks SIMD DCTs per
  CPU, so compat bytes are repeatable on one machine but not promised across machines.
- ``channel_order: bgr`` (compat): BFVR-STC converts RGB→BGR before handing frames to
  PyAV as ``rgb24`` and back after decoding, so the codec's colour matrix and chroma
  subsampling see swapped channels.
- ``input_rounding``: the frames reach the encoder as 8-bit. "round" (default) rounds to
  nearest; "floor" truncates like the papers' ``(x * 255).astype(np.uint8)``.
- ``per_frame: true`` (BFVR-STC Table 6): a CRF per frame. A stream cannot change CRF
  mid-way through PyAV, so the clip is encoded once per distinct CRF drawn (at most
  ``hi - lo + 1`` encodes) and frame t is taken from the encode at CRF_t. Every frame
  thus carries the inter-frame coding artefacts of a real video encode at its own CRF
  (encoding frames one by one would make them all intra frames instead). Only when an
  earlier per-frame resize left the frames with different sizes — which no single
  stream can hold — is each frame encoded as a one-frame video (intra only) at its CRF;
  ``params["per_frame_mode"]`` says which of the two happened.

The decoded bytes are repeatable for one FFmpeg/x264 build; another libx264 version may
encode differently, so the library version is recorded in the params (``encoder``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from fvr_bench.errors import ConfigError, DataError

from .base import Context, Op, as_range, check_choice, integer

# The bit rate older PyAV gave every new video stream (BFVR-STC pins av==12.3.0).
LEGACY_PYAV_BIT_RATE = 1024000
LEGACY_PYAV_BIT_RATE_TOLERANCE = 128000


def _encoder_version() -> str:
    import av

    libs = getattr(av, "library_versions", {}) or {}
    codec = libs.get("libavcodec")
    return f"PyAV {av.__version__}, libavcodec {'.'.join(map(str, codec)) if codec else '?'}"


def encode_decode(
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    crf: int = 23,
    fps: float = 25.0,
    preset: str = "medium",
    pix_fmt: str = "yuv420p",
    x264_asm: bool = False,
) -> np.ndarray:
    """Encode uint8 RGB ``(T, H, W, 3)`` frames into an in-memory MP4 and decode them back.

    Returns uint8 ``(T, H, W, 3)``. ``codec``: "libx264" (CRF) or "mpeg4" (crf ignored,
    legacy PyAV bit rate — see the module docstring).
    """
    import av

    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise DataError(f"encode_decode expects uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    count, height, width = frames.shape[:3]
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    planes = rgb_to_yuv420(frames)
    buffer = io.BytesIO()
    # crf goes to mpeg4 too, exactly as BFVR-STC's script passes it; FFmpeg's mpeg4 encoder
    # has no such option and silently ignores it (the compat test checks that).
    options = {"crf": str(int(crf))}
    if codec == "libx264":
        options["preset"] = preset
    if codec == "libx264" and not x264_asm:
        options["x264-params"] = "asm=0"  # repeatable, CPU-independent bytes (see module doc)
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=_rate(fps), options=options)
        stream.width, stream.height = width + pad_w, height + pad_h
        stream.pix_fmt = pix_fmt
        stream.codec_context.thread_count = 1  # determinism: x264 output depends on threads
        if codec == "libx264":
            stream.codec_context.bit_rate = 0  # pure CRF whatever PyAV's default
        else:
            stream.codec_context.bit_rate = LEGACY_PYAV_BIT_RATE
            stream.codec_context.bit_rate_tolerance = LEGACY_PYAV_BIT_RATE_TOLERANCE
        for plane in planes:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(plane, format="yuv420p")))
        container.mux(stream.encode())
    buffer.seek(0)
    decoded = []
    with av.open(buffer, mode="r", format="mp4") as container:
        for frame in container.decode(video=0):
            decoded.append(frame.to_ndarray(format="yuv420p"))
    if len(decoded) != count:
        raise DataError(f"{codec} round trip returned {len(decoded)} frames for {count} encoded")
    out = yuv420_to_rgb(np.stack(decoded))
    return np.ascontiguousarray(out[:, :height, :width])


# --------------------------------------------------------------------------- colour
# BT.601, limited ("tv") range, on the 0–255 scale. Written as explicit elementwise
# float64 arithmetic (no matmul: BLAS may fuse multiply-adds differently per CPU).


def rgb_to_yuv420(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(T, H, W, 3)`` with even H, W → PyAV yuv420p layout ``(T, 3H/2, W)``:
    the Y plane, then the U and V planes (H/2 × W/2 each) flattened row-major."""
    count, height, width = frames.shape[:3]
    rgb = frames.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    # Chroma of the 2×2 mean colour (= the 2×2 mean of full-resolution chroma: it is linear).
    mean = (rgb[:, 0::2, 0::2] + rgb[:, 1::2, 0::2] + rgb[:, 0::2, 1::2] + rgb[:, 1::2, 1::2]) * 0.25
    r, g, b = mean[..., 0], mean[..., 1], mean[..., 2]
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0

    def q(c: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(c), 0, 255).astype(np.uint8)

    flat = np.concatenate([q(y).reshape(count, -1), q(u).reshape(count, -1), q(v).reshape(count, -1)], axis=1)
    return flat.reshape(count, height * 3 // 2, width)


def yuv420_to_rgb(planes: np.ndarray) -> np.ndarray:
    """PyAV yuv420p layout ``(T, 3H/2, W)`` uint8 → RGB uint8 ``(T, H, W, 3)``."""
    count, rows, width = planes.shape
    height = rows * 2 // 3
    flat = planes.reshape(count, -1).astype(np.float64)
    size = height * width
    y = flat[:, :size].reshape(count, height, width)
    u = _up2(flat[:, size : size * 5 // 4].reshape(count, height // 2, width // 2))
    v = _up2(flat[:, size * 5 // 4 :].reshape(count, height // 2, width // 2))
    y = 1.164383561643836 * (y - 16.0)
    u = u - 128.0
    v = v - 128.0
    r = y + 1.596026785714286 * v
    g = y - 0.391762290094914 * u - 0.812967647237771 * v
    b = y + 2.017232142857143 * u
    rgb = np.stack([r, g, b], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _up2(c: np.ndarray) -> np.ndarray:
    """2× bilinear upsampling of ``(T, h, w)`` chroma, centre-sited, edges replicated."""

    def along(a: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        prev = np.take(a, np.r_[0, np.arange(n - 1)], axis=axis)
        nxt = np.take(a, np.r_[np.arange(1, n), n - 1], axis=axis)
        even = 0.75 * a + 0.25 * prev
        odd = 0.75 * a + 0.25 * nxt
        out = np.stack([even, odd], axis=axis + 1)
        shape = list(a.shape)
        shape[axis] = 2 * n
        return out.reshape(shape)

    return along(along(c, 1), 2)


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


class VideoCodec(Op):
    """Compress the clip with a real video codec and decode it back (``[·]_FFMPEG(crf)``).

    crf:            integer ``[low, high]`` (both included) or a fixed int, 0–51.
    codec:          "libx264" (H.264) or "mpeg4" (BFVR-STC compat: crf ignored).
    fps:            frame rate the encoder is told (x264's CRF depends on it).
    preset:         x264 preset (libx264 only).
    x264_asm:       use x264's SIMD code (faster, but not bit-identical across CPUs and
                    not repeatable with AVX-512; see the module docstring). Default false.
    channel_order:  "rgb", or "bgr" for BFVR-STC's swapped channels (compat).
    input_rounding: "round" or "floor" (the papers' ``astype(np.uint8)``) to 8 bits.
    """

    CODECS = ("libx264", "mpeg4")
    PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")

    def __init__(
        self,
        crf: Any = (18, 25),
        codec: str = "libx264",
        fps: float = 25.0,
        preset: str = "medium",
        channel_order: str = "rgb",
        input_rounding: str = "round",
        x264_asm: bool = False,
        per_frame: bool | None = None,
    ):
        super().__init__(per_frame)
        self.crf = as_range(crf, "VideoCodec.crf", low=0, high=51, integer=True)
        self.codec = check_choice(codec, "VideoCodec.codec", self.CODECS)
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise ConfigError(f"VideoCodec.fps: must be a positive number, got {fps!r}")
        self.fps = float(fps)
        self.preset = check_choice(preset, "VideoCodec.preset", self.PRESETS)
        self.channel_order = check_choice(channel_order, "VideoCodec.channel_order", ("rgb", "bgr"))
        self.input_rounding = check_choice(input_rounding, "VideoCodec.input_rounding", ("round", "floor"))
        if not isinstance(x264_asm, bool):
            raise ConfigError(f"VideoCodec.x264_asm must be true or false, got {x264_asm!r}")
        self.x264_asm = x264_asm
        self._remember(
            crf=list(self.crf),
            codec=codec,
            fps=self.fps,
            preset=preset,
            channel_order=channel_order,
            input_rounding=input_rounding,
            x264_asm=x264_asm,
        )

    def _to_uint8(self, frames: list[np.ndarray]) -> np.ndarray:
        stack = np.stack(frames)
        if self.input_rounding == "round":
            return (np.clip(stack, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return np.clip(stack * 255.0, 0.0, 255.0).astype(np.uint8)

    def _codec(self, frames: np.ndarray, crf: int) -> np.ndarray:
        if self.channel_order == "bgr":
            frames = np.ascontiguousarray(frames[..., ::-1])
        out = encode_decode(frames, codec=self.codec, crf=crf, fps=self.fps, preset=self.preset, x264_asm=self.x264_asm)
        return out[..., ::-1] if self.channel_order == "bgr" else out

    def run(self, frames, seed, ctx: Context):
        rng = np.random.default_rng(seed)
        per_frame = self.resolve_per_frame(ctx)
        same_size = len({f.shape for f in frames}) == 1
        if not per_frame and not same_size:
            raise ConfigError(
                f"VideoCodec: a video needs frames of one size, but an earlier op gave {sorted({f.shape for f in frames})}; "
                "pin the resize op with per_frame: false, or run the codec per frame too"
            )
        crfs = [integer(rng, self.crf) for _ in frames] if per_frame else [integer(rng, self.crf)]
        params: dict[str, Any] = {"crf": crfs if per_frame else crfs[0], "codec": self.codec, "encoder": _encoder_version()}
        if self.codec == "mpeg4":
            params["crf_ignored"] = True
        if not per_frame:
            out = list(self._codec(self._to_uint8(frames), crfs[0]))
        elif same_size:
            # One full-clip encode per distinct CRF; frame t from the encode at CRF_t.
            stack = self._to_uint8(frames)
            encodes = {crf: self._codec(stack, crf) for crf in sorted(set(crfs))}
            out = [encodes[crf][t] for t, crf in enumerate(crfs)]
            params["per_frame_mode"] = "clip encode per distinct crf"
        else:
            # Frames of different sizes (per-frame downscale) cannot share one stream:
            # each frame is encoded as a one-frame video (intra only) at its own CRF.
            out = [self._codec(self._to_uint8([f]), crf)[0] for f, crf in zip(frames, crfs)]
            params["per_frame_mode"] = "one-frame encodes (frames differ in size)"
        return [f.astype(np.float32) / np.float32(255.0) for f in out], params
