"""Figures from the results tree: speed vs quality, per-clip distributions, temporal profiles.

All figures are drawn with matplotlib's Agg backend and written as PNG and PDF, each
replaced atomically (temporary file in the same folder, then ``os.replace``). Every
function returns the paths it wrote.

- :func:`speed_quality_scatter`: mean restoration seconds per clip (``timing.csv``)
  against a metric's mean, one point per method, marker area from a parameter count
  when given (VividFace, Fig. 1).
- :func:`metric_distribution`: per-clip values of one metric, a box plot with the clips
  as points, one box per method, within one data × condition.
- :func:`temporal_profile_plot`: one pixel column (``x``) of every frame stacked over
  time, GT next to each method's restored frames (``save_restored=png`` or ``video``):
  the standard flicker visualisation. The raw profiles are also written as lossless PNGs
  (``profile_<clip>_x<col>_<name>.png``, H × T pixels) with the exact pixel values.

``plot_command`` is the ``python -m fvr_bench plot`` entry point.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fvr_bench.errors import ConfigError, DataError
from fvr_bench.io import atomic_write_bytes
from fvr_bench.tables.leaderboard import load_runs
from fvr_bench.tables.render import arrow

FORMATS = ("png", "pdf")
DEFAULT_MARKER_AREA = 80.0
PLOT_KEYS = ("kind", "metric", "clip", "column", "out", "data", "condition", "methods")


# --------------------------------------------------------------------------- helpers


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


def save_figure(fig, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.<fmt>`` for each format, atomically; close it."""
    plt = _pyplot()
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight")
            atomic_write_bytes(path, buffer.getvalue())
            written.append(path)
    finally:
        plt.close(fig)
    return written


def write_png_exact(path: Path, image: np.ndarray) -> Path:
    """Write a uint8 RGB ``(H, W, 3)`` image as a lossless PNG, atomically."""
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise DataError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, encoded.tobytes())
    return path


def load_results(output_dir: str | Path) -> pd.DataFrame:
    """:func:`load_runs` plus a ``condition`` column: the middle level of the results tree
    (``<data>/<condition>/<method>``; the degradation, or the protocol of a paper table)."""
    runs = load_runs(Path(output_dir))
    runs["condition"] = [Path(d).parent.name for d in runs["run_dir"]]
    return runs


