"""Loss curves of a training run, from Lightning's CSV logs (every resumed version joined)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fvr_bench.io import atomic_write_bytes


def read_logged(log_root: Path) -> pd.DataFrame:
    """All ``metrics.csv`` under ``log_root`` (one per resumed session), one row per step,
    later sessions winning where steps repeat."""
    frames = [pd.read_csv(path) for path in sorted(log_root.glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime)]
    frames = [frame for frame in frames if "step" in frame]
    if not frames:
        return pd.DataFrame()
    logged = pd.concat(frames, ignore_index=True)
    return logged.groupby("step", as_index=False).last().sort_values("step")


def plot_curves(log_root: Path, out: Path, prefix: str = "train/", smooth: int = 20) -> Path | None:
    """One panel per logged ``train/*`` scalar (raw, faint; running mean over ``smooth`` logged
    points, solid), log-scaled when the values are positive. Returns the PNG path, or None
    when nothing was logged."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = read_logged(log_root)
    columns = [c for c in logged.columns if c.startswith(prefix)]
    if not columns:
        return None
    cols = min(3, len(columns))
    rows = -(-len(columns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for axis, column in zip(axes.flat, columns):
        series = logged[["step", column]].dropna()
        axis.plot(series["step"], series[column], color="tab:blue", alpha=0.3, linewidth=0.8)
        axis.plot(series["step"], series[column].rolling(smooth, min_periods=1).mean(), color="tab:blue")
        if len(series) and (series[column] > 0).all():
            axis.set_yscale("log")
        axis.set_title(column.removeprefix(prefix), fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(columns):]:
        axis.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out
