"""Paper tables: the published numbers (reported/paper_tables.csv) next to measured runs.

A table's layout is data: ``conf/table/<id>.yaml`` names each printed column, the metric it
reports in the CSV, this project's metric id for it and the scale the paper prints
(measured value × scale). Reported values are kept as the strings printed in the paper.
Measured rows come from runs under ``paths.output_dir`` whose run.json protocol (or results
condition) is the table's protocol, on the table's dataset. With ``any_data=True`` runs of
the protocol on other datasets (the 1-clip ``sample`` set, say) are listed too, labelled
``method (data)``; they are shown for reference only and never ranked: best/second marks
compare the rows of the table's own dataset (the papers' rows and runs on it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fvr_bench.errors import FvrBenchError
from fvr_bench.io import atomic_write_text
from fvr_bench.tables.render import arrow, latex_escape, latex_tabular, markdown_table

REPO_ROOT = Path(__file__).resolve().parents[3]
REPORTED_CSV = REPO_ROOT / "reported" / "paper_tables.csv"
EMPTY = "–"


@dataclass
class Row:
    task: str
    source: str  # reported | measured
    method: str
    cells: dict[str, str]  # column name -> printed value string ("" when missing)
    compat: bool | None = None
    run_dir: str | None = None
    provenance: dict[str, str] = field(default_factory=dict)  # column name -> provenance id
    data: str | None = None  # a measured run's dataset (None: the table's own, as for reported rows)
    ranked: bool = True  # False: a run on another dataset than the table's, shown but not ranked


@dataclass
class PaperTable:
    spec: dict[str, Any]
    rows: list[Row]
    footnotes: list[str]

    @property
    def columns(self) -> list[dict[str, Any]]:
        return self.spec["columns"]

    @property
    def multi_task(self) -> bool:
        return len({row.task for row in self.rows}) > 1

    @property
    def unranked(self) -> list[Row]:
        """Rows on another dataset than the table's: shown, never marked best or second."""
        return [row for row in self.rows if not row.ranked]