def _runs_index(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.drop_duplicates("run_dir")[["data", "condition", "degradation", "method", "run_dir"]].reset_index(drop=True)


def _select(runs: pd.DataFrame, data: str | None, condition: str | None, methods: Iterable[str] | None) -> pd.DataFrame:
    selected = runs
    if data is not None:
        selected = selected[selected["data"] == data]
    if condition is not None:
        selected = selected[selected["condition"] == condition]
    if methods is not None:
        selected = selected[selected["method"].isin(list(methods))]
    if selected.empty:
        raise ConfigError(
            f"no runs match data={data} condition={condition} methods={methods}; present: "
            + ", ".join(sorted({f'{d}/{c}/{m}' for d, c, m in zip(runs['data'], runs['condition'], runs['method'])}))
        )
    return selected


def _groups(runs: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    return [(d, c, g) for (d, c), g in runs.groupby(["data", "condition"], sort=True)]


def _check_metric(runs: pd.DataFrame, metric: str | None) -> str:
    available = sorted(runs["metric"].unique())
    if not metric or metric not in available:
        raise ConfigError(f"metric={metric!r}: choose one of {', '.join(available)}")
    return metric


def mean_seconds(run_dir: str | Path) -> float:
    """Mean restoration seconds per clip from ``timing.csv`` (last entry of each clip); NaN
    without timings."""
    path = Path(run_dir) / "timing.csv"
    if not path.exists():
        return float("nan")
    timing = pd.read_csv(path, dtype={"clip_id": str})
    if timing.empty:
        return float("nan")
    return float(timing.drop_duplicates("clip_id", keep="last")["seconds"].mean())


def per_clip_values(run_dir: str | Path, metric: str) -> pd.Series:
    """Finite per-clip values of ``metric`` of one run, indexed by clip id."""
    per_clip = pd.read_csv(Path(run_dir) / "per_clip.csv", dtype={"clip_id": str})
    rows = per_clip[per_clip["metric"] == metric]
    values = rows.set_index("clip_id")["value"].astype(float)
    return values[np.isfinite(values)]


def _arrow(runs: pd.DataFrame, metric: str) -> str:
    higher = runs.loc[runs["metric"] == metric, "higher_is_better"].iloc[0]
    return arrow(str(higher) == "True")


# --------------------------------------------------------------------------- (1) speed vs quality


def speed_quality_scatter(
    output_dir: str | Path,
    metric: str,
    out_dir: str | Path,
    params: Mapping[str, float] | None = None,
    data: str | None = None,
    condition: str | None = None,
    methods: Iterable[str] | None = None,
) -> list[Path]:
    """Runtime (mean seconds per clip) vs the mean of ``metric``, one point per method and
    one figure per data × condition. ``params``: method → parameter count (marker area
    grows with it; methods not in it, or no mapping, get a constant size)."""
    plt = _pyplot()
    runs = _select(load_results(output_dir), data, condition, methods)
    metric = _check_metric(runs, metric)
    params = dict(params or {})
    written: list[Path] = []
    for data_name, condition_name, group in _groups(runs):
        rows = group[group["metric"] == metric]
        if rows.empty:
            continue
        points = [(m, mean_seconds(d), float(v)) for m, d, v in zip(rows["method"], rows["run_dir"], rows["value"])]
        known = [float(params[m]) for m, _, _ in points if params.get(m)]
        largest = max(known) if known else 1.0
        fig, ax = plt.subplots(figsize=(5.5, 4.0))
        for method, seconds, value in points:
            count = params.get(method)
            area = 60.0 + 900.0 * math.sqrt(float(count) / largest) if count else DEFAULT_MARKER_AREA
            x = seconds if math.isfinite(seconds) else 0.0
            ax.scatter([x], [value], s=area, alpha=0.6, edgecolors="black", linewidths=0.8, zorder=3)
            label = method if not count else f"{method} ({_human(float(count))})"
            ax.annotate(label, (x, value), textcoords="offset points", xytext=(6, 6), fontsize=8)
        seconds_all = [s for _, s, _ in points if math.isfinite(s) and s > 0]
        if len(seconds_all) > 1 and max(seconds_all) / min(seconds_all) > 20:
            ax.set_xscale("log")
        else:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_xlabel("runtime (s / clip, mean)")
        ax.set_ylabel(f"{metric} {_arrow(rows, metric)}")
        ax.set_title(f"speed vs quality — {data_name} / {condition_name}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.margins(0.25)
        if ax.get_xscale() == "linear":
            ax.set_xlim(left=0.0)
        stem = Path(out_dir) / f"scatter_{_safe(data_name)}_{_safe(condition_name)}_{_safe(metric)}"
        written += save_figure(fig, stem)
    if not written:
        raise ConfigError(f"metric {metric} is in none of the selected runs")
    return written


def _human(count: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.3g}"


# --------------------------------------------------------------------------- (2) distributions


def metric_distribution(
    output_dir: str | Path,
    metric: str,
    out_dir: str | Path,
    data: str | None = None,
    condition: str | None = None,
    methods: Iterable[str] | None = None,
) -> list[Path]:
    """Per-clip values of ``metric``: one box per method with each clip as a point, one
    figure per data × condition."""
    plt = _pyplot()
    runs = _select(load_results(output_dir), data, condition, methods)
    metric = _check_metric(runs, metric)
    written: list[Path] = []
    for data_name, condition_name, group in _groups(runs):
        rows = group[group["metric"] == metric].sort_values("method")
        series = [(m, per_clip_values(d, metric)) for m, d in zip(rows["method"], rows["run_dir"])]
        series = [(m, s) for m, s in series if len(s)]
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(series) + 2.0), 4.0))
        ax.boxplot([s.to_numpy() for _, s in series], showfliers=False, widths=0.5)
        rng = np.random.default_rng(0)
        for i, (_, values) in enumerate(series, start=1):
            jitter = rng.uniform(-0.12, 0.12, size=len(values))
            ax.scatter(i + jitter, values.to_numpy(), s=14, alpha=0.7, zorder=3)
        ax.set_xticks(range(1, len(series) + 1))
        ax.set_xticklabels([m for m, _ in series], rotation=20, ha="right")
        ax.set_ylabel(f"{metric} {_arrow(rows, metric)} (per clip)")
        ax.set_title(f"{metric} per clip — {data_name} / {condition_name}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        stem = Path(out_dir) / f"distribution_{_safe(data_name)}_{_safe(condition_name)}_{_safe(metric)}"
        written += save_figure(fig, stem)
    if not written:
        raise ConfigError(f"no per-clip values of {metric} in the selected runs")
    return written


# --------------------------------------------------------------------------- (3) temporal profile


def temporal_profile(frames: np.ndarray, column: int) -> np.ndarray:
    """``(T, H, W, 3)`` frames → ``(H, T, 3)``: pixel column ``column`` of frame ``t`` is
    column ``t`` of the result (time runs left to right)."""
    if not 0 <= column < frames.shape[2]:
        raise ConfigError(f"column={column} is outside the frame width {frames.shape[2]}")
    return np.ascontiguousarray(frames[:, :, column, :].transpose(1, 0, 2))


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float [0, 1] → uint8 with the rounding of the frame writers (uint8 passes through)."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def load_gt_frames(run_dir: str | Path, clip_id: str) -> np.ndarray:
    """GT frames ``(T, H, W, 3)`` float32 of a clip, read through the dataset config stored
    in the run's ``run.json`` (same roots, ``max_frames`` and resize as the evaluation)."""
    from omegaconf import OmegaConf

    from fvr_bench.config import build

    identity = json.loads((Path(run_dir) / "run.json").read_text())
    dataset = build(OmegaConf.create(identity["data"]), "data")
    sample = dataset.load(clip_id)
    if sample.gt is None:
        raise DataError(f"{identity['data'].get('name')}: clip {clip_id} has no GT frames")
    return sample.gt.permute(0, 2, 3, 1).numpy()


def load_restored_frames(run_dir: str | Path, clip_id: str) -> np.ndarray | None:
    """Restored frames of a clip saved with ``save_restored=png|video``, or None."""
    from fvr_bench.video import read_frame_folder, read_video

    folder = Path(run_dir) / "restored" / clip_id
    if folder.is_dir():
        return read_frame_folder(folder)
    video = Path(run_dir) / "restored" / f"{clip_id}.mkv"
    if video.is_file():
        return read_video(video)[0]
    return None


def temporal_profile_plot(
    output_dir: str | Path,
    clip: str | None,
    out_dir: str | Path,
    column: int | None = None,
    data: str | None = None,
    condition: str | None = None,
    methods: Iterable[str] | None = None,
) -> list[Path]:
    """GT and every method's temporal profile of ``clip`` at pixel column ``column`` (the
    frame centre by default), side by side, one figure per data × condition with saved
    restored frames. Also writes each profile as an exact lossless PNG."""
    plt = _pyplot()
    runs = _select(load_results(output_dir), data, condition, methods)
    written: list[Path] = []
    missing_clip = []
    for data_name, condition_name, group in _groups(runs):
        index = _runs_index(group).sort_values("method")
        restored = {}
        clip_id = clip
        for method, run_dir in zip(index["method"], index["run_dir"]):
            clip_id = clip_id or _first_restored_clip(run_dir)
            if clip_id is None:
                continue
            frames = load_restored_frames(run_dir, clip_id)
            if frames is None:
                missing_clip.append(f"{data_name}/{condition_name}/{method}")
                continue
            restored[method] = (run_dir, frames)
        if not restored:
            continue
        gt = load_gt_frames(next(iter(restored.values()))[0], clip_id)
        x = gt.shape[2] // 2 if column is None else int(column)
        panels = [("GT", temporal_profile(to_uint8(gt), x))]
        for method, (_, frames) in restored.items():
            if frames.shape[1:3] != gt.shape[1:3]:
                raise DataError(f"{method}, clip {clip_id}: restored size {frames.shape[2]}x{frames.shape[1]} "
                                f"differs from GT {gt.shape[2]}x{gt.shape[1]}")
            panels.append((method, temporal_profile(to_uint8(frames), x)))
        prefix = f"profile_{_safe(data_name)}_{_safe(condition_name)}_{_safe(clip_id)}_x{x}"
        for name, image in panels:
            written.append(write_png_exact(Path(out_dir) / f"{prefix}_{_safe(name)}.png", image))
        height, frames_count = panels[0][1].shape[:2]
        panel_width = max(1.2, min(4.0, 2.5 * frames_count / height + 0.8))
        fig, axes = plt.subplots(1, len(panels), figsize=(panel_width * len(panels) + 0.6, 4.0), squeeze=False)
        for ax, (name, image) in zip(axes[0], panels):
            ax.imshow(image, interpolation="nearest", aspect="auto")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("frame t")
        axes[0][0].set_ylabel("y (pixel row)")
        for ax in axes[0][1:]:
            ax.set_yticks([])
        fig.suptitle(f"temporal profile — {data_name} / {condition_name} / {clip_id}, column x={x}", fontsize=10)
        written += save_figure(fig, Path(out_dir) / prefix)
    if not written:
        hint = f" (no restored frames in: {', '.join(missing_clip)})" if missing_clip else ""
        raise DataError(f"no restored frames to profile{hint}: run with save_restored=png")
    return written


def _first_restored_clip(run_dir: str | Path) -> str | None:
    folder = Path(run_dir) / "restored"
    if not folder.is_dir():
        return None
    names = sorted(p.name if p.is_dir() else p.stem for p in folder.iterdir() if not p.name.startswith("."))
    return names[0] if names else None


# --------------------------------------------------------------------------- command


def plot_command(args: list[str]) -> list[Path]:
    """``python -m fvr_bench plot kind=scatter|distribution|profile metric=<id> clip=<id>
    column=<x> out=<dir> [data=<name> condition=<name> methods=a,b] [paths.output_dir=…]``.

    The plot keys are taken out; everything else is a ``run`` config override (only
    ``paths.output_dir`` matters). ``out`` defaults to ``<output_dir>/plots``.
    """
    from fvr_bench.config import compose

    options: dict[str, str] = {}
    rest: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in PLOT_KEYS:
            options[key] = value
        else:
            rest.append(arg)
    # data=<name> selects a dataset of the results tree here, not a data config
    cfg = compose("run", rest)
    output_dir = Path(cfg.paths.output_dir)
    out_dir = Path(options.get("out") or output_dir / "plots")
    kind = options.get("kind", "scatter")
    select = {
        "data": options.get("data") or None,
        "condition": options.get("condition") or None,
        "methods": options["methods"].split(",") if options.get("methods") else None,
    }
    try:
        if kind == "scatter":
            paths = speed_quality_scatter(output_dir, options.get("metric"), out_dir, **select)
        elif kind == "distribution":
            paths = metric_distribution(output_dir, options.get("metric"), out_dir, **select)
        elif kind == "profile":
            column = options.get("column")
            paths = temporal_profile_plot(output_dir, options.get("clip") or None, out_dir,
                                          column=int(column) if column not in (None, "") else None, **select)
        else:
            raise ConfigError(f"kind={kind!r}: choose scatter, distribution or profile")
    except ValueError as error:
        raise ConfigError(str(error)) from error
    for path in paths:
        print(path)
    return paths
