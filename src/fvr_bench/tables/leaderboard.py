"""Merge every run directory into one leaderboard (CSV + Markdown).

One row per data × degradation × method. A metric column holds one provenance only: if
runs computed the same metric id with different provenance (another colour space,
backend or weights), each provenance gets its own column ``metric [provenance id]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fvr_bench.errors import FvrBenchError
from fvr_bench.results import atomic_write_text

KEY_COLUMNS = ["data", "degradation", "method"]


def load_runs(output_dir: Path) -> pd.DataFrame:
    """Long table of every summary row under ``output_dir`` with its run's key columns."""
    frames = []
    for run_json in sorted(output_dir.rglob("run.json")):
        summary_path = run_json.parent / "summary.csv"
        if not summary_path.exists():
            continue  # a run that has not finished a single pass yet
        identity = json.loads(run_json.read_text())
        summary = pd.read_csv(summary_path)
        summary = summary[summary["provenance_id"] != "unavailable"]  # said in the run's summary, not a column
        summary["data"] = identity["data"].get("name", "?")
        summary["degradation"] = identity["degradation"].get("name", "?")
        summary["method"] = identity["method"].get("name", "?")
        summary["seed"] = identity.get("seed")
        summary["run_dir"] = str(run_json.parent)
        frames.append(summary)
    if not frames:
        raise FvrBenchError(f"no finished runs under {output_dir}: run `python -m fvr_bench run` first")
    return pd.concat(frames, ignore_index=True)


def column_names(runs: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(metric, provenance id) → column name; the plain metric id when it is unambiguous."""
    names = {}
    for metric, group in runs.groupby("metric"):
        provenances = sorted(group["provenance_id"].unique())
        for provenance_id in provenances:
            names[(metric, provenance_id)] = metric if len(provenances) == 1 else f"{metric} [{provenance_id}]"
    return names


def build_leaderboard(output_dir: str | Path) -> pd.DataFrame:
    """Write ``leaderboard.csv`` and ``leaderboard.md`` into ``output_dir``; return the table."""
    output_dir = Path(output_dir)
    runs = load_runs(output_dir)
    names = column_names(runs)
    runs["column"] = [names[(m, p)] for m, p in zip(runs["metric"], runs["provenance_id"])]
    table = runs.pivot_table(index=KEY_COLUMNS, columns="column", values="value", aggfunc="first")
    clips = runs.groupby(KEY_COLUMNS)["n_clips"].max().rename("n_clips")
    table = table.join(clips).reset_index()
    metric_columns = sorted(set(runs["column"]))
    table = table[KEY_COLUMNS + ["n_clips"] + metric_columns].sort_values(KEY_COLUMNS, ignore_index=True)
    higher = runs.drop_duplicates("column").set_index("column")["higher_is_better"].to_dict()
    atomic_write_text(output_dir / "leaderboard.csv", table.to_csv(index=False))
    atomic_write_text(output_dir / "leaderboard.md", to_markdown(table, metric_columns, higher))
    return table


def to_markdown(table: pd.DataFrame, metric_columns: list[str], higher: dict[str, bool]) -> str:
    """Markdown with ↑/↓ per metric; the best value within each data × degradation is bold."""
    header = KEY_COLUMNS + ["clips"] + [f"{c} {'↑' if higher[c] else '↓'}" for c in metric_columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {}
    for key, group in table.groupby(["data", "degradation"]):
        for column in metric_columns:
            values = group[column].dropna()
            if len(values) > 1:
                best[(key, column)] = values.max() if higher[column] else values.min()
    for _, row in table.iterrows():
        cells = [str(row[c]) for c in KEY_COLUMNS] + [str(int(row["n_clips"]))]
        for column in metric_columns:
            value = row[column]
            text = "–" if pd.isna(value) else f"{value:.4f}"
            if best.get(((row["data"], row["degradation"]), column)) == value:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_summary(run_dir: str | Path) -> str:
    """A run's summary as aligned text for the terminal."""
    summary = pd.read_csv(Path(run_dir) / "summary.csv")
    lines = [f"{'metric':14s} {'value':>12s} {'std':>10s} {'clips':>6s}  provenance"]
    for _, row in summary.iterrows():
        if row["provenance_id"] == "unavailable":
            lines.append(f"{row['metric']:14s} {'–':>12s} {'':>10s} {0:6d}  {row['note']}")
            continue
        arrow = "↑" if str(row["higher_is_better"]) == "True" else "↓"
        lines.append(
            f"{row['metric'] + ' ' + arrow:14s} {row['value']:12.4f} {row['std']:10.4f} {int(row['n_clips']):6d}  {row['provenance_id']}"
        )
    return "\n".join(lines)
