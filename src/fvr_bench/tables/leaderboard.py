"""Merge every run directory into one leaderboard, with bootstrap intervals over clips.

One row per data × condition × method, where the condition is the middle level of the
results tree (``outputs/<data>/<condition>/<method>/``): the degradation, or the protocol,
with ``+compat`` for compat runs. A metric column holds one provenance only: if runs
computed the same metric id with different provenance (another colour space, backend or
weights), each provenance gets its own column ``metric [provenance id]``. Metrics a run
reported ``unavailable`` make no column (the run's own summary says why); where other runs
did compute them, the footnote gives the reason for that run's "–".

Statistics (see :mod:`fvr_bench.tables.stats`), computed from ``per_clip.csv``:

- a 95% percentile-bootstrap interval of the mean over clips per cell. The interval is
  not symmetric about the mean in general, so it is printed as its two ends
  (``value [lo, hi]``, the default) or as the two distances to them (``value +a/-b`` with
  ``ci_style="pm"``), never as one half-width. Set-level metrics (FVD: one value from the
  features of all clips, per-clip values NaN) get none, and their note says so. A per-clip
  metric without any finite per-clip value (no face found in any clip, say) gets none
  either; its note and the footnote give the run's own reason (the ``note`` of
  ``summary.csv``/``per_clip.csv``), not "set-level";
- with ``baseline=<method>``: per cell, the paired difference to the baseline run of the
  same data × condition — only over the clips both have, only for the same provenance id
  — as ``diff`` (method − baseline), ``gain`` (signed so positive = better), the paired
  bootstrap interval of each, and the win rate over clips (ties count half).

Files written into ``output_dir`` (``stem`` = ``leaderboard``):

- ``csv``: ``leaderboard.csv`` (wide: ``data, degradation, method, n_clips, <metric
  columns…>`` as before, then ``condition``, ``<col>_ci_low``, ``<col>_ci_high`` and, with a
  baseline, ``<col>_gain``, ``<col>_gain_ci_low``, ``<col>_gain_ci_high``,
  ``<col>_win_rate``) and ``leaderboard_long.csv`` (one row per run × metric column with
  every statistic, provenance id, ``metric_level`` (``clip`` | ``set``), ``no_interval`` (why
  a per-clip metric has no interval; empty otherwise) and note);
- ``md``: ``leaderboard.md`` (``value [lo, hi]``, or ``value +a/-b`` with ``ci_style="pm"``:
  a = hi − value, b = value − lo, from the printed digits; best per data × condition in
  bold; a footnote on the interval and on every cell without one; a second table against
  the baseline);
- ``latex``: ``leaderboard.tex`` (booktabs ``tabular``; ``$v$ $[lo, hi]$`` or
  ``$v^{+a}_{-b}$``; needs ``\\usepackage{booktabs}``).

CLI mapping for the lead (``python -m fvr_bench leaderboard [key=value ...]``), each one
keyword of :func:`build_leaderboard`::

    baseline=bicubic                 → baseline="bicubic"
    data=sample  | data=[a,b]        → data=...        (data name)
    condition=vividface_t1           → condition=...   (folder level or run.json protocol)
    metrics=[psnr_y,ssim_y]          → metrics=...     (metric id or column name)
    methods=[bicubic,identity]       → methods=...     (the baseline is always kept)
    format=latex | format=[csv,md,latex] → formats=... (csv | md | latex)
    n_boot=2000  seed=0  level=0.95  ci_style=bracket|pm  digits=4

Lists may also be given as one comma-separated string. ``leaderboard.md`` exists only
when ``md`` is among the formats (print it only then). Unknown filter values raise
:class:`FvrBenchError` naming what is available.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fvr_bench.errors import FvrBenchError
from fvr_bench.io import atomic_write_text
from fvr_bench.tables.render import arrow, latex_escape, latex_tabular, markdown_table
from fvr_bench.tables.stats import DEFAULT_N_BOOT, bootstrap_mean_ci, paired_comparison

KEY_COLUMNS = ["data", "degradation", "method"]
ROW_KEY = ["data", "condition", "method"]
FORMATS = ("csv", "md", "latex")
SET_LEVEL_NOTE = "set-level metric: no per-clip values, no bootstrap interval"
CI_STYLES = ("bracket", "pm")
PAIRED_STATS = ["n_paired", "diff", "diff_ci_low", "diff_ci_high", "gain", "gain_ci_low", "gain_ci_high", "win_rate"]


# ----------------------------------------------------------------------------- loading


def load_runs(output_dir: Path, keep_unavailable: bool = False) -> pd.DataFrame:
    """Long table of every summary row under ``output_dir`` with its run's key columns.

    Rows of metrics a run reported ``unavailable`` are left out unless ``keep_unavailable``."""
    frames = []
    output_dir = Path(output_dir)
    for run_json in sorted(output_dir.rglob("run.json")):
        summary_path = run_json.parent / "summary.csv"
        if not summary_path.exists():
            continue  # a run that has not finished a single pass yet
        identity = json.loads(run_json.read_text())
        summary = pd.read_csv(summary_path)
        if "note" not in summary.columns:
            summary["note"] = ""
        summary["note"] = ["" if pd.isna(note) else str(note) for note in summary["note"]]
        if not keep_unavailable:
            summary = summary[summary["provenance_id"] != "unavailable"].copy()  # said in the run's summary, not a column
        summary["data"] = (identity.get("data") or {}).get("name", "?")
        summary["degradation"] = (identity.get("degradation") or {}).get("name", "?")
        summary["method"] = (identity.get("method") or {}).get("name", "?")
        summary["condition"] = run_json.parent.parent.name
        summary["protocol"] = identity.get("protocol")
        summary["compat"] = bool(identity.get("compat", False))
        summary["seed"] = identity.get("seed")
        summary["run_dir"] = str(run_json.parent)
        frames.append(summary)
    if not frames:
        raise FvrBenchError(f"no finished runs under {output_dir}: run `python -m fvr_bench run` first")
    runs = pd.concat(frames, ignore_index=True)
    runs["higher_is_better"] = runs["higher_is_better"].map(_as_bool)
    return runs


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def column_names(runs: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(metric, provenance id) → column name; the plain metric id when it is unambiguous."""
    names = {}
    for metric, group in runs.groupby("metric"):
        provenances = sorted(group["provenance_id"].unique())
        for provenance_id in provenances:
            names[(metric, provenance_id)] = metric if len(provenances) == 1 else f"{metric} [{provenance_id}]"
    return names


