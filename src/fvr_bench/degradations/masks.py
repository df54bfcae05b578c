"""Free-form brush-stroke masks for the inpainting task (GPEN / DeepFill v2 style).

The stroke generator follows GPEN's ``brush_stroke_mask`` (demo.py), which SVFR's
inpainting masks follow: 1–3 strokes, each a polyline of 8–27 vertices with alternating
turning angles around 2π/5 (± up to 2π/15), segment lengths ~ N(R, R/2) clipped to
[0, 2R] with R = √(H² + W²)/8, width uniform in [12, 80) pixels, round joints (a disc on
every vertex). GPEN draws on 512² faces in absolute pixels, so widths scale with the frame
(``reference_size``): a 64² test frame gets 1.5–10 px strokes, not 12–80.

Masked pixels are set to ``fill`` (white, as SVFR's ``infer.py`` does:
``image[mask == 255] = [255, 255, 255]``). SVFR uses one mask for the whole video; so does
this op unless it runs per frame.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fvr_bench.errors import ConfigError

from .base import Context, Op, as_range, integer, uniform

MEAN_ANGLE = 2.0 * math.pi / 5.0
ANGLE_RANGE = 2.0 * math.pi / 15.0


class BrushStrokeMask(Op):
    """Draw free-form strokes and paint them ``fill``; returns the mask to the pipeline.

    strokes:        number of strokes, integer ``[low, high]`` (GPEN: 1–3).
    vertices:       vertices per stroke, integer ``[low, high]`` (GPEN: 8–27).
    width:          stroke width in pixels at ``reference_size`` (GPEN: [12, 80]).
    reference_size: frame side the widths refer to; widths scale by min(H, W) / this.
    fill:           value in [0, 1] written into masked pixels (1.0 = white).
    """

    def __init__(
        self,
        strokes: Any = (1, 3),
        vertices: Any = (8, 27),
        width: Any = (12.0, 80.0),
        reference_size: int = 512,
        fill: float = 1.0,
        per_frame: bool | None = None,
    ):
        super().__init__(per_frame)
        self.strokes = as_range(strokes, "BrushStrokeMask.strokes", low=1, integer=True)
        self.vertices = as_range(vertices, "BrushStrokeMask.vertices", low=1, integer=True)
        self.width = as_range(width, "BrushStrokeMask.width", low=0.0, low_open=True)
        if isinstance(reference_size, bool) or not isinstance(reference_size, (int, np.integer)) or reference_size < 1:
            raise ConfigError(f"BrushStrokeMask.reference_size: must be a positive integer, got {reference_size!r}")
        self.reference_size = int(reference_size)
        self.fill = as_range(fill, "BrushStrokeMask.fill", low=0.0, high=1.0)[0]
        self._remember(
            strokes=list(self.strokes),
            vertices=list(self.vertices),
            width=list(self.width),
            reference_size=self.reference_size,
            fill=self.fill,
        )

    def draw_strokes(self, rng: np.random.Generator, height: int, width: int) -> list[dict[str, Any]]:
        """Stroke geometry for one ``height × width`` mask: ``[{"width", "vertices"}]``."""
        radius = math.sqrt(height * height + width * width) / 8.0
        scale = min(height, width) / self.reference_size
        strokes = []
        for _ in range(integer(rng, self.strokes)):
            count = integer(rng, self.vertices)
            angle_min = MEAN_ANGLE - rng.uniform(0.0, ANGLE_RANGE)
            angle_max = MEAN_ANGLE + rng.uniform(0.0, ANGLE_RANGE)
            angles = [
                2.0 * math.pi - rng.uniform(angle_min, angle_max) if i % 2 == 0 else rng.uniform(angle_min, angle_max)
                for i in range(count)
            ]
            points = [(int(rng.integers(0, width + 1)), int(rng.integers(0, height + 1)))]
            for angle in angles:
                length = float(np.clip(rng.normal(radius, radius // 2), 0.0, 2.0 * radius))
                x = float(np.clip(points[-1][0] + length * math.cos(angle), 0, width))
                y = float(np.clip(points[-1][1] + length * math.sin(angle), 0, height))
                points.append((int(x), int(y)))
            stroke_width = max(1, int(uniform(rng, self.width) * scale))
            strokes.append({"width": stroke_width, "vertices": [list(p) for p in points]})
        return strokes

    @staticmethod
    def render(strokes: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
        """Rasterise strokes into a bool ``(height, width)`` mask (PIL, as GPEN)."""
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for stroke in strokes:
            points = [tuple(p) for p in stroke["vertices"]]
            w = stroke["width"]
            draw.line(points, fill=255, width=w)
            for x, y in points:
                draw.ellipse((x - w // 2, y - w // 2, x + w // 2, y + w // 2), fill=255)
        return np.asarray(canvas) > 0

    def run(self, frames, seed, ctx: Context):
        rng = np.random.default_rng(seed)
        if self.resolve_per_frame(ctx):
            drawn = [self.draw_strokes(rng, *f.shape[:2]) for f in frames]
            masks = [self.render(s, *f.shape[:2]) for s, f in zip(drawn, frames)]
            params: dict[str, Any] = {"per_frame": [{"strokes": s} for s in drawn]}
        else:
            shapes = {f.shape for f in frames}
            if len(shapes) > 1:
                raise ConfigError(
                    f"BrushStrokeMask: one mask per video needs frames of one size, got {sorted(shapes)}; "
                    "pin the resize op with per_frame: false"
                )
            height, width = frames[0].shape[:2]
            strokes = self.draw_strokes(rng, height, width)
            mask = self.render(strokes, height, width)
            masks = [mask] * len(frames)
            params = {"strokes": strokes}
        out = []
        for frame, mask in zip(frames, masks):
            frame = frame.copy()
            frame[mask] = np.float32(self.fill)
            out.append(frame)
        stacked = np.stack(masks) if len({m.shape for m in masks}) == 1 else None
        if stacked is None:
            raise ConfigError("BrushStrokeMask: frames of different sizes cannot share one mask array")
        ctx.mask = stacked if ctx.mask is None or ctx.mask.shape != stacked.shape else (ctx.mask | stacked)
        params["masked_fraction"] = float(stacked.mean())
        return out, params
