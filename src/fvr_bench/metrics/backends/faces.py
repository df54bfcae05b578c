"""Moved to :mod:`fvr_bench.faces`; this re-export remains only for methods/vividface/masks.py until it imports from there."""
from fvr_bench.faces.frames import Frame, to_uint8_frames  # noqa: F401
from fvr_bench.faces.mediapipe import MediaPipeMesh  # noqa: F401