def load_spec(table_id: str, conf_dir: Path | None = None) -> dict[str, Any]:
    """``conf/table/<id>.yaml`` as a plain dict."""
    from omegaconf import OmegaConf

    if conf_dir is None:
        from fvr_bench.config import CONF_DIR as conf_dir
    path = Path(conf_dir) / "table" / f"{table_id}.yaml"
    if not path.exists():
        raise FvrBenchError(f"no table config {path}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def load_reported(table_id: str, csv_path: str | Path | None = None) -> pd.DataFrame:
    """The reported rows of one table, values as the printed strings."""
    reported = pd.read_csv(csv_path or REPORTED_CSV, dtype=str, keep_default_na=False)
    rows = reported[reported["table"] == table_id].reset_index(drop=True)
    if rows.empty:
        raise FvrBenchError(f"no reported rows for table {table_id!r} in {csv_path or REPORTED_CSV}")
    return rows


def table_ids(csv_path: str | Path | None = None) -> list[str]:
    reported = pd.read_csv(csv_path or REPORTED_CSV, dtype=str, keep_default_na=False)
    return list(dict.fromkeys(reported["table"]))


# ------------------------------------------------------------------------- rows


def reported_rows(spec: dict[str, Any], reported: pd.DataFrame) -> list[Row]:
    by_reported = {c["reported"]: c["name"] for c in spec["columns"]}
    rows: dict[tuple[str, str], Row] = {}
    for rec in reported.itertuples(index=False):
        key = (rec.task, rec.method)
        row = rows.setdefault(key, Row(task=rec.task, source="reported", method=rec.method, cells={}))
        if rec.metric not in by_reported:
            raise FvrBenchError(f"{spec['id']}: reported metric {rec.metric!r} has no column in conf/table")
        row.cells[by_reported[rec.metric]] = rec.value
    return list(rows.values())


def _run_task(identity: dict[str, Any], condition: str, protocol: str, tasks: list[str]) -> str:
    task = identity.get("degradation", {}).get("task")
    if task in tasks:
        return task
    for candidate in tasks:  # condition like svfr_t2_colorization
        if condition.endswith(candidate):
            return candidate
    matches = [t for t in tasks if task and t.startswith(task)]  # deflicker -> deflicker_brightness
    return matches[0] if len(matches) == 1 else (tasks[0] if len(tasks) == 1 else str(task))


def _format_measured(value: float, column: dict[str, Any]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value * float(column.get('scale', 1)):.{int(column.get('decimals', 2))}f}"


def _settings_summary(entry: dict[str, Any]) -> str:
    parts = [entry.get("implementation", "?")]
    for key in ("backend_version", "weights"):
        if entry.get(key):
            parts.append(f"{key}={entry[key]}")
    if entry.get("weights_sha256"):
        parts.append(f"sha256={str(entry['weights_sha256'])[:12]}")
    settings = entry.get("settings") or {}
    if settings:
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    return "; ".join(parts)


def measured_rows(spec: dict[str, Any], output_dir: Path, tasks: list[str],
                  any_data: bool = False) -> tuple[list[Row], list[str]]:
    """Rows of the runs that follow the table's protocol; footnotes (provenance, compat)."""
    protocol = spec.get("protocol")
    if not protocol or not Path(output_dir).exists():
        return [], []
    from fvr_bench.tables.leaderboard import load_runs

    try:
        runs = load_runs(Path(output_dir))
    except FvrBenchError:
        return [], []
    rows: list[Row] = []
    provenance_ids: dict[str, dict[str, str]] = {}  # column -> {provenance id: summary}
    for run_dir, summary in runs.groupby("run_dir", sort=True):
        run_dir = Path(run_dir)
        identity = json.loads((run_dir / "run.json").read_text())
        condition = run_dir.parent.name
        if identity.get("protocol") != protocol and not condition.startswith(protocol):
            continue
        data_name = identity.get("data", {}).get("name")
        label = identity.get("method", {}).get("name", run_dir.name)
        other_data = bool(data_name) and data_name != spec.get("dataset")
        if other_data:
            if not any_data:
                continue
            label = f"{label} ({data_name})"
        compat = bool(identity.get("compat", False))
        if compat:
            label += " [compat]"
        provenance_file = run_dir / "provenance.json"
        provenance = json.loads(provenance_file.read_text()) if provenance_file.exists() else {}
        by_metric = {m: r for m, r in zip(summary["metric"], summary.to_dict("records"))}
        row = Row(task=_run_task(identity, condition, protocol, tasks), source="measured", method=label,
                  cells={}, compat=compat, run_dir=str(run_dir), data=data_name, ranked=not other_data)
        for column in spec["columns"]:
            metric = column.get("metric")
            if compat and column.get("compat_metric"):
                metric = column["compat_metric"]
            record = by_metric.get(metric) if metric else None
            if record is None:
                row.cells[column["name"]] = ""
                continue
            row.cells[column["name"]] = _format_measured(float(record["value"]), column)
            pid = str(record["provenance_id"])
            row.provenance[column["name"]] = pid
            provenance_ids.setdefault(column["name"], {})[pid] = _settings_summary(provenance.get(pid, {}))
        rows.append(row)
    footnotes = []
    for column in spec["columns"]:
        for pid, summary_text in provenance_ids.get(column["name"], {}).items():
            footnotes.append(f"{column['name']} (×{column.get('scale', 1)}): {pid} — {summary_text}")
    for row in rows:
        footnotes.append(f"{row.method}: compat={'on' if row.compat else 'off'} ({row.run_dir})")
    return rows, footnotes


def build_table(table_id: str, output_dir: str | Path | None = None, *, csv_path: str | Path | None = None,
                conf_dir: Path | None = None, spec: dict[str, Any] | None = None,
                any_data: bool = False) -> PaperTable:
    spec = spec if spec is not None else load_spec(table_id, conf_dir)
    reported = load_reported(table_id, csv_path)
    rows = reported_rows(spec, reported)
    tasks = list(dict.fromkeys(reported["task"]))
    footnotes: list[str] = []
    if output_dir is not None:
        measured, footnotes = measured_rows(spec, Path(output_dir), tasks, any_data)
        # measured rows go right after their task's reported rows
        ordered: list[Row] = []
        for task in tasks + sorted({r.task for r in measured} - set(tasks)):
            ordered += [r for r in rows if r.task == task] + [r for r in measured if r.task == task]
        rows = ordered
    return PaperTable(spec=spec, rows=rows, footnotes=footnotes)


# ------------------------------------------------------------------------- ranking


def ranks(table: PaperTable) -> dict[tuple[int, str], int]:
    """(row index, column) -> 1 (best) or 2 (second), per task and column direction.

    Only rows of the table's own dataset compete: a run on another dataset (``any_data``)
    is neither marked nor counted when the best and second values are found."""
    marks: dict[tuple[int, str], int] = {}
    for task in dict.fromkeys(r.task for r in table.rows):
        indices = [i for i, r in enumerate(table.rows) if r.task == task and r.ranked]
        for column in table.columns:
            name = column["name"]
            values = {}
            for i in indices:
                try:
                    values[i] = float(table.rows[i].cells.get(name, ""))
                except ValueError:
                    continue
            distinct = sorted(set(values.values()), reverse=bool(column["higher_is_better"]))
            if len(values) < 2:
                continue
            for i, value in values.items():
                if value == distinct[0]:
                    marks[(i, name)] = 1
                elif len(distinct) > 1 and value == distinct[1]:
                    marks[(i, name)] = 2
    return marks


def unranked_note(table: PaperTable) -> str | None:
    """The note on rows of other datasets, or None when the table has none."""
    others = table.unranked
    if not others:
        return None
    datasets = ", ".join(dict.fromkeys(str(row.data) for row in others))
    return (f"Rows on other datasets than {table.spec.get('dataset')} ({datasets}; labelled 'method (data)') "
            "are shown for reference only: not ranked, not comparable with the reported numbers.")


# ------------------------------------------------------------------------- render


def to_markdown(table: PaperTable) -> str:
    spec = table.spec
    marks = ranks(table)
    lead = (["Task"] if table.multi_task else []) + ["Source", "Method"]
    header = lead + [f"{c['name']} {arrow(c['higher_is_better'])}" for c in table.columns]
    rows = []
    for i, row in enumerate(table.rows):
        cells = ([row.task] if table.multi_task else []) + [row.source, row.method]
        for column in table.columns:
            value = row.cells.get(column["name"], "") or EMPTY
            mark = marks.get((i, column["name"]))
            cells.append(f"**{value}**" if mark == 1 else f"_{value}_" if mark == 2 else value)
        rows.append(cells)
    lines = [f"### {spec.get('title', spec['id'])}", "", spec.get("caption", ""), ""] + markdown_table(header, rows)
    lines += ["", (f"Best in **bold**, second _underscored_ (per task, among rows on {spec.get('dataset')}). "
              f"Reported: {spec.get('paper', '')} ({spec.get('title', '')}). Measured: protocol="
              f"{spec.get('protocol')}, dataset={spec.get('dataset')}.")]
    note = unranked_note(table)
    if note:
        lines += ["", note]
    if table.footnotes:
        lines += [""] + [f"{n}. {text}" for n, text in enumerate(table.footnotes, 1)]
    return "\n".join(lines) + "\n"


def to_latex(table: PaperTable) -> str:
    spec = table.spec
    marks = ranks(table)
    lead = (["Task"] if table.multi_task else []) + ["Source", "Method"]
    header = lead + [f"{latex_escape(c['name'])} {arrow(c['higher_is_better'], latex=True)}" for c in table.columns]
    rows: list[list[str] | str] = []
    previous_task = None
    for i, row in enumerate(table.rows):
        if previous_task is not None and row.task != previous_task:
            rows.append(r"\midrule")
        previous_task = row.task
        cells = ([latex_escape(row.task)] if table.multi_task else []) + [row.source, latex_escape(row.method)]
        for column in table.columns:
            value = row.cells.get(column["name"], "")
            mark = marks.get((i, column["name"]))
            text = value if value else "--"
            cells.append(rf"\textbf{{{text}}}" if mark == 1 else rf"\underline{{{text}}}" if mark == 2 else text)
        rows.append(cells)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(spec.get('caption', ''))}}}",
             rf"\label{{tab:{spec['id']}}}"]
    lines += latex_tabular("l" * len(lead) + "c" * len(table.columns), header, rows)
    note = unranked_note(table)
    if table.footnotes or note:
        lines.append(r"\par\footnotesize")
    if note:
        lines.append(rf"{latex_escape(note)}\\")
    if table.footnotes:
        lines += [rf"{n}. {latex_escape(t)}\\" for n, t in enumerate(table.footnotes, 1)]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(table: PaperTable) -> str:
    records = []
    for row in table.rows:
        record = {"table": table.spec["id"], "task": row.task, "source": row.source, "method": row.method,
                  "compat": "" if row.compat is None else str(row.compat)}
        record.update({c["name"]: row.cells.get(c["name"], "") for c in table.columns})
        record["provenance"] = ";".join(f"{k}={v}" for k, v in row.provenance.items())
        record["run_dir"] = row.run_dir or ""
        records.append(record)
    columns = ["table", "task", "source", "method", "compat"] + [c["name"] for c in table.columns] + ["provenance", "run_dir"]
    return pd.DataFrame(records, columns=columns).to_csv(index=False)


def write_table(table: PaperTable, out_dir: str | Path, fmt: str = "all") -> list[Path]:
    if fmt not in ("md", "latex", "csv", "all"):
        raise FvrBenchError(f"format must be md, latex, csv or all, not {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, suffix, render in (("md", "md", to_markdown), ("latex", "tex", to_latex), ("csv", "csv", to_csv)):
        if fmt in (kind, "all"):
            path = out_dir / f"{table.spec['id']}.{suffix}"
            atomic_write_text(path, render(table))
            written.append(path)
    return written


def table_command(args: list[str]) -> None:
    """``python -m fvr_bench table table=<id> [format=…] [out_dir=…]``."""
    from omegaconf import OmegaConf

    from fvr_bench.config import compose

    cfg = compose("table", args)
    spec = OmegaConf.to_container(cfg.table, resolve=True)
    table = build_table(spec["id"], cfg.paths.output_dir, csv_path=cfg.get("reported_csv"), spec=spec,
                        any_data=bool(cfg.get("any_data", False)))
    written = write_table(table, cfg.out_dir, str(cfg.format))
    print(to_markdown(table))
    for path in written:
        print(f"wrote {path}")