# ----------------------------------------------------------------------------- filters


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = [part.strip() for part in value.strip("[]").split(",")]
    else:
        items = [str(part).strip() for part in value]
    items = [item for item in items if item]
    return items or None


def filter_runs(
    runs: pd.DataFrame,
    data: Any = None,
    condition: Any = None,
    metrics: Any = None,
    methods: Any = None,
    baseline: str | None = None,
) -> pd.DataFrame:
    """Rows of ``runs`` that match every given filter; a value matching nothing is an error."""

    def select(frame: pd.DataFrame, wanted: Any, columns: list[str], what: str) -> pd.DataFrame:
        wanted = _as_list(wanted)
        if wanted is None:
            return frame
        available = set()
        for column in columns:
            available |= {str(v) for v in frame[column].dropna().unique()}
        unknown = [w for w in wanted if w not in available]
        if unknown:
            raise FvrBenchError(
                f"leaderboard: no {what} {', '.join(unknown)} among the runs; available: {', '.join(sorted(available))}"
            )
        mask = np.zeros(len(frame), dtype=bool)
        for column in columns:
            mask |= frame[column].astype(str).isin(wanted).to_numpy()
        return frame[mask]

    runs = select(runs, data, ["data"], "data")
    runs = select(runs, condition, ["condition", "protocol"], "condition/protocol")
    if metrics is not None:
        names = column_names(runs)
        runs = runs.assign(column=[names[(m, p)] for m, p in zip(runs["metric"], runs["provenance_id"])])
        runs = select(runs, metrics, ["metric", "column"], "metric").drop(columns="column")
    methods = _as_list(methods)
    if methods is not None and baseline is not None and baseline not in methods:
        methods = [*methods, baseline]
    runs = select(runs, methods, ["method"], "method")
    if baseline is not None and baseline not in set(runs["method"]):
        raise FvrBenchError(
            f"leaderboard: baseline {baseline} has no run among the selected ones; "
            f"methods: {', '.join(sorted(set(runs['method'])))}"
        )
    return runs


# ----------------------------------------------------------------------------- statistics


class _PerClip:
    """``per_clip.csv`` of each run, read once."""

    def __init__(self) -> None:
        self._frames: dict[str, pd.DataFrame] = {}

    def rows(self, run_dir: str, metric: str, provenance_id: str) -> pd.DataFrame:
        if run_dir not in self._frames:
            path = Path(run_dir) / "per_clip.csv"
            self._frames[run_dir] = (
                pd.read_csv(path, dtype={"clip_id": str}) if path.exists() else pd.DataFrame(columns=["clip_id", "metric", "value", "provenance_id"])
            )
        frame = self._frames[run_dir]
        return frame[(frame["metric"] == metric) & (frame["provenance_id"] == provenance_id)]

    def values(self, run_dir: str, metric: str, provenance_id: str) -> dict[str, float]:
        rows = self.rows(run_dir, metric, provenance_id)
        return dict(zip(rows["clip_id"].astype(str), rows["value"].astype(float)))


def _is_set_level(summary_row: dict[str, Any], per_clip_rows: pd.DataFrame) -> bool:
    """Whether a summary row holds a set-level metric (FVD).

    A ``level`` column in ``summary.csv`` (``set`` | ``clip``) decides when a run wrote one.
    Otherwise the shape that :meth:`Evaluator.set_level_rows` and ``write_summary`` leave:
    a finite value over ``n_clips > 0`` clips whose per-clip rows all exist with NaN values
    (a per-clip metric's summary value is the mean of its finite per-clip values, so it is
    NaN, with ``n_clips == 0``, when it has none)."""
    level = summary_row.get("level")
    if isinstance(level, str) and level.strip():
        return level.strip().lower() == "set"
    value = pd.to_numeric(summary_row.get("value"), errors="coerce")
    n_clips = pd.to_numeric(summary_row.get("n_clips"), errors="coerce")
    if pd.isna(value) or not np.isfinite(value) or pd.isna(n_clips) or n_clips <= 0 or per_clip_rows.empty:
        return False
    return bool(per_clip_rows["value"].astype(float).isna().all())


def _no_interval_reason(note: str, per_clip_rows: pd.DataFrame) -> str:
    """Why a per-clip metric has no interval: the summary's note, else the per-clip notes,
    else what the per-clip values show."""
    if note:
        return note
    if "note" in per_clip_rows.columns:
        notes = [str(n) for n in per_clip_rows["note"] if isinstance(n, str) and n.strip()]
        distinct = list(dict.fromkeys(notes))
        if distinct:
            more = f" (+{len(distinct) - 3} more)" if len(distinct) > 3 else ""
            return "; ".join(distinct[:3]) + more
    if per_clip_rows.empty:
        return "no per-clip values in per_clip.csv"
    values = per_clip_rows["value"].astype(float)
    if values.isna().all():
        return f"no per-clip value in any of its {len(values)} clip(s)"
    return f"no finite per-clip value in any of its {len(values)} clip(s)"


def leaderboard_long(
    runs: pd.DataFrame,
    baseline: str | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per run × metric column: value (the summary's mean), interval over clips and,
    with a baseline, the paired comparison to it."""
    runs = runs.copy()
    names = column_names(runs)
    runs["column"] = [names[(m, p)] for m, p in zip(runs["metric"], runs["provenance_id"])]
    runs = runs.drop_duplicates(ROW_KEY + ["column"]).sort_values(ROW_KEY + ["column"], ignore_index=True)
    per_clip = _PerClip()
    records = []
    for row in runs.to_dict("records"):
        clip_rows = per_clip.rows(row["run_dir"], row["metric"], row["provenance_id"])
        values = per_clip.values(row["run_dir"], row["metric"], row["provenance_id"])
        lo, hi = bootstrap_mean_ci(list(values.values()), n_boot=n_boot, seed=seed, level=level)
        set_level = _is_set_level(row, clip_rows)
        if set_level:  # per-clip rows of a set-level metric are not its per-clip values
            lo = hi = float("nan")
        reason = "" if set_level or not math.isnan(lo) else _no_interval_reason(row["note"], clip_rows)
        row.update(ci_low=lo, ci_high=hi, n_boot=n_boot, level=level, metric_level="set" if set_level else "clip",
                   _no_interval=reason)
        if baseline is not None:
            row.update({key: float("nan") for key in PAIRED_STATS})
            row["baseline"] = baseline
        records.append(row)
    long = pd.DataFrame(records)
    long["_paired_note"] = ""
    if baseline is not None:
        base = {
            (r["data"], r["condition"], r["metric"], r["provenance_id"]): r
            for r in records
            if r["method"] == baseline
        }
        for index, row in long.iterrows():
            if row["method"] == baseline:
                continue
            key = (row["data"], row["condition"], row["metric"], row["provenance_id"])
            if key not in base:
                long.at[index, "_paired_note"] = f"no {baseline} run with {row['metric']} [{row['provenance_id']}] here"
                continue
            method_values = per_clip.values(row["run_dir"], row["metric"], row["provenance_id"])
            base_values = per_clip.values(base[key]["run_dir"], row["metric"], row["provenance_id"])
            stats = paired_comparison(
                method_values, base_values, bool(row["higher_is_better"]), n_boot=n_boot, seed=seed, level=level
            )
            for name, value in stats.items():
                long.at[index, name] = value
            if stats["n_paired"] == 0 and row["metric_level"] != "set":  # set-level: its own note says why
                long.at[index, "_paired_note"] = f"no clip with finite values in both this run and {baseline}"
    notes = []
    for index, row in long.iterrows():
        parts = [row["note"]] if row["note"] else []
        if row["metric_level"] == "set":
            parts.append(SET_LEVEL_NOTE)
        elif math.isnan(row["ci_low"]):
            # the run's own reason (no face found, ...), never "set-level"
            parts = [f"no bootstrap interval: {row['_no_interval']}"]
        extra = row.get("_paired_note")
        if isinstance(extra, str) and extra:
            parts.append(extra)
        notes.append("; ".join(parts))
    long["note"] = notes
    columns = ROW_KEY + ["degradation", "protocol", "compat", "seed", "column", "metric", "provenance_id",
                         "higher_is_better", "value", "std", "n_clips", "ci_low", "ci_high", "n_boot", "level"]
    if baseline is not None:
        columns += ["baseline"] + PAIRED_STATS
    columns += ["metric_level", "no_interval", "note", "run_dir"]
    long["no_interval"] = long["_no_interval"]
    return long[columns]


def wide_table(long: pd.DataFrame, baseline: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The wide leaderboard (old columns first, extras after) and its metric columns."""
    metric_columns = sorted(set(long["column"]))
    index = ["data", "degradation", "condition", "method"]
    indexed = long.set_index(index + ["column"])

    def pivot(stat: str) -> pd.DataFrame:
        return indexed[stat].astype(float).unstack("column").reindex(columns=metric_columns)

    table = pivot("value")
    extras = []
    stats = ["ci_low", "ci_high"] + (["gain", "gain_ci_low", "gain_ci_high", "win_rate"] if baseline else [])
    for stat in stats:
        part = pivot(stat)
        part.columns = [f"{c}_{stat}" for c in part.columns]
        extras.append(part)
    clips = long.groupby(index)["n_clips"].max().rename("n_clips")
    table = table.join(clips)
    for part in extras:
        table = table.join(part)
    table = table.reset_index()
    extra_columns = ["condition"] + [f"{c}_{stat}" for c in metric_columns for stat in stats]
    table = table[KEY_COLUMNS + ["n_clips"] + metric_columns + extra_columns]
    table = table.sort_values(["data", "condition", "method"], ignore_index=True)
    return table, metric_columns


# ----------------------------------------------------------------------------- building


def build_leaderboard(
    output_dir: str | Path,
    baseline: str | None = None,
    data: str | Sequence[str] | None = None,
    condition: str | Sequence[str] | None = None,
    metrics: str | Sequence[str] | None = None,
    methods: str | Sequence[str] | None = None,
    formats: str | Iterable[str] = ("csv", "md"),
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    ci_style: str = "bracket",
    digits: int = 4,
    stem: str = "leaderboard",
) -> pd.DataFrame:
    """Write the leaderboard files into ``output_dir`` and return the wide table.

    ``build_leaderboard(output_dir)`` writes ``leaderboard.csv`` and ``leaderboard.md`` as it
    always did (same columns first; interval columns and ``condition`` appended). See the
    module docstring for every keyword and the CLI options to expose.
    """
    output_dir = Path(output_dir)
    format_list = _as_list(formats) or []
    unknown = sorted(set(format_list) - set(FORMATS))
    if unknown:
        raise FvrBenchError(f"leaderboard: unknown format {', '.join(unknown)}; choose among {', '.join(FORMATS)}")
    if ci_style not in CI_STYLES:
        raise FvrBenchError(f"leaderboard: ci_style must be {' or '.join(CI_STYLES)}, got {ci_style}")
    everything = load_runs(output_dir, keep_unavailable=True)
    is_unavailable = everything["provenance_id"] == "unavailable"
    available = everything[~is_unavailable]
    if available.empty:
        raise FvrBenchError(f"no finished runs under {output_dir}: run `python -m fvr_bench run` first")
    runs = filter_runs(available.reset_index(drop=True), data, condition, metrics, methods, baseline)
    if runs.empty:
        raise FvrBenchError(f"leaderboard: the filters leave no result under {output_dir}")
    long = leaderboard_long(runs, baseline=baseline, n_boot=int(n_boot), seed=int(seed), level=float(level))
    # metrics some selected runs could not compute while others did: their "–" cells get the reason
    unavailable = everything[is_unavailable & everything["run_dir"].isin(set(runs["run_dir"]))
                             & everything["metric"].isin(set(long["metric"]))]
    table, metric_columns = wide_table(long, baseline)
    higher = long.drop_duplicates("column").set_index("column")["higher_is_better"].map(bool).to_dict()
    if "csv" in format_list:
        atomic_write_text(output_dir / f"{stem}.csv", table.to_csv(index=False))
        atomic_write_text(output_dir / f"{stem}_long.csv", long.to_csv(index=False))
    options = {"ci_style": ci_style, "digits": digits, "n_boot": int(n_boot), "seed": int(seed), "level": float(level),
               "unavailable": unavailable}
    if "md" in format_list:
        atomic_write_text(output_dir / f"{stem}.md", to_markdown(table, metric_columns, higher, long, baseline, **options))
    if "latex" in format_list:
        atomic_write_text(output_dir / f"{stem}.tex", to_latex(table, metric_columns, higher, long, baseline, **options))
    return table


# ----------------------------------------------------------------------------- rendering


def _best(table: pd.DataFrame, metric_columns: list[str], higher: dict[str, bool]) -> dict:
    best = {}
    for key, group in table.groupby(["data", "condition"]):
        for column in metric_columns:
            values = group[column].dropna()
            if len(values) > 1:
                best[(key, column)] = values.max() if higher[column] else values.min()
    return best


def _offsets(value: float, lo: float, hi: float, digits: int) -> tuple[str, str]:
    """``hi − value`` and ``lo − value`` as signed text (``+0.33``, ``-0.27``), from the
    printed (rounded) numbers, so that value plus each gives the printed end exactly. Signed,
    not clamped: were the mean ever outside its percentile interval, the text still tells."""
    def rounded(x: float) -> float:
        return float(f"{x:.{digits}f}")

    up = rounded(hi) - rounded(value)
    down = rounded(lo) - rounded(value)
    return f"{up:+.{digits}f}", f"{(down if down != 0 else -0.0):+.{digits}f}"


def _value_text(value: float, lo: float, hi: float, ci_style: str, digits: int, signed: bool = False) -> str:
    """``value [lo, hi]`` (bracket) or ``value +up/-down`` (pm): both ends of the interval,
    which is not symmetric about the mean in general."""
    if pd.isna(value):
        return "–"
    sign = "+" if signed else ""
    text = f"{value:{sign}.{digits}f}"
    if pd.isna(lo) or pd.isna(hi):
        return text
    if ci_style == "bracket":
        return f"{text} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"
    up, down = _offsets(value, lo, hi, digits)
    return f"{text} {up}/{down}"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _run_label(row: Any, several_cells: bool) -> str:
    return f"{row['method']} ({row['data']}/{row['condition']})" if several_cells else str(row["method"])


def _footnote(n_boot: int, seed: int, level: float, ci_style: str, long: pd.DataFrame,
              unavailable: pd.DataFrame | None = None) -> str:
    if ci_style == "bracket":
        shape = f"value [lo, hi]: the mean over clips and the two ends of its {level:.0%} percentile bootstrap interval"
    else:
        shape = (f"value +a/-b: the mean over clips; its {level:.0%} percentile bootstrap interval runs from "
                 "value - b to value + a")
    text = (
        f"{shape} (n_boot={n_boot}, seed={seed}; the interval need not be symmetric about the mean); "
        "bold: best within data × condition; –: not computed."
    )
    set_level = sorted(set(long.loc[long["metric_level"] == "set", "column"]))
    if set_level:
        text += (f" No interval for {', '.join(set_level)}: set-level metric(s), one value from the features "
                 "of all clips, no per-clip values.")
    several_cells = long[["data", "condition"]].drop_duplicates().shape[0] > 1
    missing = long[(long["metric_level"] != "set") & long["ci_low"].isna()]
    for column, group in missing.groupby("column", sort=True):
        by_reason: dict[str, list[str]] = {}
        for _, row in group.iterrows():
            by_reason.setdefault(_one_line(row["no_interval"]), []).append(_run_label(row, several_cells))
        for reason, labels in by_reason.items():
            text += f" No interval for {column} ({', '.join(labels)}): {reason}."
    if unavailable is not None and not unavailable.empty:
        columns_of = long.groupby("metric")["column"].agg(lambda c: ", ".join(sorted(set(c)))).to_dict()
        for metric, group in unavailable.groupby("metric", sort=True):
            by_reason = {}
            for _, row in group.iterrows():
                reason = _one_line(row["note"]) or "unavailable"
                by_reason.setdefault(reason, []).append(_run_label(row, several_cells))
            for reason, labels in by_reason.items():
                text += f" – in {columns_of.get(metric, metric)} for {', '.join(labels)}: not computed ({reason})."
    return text


def _paired_rows(long: pd.DataFrame, baseline: str) -> pd.DataFrame:
    return long[long["method"] != baseline]


def to_markdown(
    table: pd.DataFrame,
    metric_columns: list[str],
    higher: dict[str, bool],
    long: pd.DataFrame | None = None,
    baseline: str | None = None,
    ci_style: str = "bracket",
    digits: int = 4,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    unavailable: pd.DataFrame | None = None,
) -> str:
    """Markdown with ↑/↓ per metric; the best value within each data × condition is bold."""
    keys = ["data", "condition", "method"]
    header = keys + ["clips"] + [f"{c} {arrow(higher[c])}" for c in metric_columns]
    best = _best(table, metric_columns, higher)
    rows = []
    for _, row in table.iterrows():
        cells = [str(row[c]) for c in keys] + [str(int(row["n_clips"]))]
        for column in metric_columns:
            value = row[column]
            text = _value_text(value, row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high"), ci_style, digits)
            if not pd.isna(value) and best.get(((row["data"], row["condition"]), column)) == value:
                text = f"**{text}**"
            cells.append(text)
        rows.append(cells)
    lines = markdown_table(header, rows)
    if long is not None:
        lines += ["", _footnote(n_boot, seed, level, ci_style, long, unavailable)]
    if baseline is not None and long is not None:
        lines += ["", f"### vs {baseline} (paired over common clips; gain > 0: better than {baseline})", ""]
        header = keys + [f"{c} gain [{level:.0%} CI] win" for c in metric_columns]
        rows = []
        for key, group in _paired_rows(long, baseline).groupby(keys, sort=True):
            cells = list(key)
            by_column = group.set_index("column")
            for column in metric_columns:
                if column not in by_column.index or pd.isna(by_column.at[column, "gain"]):
                    cells.append("–")
                    continue
                r = by_column.loc[column]
                cells.append(
                    f"{r['gain']:+.{digits}f} [{r['gain_ci_low']:+.{digits}f}, {r['gain_ci_high']:+.{digits}f}] "
                    f"{r['win_rate']:.0%} (n={int(r['n_paired'])})"
                )
            rows.append(cells)
        lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


def to_latex(
    table: pd.DataFrame,
    metric_columns: list[str],
    higher: dict[str, bool],
    long: pd.DataFrame,
    baseline: str | None = None,
    ci_style: str = "bracket",
    digits: int = 4,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    unavailable: pd.DataFrame | None = None,
) -> str:
    """booktabs tabular(s): the leaderboard, then the comparison with the baseline."""
    keys = ["data", "condition", "method"]

    def cell(value: float, lo: float, hi: float, signed: bool = False) -> str:
        if pd.isna(value):
            return "--"
        sign = "+" if signed else ""
        text = f"{value:{sign}.{digits}f}"
        if pd.isna(lo) or pd.isna(hi):
            return f"${text}$"
        if ci_style == "bracket":
            return f"${text}$ $[{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]$"
        up, down = _offsets(value, lo, hi, digits)
        return f"${text}^{{{up}}}_{{{down}}}$"

    def tabular(header: list[str], rows: list[list[str]]) -> list[str]:
        return latex_tabular("l" * len(keys) + "r" * (len(header) - len(keys)), header, rows)

    arrows = {c: arrow(higher[c], latex=True) for c in metric_columns}
    best = _best(table, metric_columns, higher)
    rows = []
    for _, row in table.iterrows():
        cells = [latex_escape(row[c]) for c in keys] + [str(int(row["n_clips"]))]
        for column in metric_columns:
            value = row[column]
            text = cell(value, row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high"))
            if not pd.isna(value) and best.get(((row["data"], row["condition"]), column)) == value:
                text = f"{{\\boldmath {text}}}"
            cells.append(text)
        rows.append(cells)
    header = keys + ["clips"] + [f"{latex_escape(c)} {arrows[c]}" for c in metric_columns]
    note = _footnote(n_boot, seed, level, ci_style, long, unavailable).replace("×", "x").replace("–", "--")
    lines = [f"% {latex_escape(note)}", "% requires \\usepackage{booktabs}"]
    lines += tabular(header, rows)
    if baseline is not None:
        rows = []
        for key, group in _paired_rows(long, baseline).groupby(keys, sort=True):
            by_column = group.set_index("column")
            cells = [latex_escape(k) for k in key]
            for column in metric_columns:
                if column not in by_column.index or pd.isna(by_column.at[column, "gain"]):
                    cells.append("--")
                    continue
                r = by_column.loc[column]
                cells.append(
                    f"${r['gain']:+.{digits}f}$ $[{r['gain_ci_low']:+.{digits}f}, {r['gain_ci_high']:+.{digits}f}]$ "
                    f"{100 * r['win_rate']:.0f}\\%"
                )
            rows.append(cells)
        header = keys + [f"{latex_escape(c)} gain vs {latex_escape(baseline)}" for c in metric_columns]
        lines += ["", f"% paired over common clips; gain > 0: better than {latex_escape(baseline)}; last: win rate"]
        lines += tabular(header, rows)
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
