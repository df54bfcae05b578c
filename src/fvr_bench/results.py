"""A run directory: resolved config, per-clip rows, summary — atomic and resumable.

Layout of ``outputs/<data>/<degradation>/<method>/``:

- ``config.yaml``   the resolved configuration of the run (for people);
- ``run.json``      the fields that decide whether two runs may share results (for the code);
- ``per_clip.csv``  one row per (clip, metric): the source of truth; ``frames`` is the
  number of frames that entered the value and ``note`` says why others did not (a face
  metric's frames without a face) or why the clip has no value (a metric that cannot
  score its frame size);
- ``provenance.json`` provenance id → full provenance of every metric column;
- ``summary.csv``   mean over clips per metric, derived from ``per_clip.csv``; its
  ``note`` gathers the clips' notes;
- ``timing.csv``    where the time of each clip went (kept out of the summary: timings
  differ between identical runs, the summary must not), one row per clip:
  ``clip_id, seconds, frames, load_s, degrade_s, restore_s, <metric_id>_s …, total_s``
  (:data:`TIMING_COLUMNS`). ``seconds`` is the restoration time (= ``restore_s``), the
  one column of earlier run directories, kept so that their readers and rows still fit;
  ``total_s`` is the whole clip, stages and writing its results included. A run resumed
  in a directory whose ``timing.csv`` has fewer columns rewrites it with the union of
  the columns, old rows' new cells empty;
- ``parts/``        only while a sharded run (``devices=N``) is under way or was killed:
  ``per_clip.<shard>.csv`` / ``timing.<shard>.csv``, the rows each process finished.
  :meth:`ResultStore.merge_shards` folds them into ``per_clip.csv`` / ``timing.csv`` in
  the dataset's clip order and removes them, so a finished sharded run directory is the
  same as a one-process one.

Every file is replaced atomically (write to a temporary file, fsync, ``os.replace``): a
run killed at any moment leaves the previous complete file, never a torn one, and a
restarted run skips the clips already in ``per_clip.csv`` or in a part file.

One run directory has one writer: :class:`RunLock` (``.lock``, an advisory ``flock``
that the operating system releases when the holder dies, also on ``kill -9``) makes a
second run into the same directory stop with the holder's PID instead of computing
everything twice. The processes of one sharded run write only their own part files and
run under their launcher's lock.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fvr_bench.errors import ResultsMismatchError, RunInProgressError
from fvr_bench.io import atomic_write_bytes, atomic_write_text, csv_text, read_rows, rows_of


PER_CLIP_COLUMNS = ["clip_id", "metric", "value", "higher_is_better", "provenance_id", "frames", "note"]
SUMMARY_COLUMNS = ["metric", "value", "std", "n_clips", "higher_is_better", "provenance_id", "note"]
# the leading columns of timing.csv; the metrics' ``<metric_id>_s`` columns follow, ``total_s`` last
TIMING_COLUMNS = ["clip_id", "seconds", "frames", "load_s", "degrade_s", "restore_s"]
TIMING_TOTAL = "total_s"


def _timing_columns(*headers: Sequence[str]) -> list[str]:
    """The union of timing.csv headers in order of appearance (``clip_id`` first,
    ``total_s`` last), so rows of older and newer layouts share one file."""
    columns: list[str] = ["clip_id"]
    for header in headers:
        columns.extend(column for column in header if column not in columns)
    if TIMING_TOTAL in columns:
        columns.remove(TIMING_TOTAL)
        columns.append(TIMING_TOTAL)
    return columns


def _header_of(text: str) -> list[str]:
    """The column names of CSV ``text`` (empty for an empty file)."""
    first = text.split("\n", 1)[0]
    return next(csv.reader([first]), []) if first else []


def _timing_header(path: Path) -> list[str]:
    return _header_of(path.read_text()) if path.exists() else []


def _timing_cell(value: Any) -> Any:
    """Seconds with microsecond resolution (as timing.csv always had), counts as given."""
    if isinstance(value, float):
        return f"{value:.6f}"
    return value


def refuse_other_identity(
    run_json: Path, identity: dict[str, Any], overwrite: bool, elsewhere: str, has_results: bool = True
) -> dict[str, Any]:
    """``identity`` as JSON types; raises :class:`ResultsMismatchError` (naming the fields that
    differ) when ``run_json`` records another identity, the folder holds results
    (``has_results``) and ``overwrite`` is off. Writes nothing. A ``run.json`` without results
    (a run that stopped before its first clip) is no conflict: there is nothing to mix."""
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
    if run_json.exists() and has_results and not overwrite:
        stored = json.loads(run_json.read_text())
        differing = sorted(key for key in set(stored) | set(identity) if stored.get(key) != identity.get(key))
        if differing:
            raise ResultsMismatchError(
                f"{run_json.parent} holds results of a different configuration (differs in: {', '.join(differing)}). "
                f"Results are never mixed: pass overwrite=true to replace them, or {elsewhere}."
            )
    return identity


def _rows_by_clip(paths: Iterable[Path], skip: set[str]) -> dict[str, list[dict[str, str]]]:
    """Rows of the part files grouped by clip, leaving out the clips in ``skip``. A clip
    belongs to the first file that holds it: each clip's rows are written in one atomic
    replace, so a file holds all of a clip's rows or none."""
    grouped: dict[str, list[dict[str, str]]] = {}
    owner: dict[str, Path] = {}
    for path in paths:
        for row in read_rows(path):
            clip_id = row["clip_id"]
            if clip_id in skip or owner.setdefault(clip_id, path) != path:
                continue
            grouped.setdefault(clip_id, []).append(row)
    return grouped


PARTS_DIR = "parts"


def _summary_note(group: pd.DataFrame, n_finite: int) -> str:
    """The clips' notes of one metric, each distinct note once with the number of clips
    that have it: "2 of 5 clips: no face in 3 of 9 frames (skipped)"."""
    if "note" not in group.columns:
        return ""
    notes = [str(note) for note in group["note"] if isinstance(note, str) and note.strip()]
    if not notes:
        return ""
    counts: dict[str, int] = {}
    for note in notes:
        counts[note] = counts.get(note, 0) + 1
    parts = [f"{count} of {len(group)} clips: {note}" for note, count in counts.items()]
    if len(parts) > 3:
        parts = parts[:3] + [f"… {len(parts) - 3} more notes in per_clip.csv"]
    if n_finite == 0:
        parts.insert(0, "no clip has a value")
    return "; ".join(parts)


class RunLock:
    """The one writer of a run directory: ``with RunLock(run_dir): ...``.

    An exclusive, non-blocking ``flock`` on ``<run_dir>/.lock``; the file records the
    holder's PID, host and start time for the message a second writer gets
    (:class:`RunInProgressError`). The kernel drops the lock when the holder exits or is
    killed, so a crashed run never leaves a stale lock. ``flock`` is per node: on a
    network filesystem shared by several machines it may not exclude a writer elsewhere.
    """

    FILE = ".lock"

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / self.FILE
        self._handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise RunInProgressError(
                f"{self.path.parent} is being written by another run ({holder}); results are never written "
                "twice: wait for it to finish (then run again to resume), or use another paths.output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class RunDir:
    """A results folder and its identity, shared by the evaluation's :class:`ResultStore`
    and the curation store: ``run.json`` (the fields that must match to add results to
    the folder, checked by :func:`refuse_other_identity`), ``config.yaml`` (the resolved
    configuration, for people) and the folder's one-writer :class:`RunLock`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.run_json_path = self.path / "run.json"
        self.config_path = self.path / "config.yaml"

    def check(self, identity: dict[str, Any], overwrite: bool, elsewhere: str, has_results: bool = True) -> dict[str, Any]:
        """:func:`refuse_other_identity` of this folder's ``run.json``; writes nothing."""
        return refuse_other_identity(self.run_json_path, identity, overwrite, elsewhere, has_results=has_results)

    def write_identity(self, identity: dict[str, Any]) -> None:
        """Create the folder and record ``identity`` in ``run.json`` (sorted keys, indent 2)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_json_path, json.dumps(identity, indent=2, sort_keys=True) + "\n")

    def write_config(self, config_yaml: str) -> None:
        atomic_write_text(self.config_path, config_yaml)

    def lock(self) -> RunLock:
        return RunLock(self.path)


class ResultStore:
    """Per-clip results of one run directory.

    ``shard``: the name of one process of a sharded run (``"rank1"``). Its per-clip rows
    and timings go to its own part files under ``parts/``, so processes never write the
    same file; features (one file per clip) and everything else stay shared. Only the
    store without a shard opens the run, merges the parts and writes the summary.
    """

    def __init__(self, run_dir: str | os.PathLike, shard: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.dir = RunDir(self.run_dir)
        self.shard = shard
        self.parts_dir = self.run_dir / PARTS_DIR
        if shard is None:
            self.per_clip_path = self.run_dir / "per_clip.csv"
            self.timing_path = self.run_dir / "timing.csv"
        else:
            if not shard or "/" in shard or "." in shard:
                raise ValueError(f"shard name {shard!r}: use a plain name such as 'rank0'")
            self.per_clip_path = self.parts_dir / f"per_clip.{shard}.csv"
            self.timing_path = self.parts_dir / f"timing.{shard}.csv"
        self.summary_path = self.run_dir / "summary.csv"
        self.run_json_path = self.dir.run_json_path
        self.provenance_path = self.run_dir / "provenance.json"
        self._per_clip_text: str | None = None

    def _require_main(self, action: str) -> None:
        if self.shard is not None:
            raise ValueError(f"{action} belongs to the run's main store, not to shard {self.shard}")

    # -- opening ---------------------------------------------------------------------

    def open(self, identity: dict[str, Any], config_yaml: str, overwrite: bool = False) -> None:
        """Start or resume a run. ``identity`` holds what must match to resume (method,
        data, degradation, metrics, seed, code version); a mismatch stops the run."""
        self._require_main("opening the run")
        identity = self.dir.check(identity, overwrite, "paths.output_dir=<another folder>", has_results=self.has_results())
        if overwrite:
            for path in (self.per_clip_path, self.summary_path, self.provenance_path, self.timing_path,
                         *self._part_paths("per_clip"), *self._part_paths("timing")):
                path.unlink(missing_ok=True)
            self._per_clip_text = None
        self.dir.write_identity(identity)
        self.dir.write_config(config_yaml)

    def has_results(self) -> bool:
        """Whether any clip's rows (``per_clip.csv`` or a part file) or features are here."""
        if self.per_clip_path.exists() and len(self.per_clip()):
            return True
        if any(self._part_paths("per_clip")):
            return True
        features = self.run_dir / "features"
        return features.is_dir() and any(features.rglob("*.npz"))

    # -- per-clip rows ---------------------------------------------------------------

    def _text(self) -> str:
        if self._per_clip_text is None:
            self._per_clip_text = (
                self.per_clip_path.read_text() if self.per_clip_path.exists() else csv_text([], PER_CLIP_COLUMNS, True)
            )
        return self._per_clip_text

    def per_clip(self) -> pd.DataFrame:
        """All per-clip rows as a DataFrame with ``PER_CLIP_COLUMNS``."""
        frame = pd.read_csv(io.StringIO(self._text()), dtype={"clip_id": str})
        return frame

    def finished_clips(self) -> set[str]:
        """Clips with results anywhere in the run directory: ``per_clip.csv`` and the part
        files of every shard (also those a killed run with another device count left)."""
        finished = set(self.per_clip()["clip_id"])
        main_path = self.run_dir / "per_clip.csv"
        for path in [main_path, *self._part_paths("per_clip")]:
            if path != self.per_clip_path and path.exists():
                finished.update(row["clip_id"] for row in read_rows(path))
        return finished

    def append_clip(self, clip_id: str, rows: list[dict[str, Any]], seconds: float | None = None,
                    timing: dict[str, Any] | None = None) -> None:
        """Add every metric row of one finished clip in a single atomic replace.

        ``timing``: the clip's row of ``timing.csv`` without ``clip_id`` (stage seconds,
        ``frames``; see :data:`TIMING_COLUMNS`); ``seconds``: the restoration seconds alone
        (the ``seconds`` column). The timing row is written after the per-clip rows: a
        clip is finished once those are written, its timing is a report."""
        if clip_id in set(self.per_clip()["clip_id"]):
            raise ValueError(f"clip {clip_id} is already in {self.per_clip_path}")
        text = self._text() + csv_text(({"clip_id": clip_id, **row} for row in rows), PER_CLIP_COLUMNS, False)
        atomic_write_text(self.per_clip_path, text)
        self._per_clip_text = text
        if seconds is not None or timing:
            row = {"clip_id": clip_id, **({"seconds": seconds} if seconds is not None else {}), **(timing or {})}
            self._append_timing({key: _timing_cell(value) for key, value in row.items()})

    def _append_timing(self, row: dict[str, Any]) -> None:
        """Add one clip's row to this store's timing file (a row of the same clip, left by a
        run killed between its per-clip rows and its timing, is replaced). Rewrites the file
        with the union of the columns when the row brings columns the header lacks."""
        text = self.timing_path.read_text() if self.timing_path.exists() else ""  # read once per clip
        header = _header_of(text)
        columns = _timing_columns(header, list(row))
        old_rows = rows_of(text) if header else []
        if header == columns and all(old["clip_id"] != row["clip_id"] for old in old_rows):
            # the usual case: append one line
            atomic_write_text(self.timing_path, text + csv_text([row], columns, False))
            return
        kept = [old for old in old_rows if old["clip_id"] != row["clip_id"]]
        atomic_write_text(self.timing_path, csv_text([*kept, row], columns, True))

    def record_provenance(self, provenance: dict[str, dict[str, Any]]) -> None:
        """Merge ``provenance_id → provenance dict`` into ``provenance.json``."""
        stored = json.loads(self.provenance_path.read_text()) if self.provenance_path.exists() else {}
        stored.update(provenance)
        atomic_write_text(self.provenance_path, json.dumps(stored, indent=2, sort_keys=True, default=str) + "\n")

    # -- shards ----------------------------------------------------------------------

    def _part_paths(self, kind: str) -> list[Path]:
        return sorted(self.parts_dir.glob(f"{kind}.*.csv")) if self.parts_dir.is_dir() else []

    def merge_shards(self, clip_order: Sequence[str]) -> list[str]:
        """Fold every part file into ``per_clip.csv`` and ``timing.csv``; returns the clips added.

        Rows already in the main files stay first and unchanged; the parts' clips follow in
        ``clip_order`` (the dataset's order; unknown clips last, by name), so a sharded run
        writes byte for byte what one process writes. Each merged file is replaced
        atomically before any part file is removed, and clips already present are skipped:
        a merge killed at any point is completed by the next one, without duplicates.
        Rows are copied as text, so values round-trip exactly.
        """
        self._require_main("merging shards")
        per_clip_parts, timing_parts = self._part_paths("per_clip"), self._part_paths("timing")
        if not per_clip_parts and not timing_parts:
            return []
        position = {clip_id: index for index, clip_id in enumerate(clip_order)}

        def in_clip_order(clip_id: str) -> tuple[int, str]:
            return position.get(clip_id, len(position)), clip_id

        present = set(self.per_clip()["clip_id"])
        new_rows = _rows_by_clip(per_clip_parts, skip=present)
        added = sorted(new_rows, key=in_clip_order)
        if added:
            text = self._text() + csv_text((row for clip_id in added for row in new_rows[clip_id]), PER_CLIP_COLUMNS, False)
            atomic_write_text(self.per_clip_path, text)
            self._per_clip_text = text

        # the parts' headers may differ from the main file's (a run directory of an older
        # layout resumed): the merged file has the union of the columns, missing cells empty
        timing_text = self.timing_path.read_text() if self.timing_path.exists() else ""
        timed_rows = rows_of(timing_text) if timing_text else []
        timed = {row["clip_id"] for row in timed_rows}
        new_timings = _rows_by_clip(timing_parts, skip=timed)
        if new_timings:
            header = _header_of(timing_text)
            columns = _timing_columns(header, *(_timing_header(path) for path in timing_parts))
            ordered = [row for clip_id in sorted(new_timings, key=in_clip_order) for row in new_timings[clip_id]]
            if header == columns:
                atomic_write_text(self.timing_path, timing_text + csv_text(ordered, columns, False))
            else:
                atomic_write_text(self.timing_path, csv_text([*timed_rows, *ordered], columns, True))

        for path in (*per_clip_parts, *timing_parts):
            path.unlink()
        # what is left are temporary files of writes killed mid-way (SIGKILL); every
        # process of the run has stopped by now, so nothing will complete them
        for leftover in self.parts_dir.glob(".*"):
            leftover.unlink()
        if not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()
        return added

    # -- set-level features ----------------------------------------------------------

    def features_path(self, metric_id: str, clip_id: str) -> Path:
        return self.run_dir / "features" / metric_id / f"{clip_id}.npz"

    def save_features(self, metric_id: str, clip_id: str, features: dict[str, np.ndarray]) -> None:
        """Per-clip features of a set-level metric (FVD), written before the clip's rows so
        a finished clip always has them."""
        buffer = io.BytesIO()
        np.savez(buffer, **features)
        atomic_write_bytes(self.features_path(metric_id, clip_id), buffer.getvalue())

    def load_features(self, metric_id: str, clip_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Features of ``clip_ids`` stacked in that order → ``{name: (N, D)}``."""
        stacked: dict[str, list[np.ndarray]] = {}
        for clip_id in clip_ids:
            with np.load(self.features_path(metric_id, clip_id)) as data:
                for name in data.files:
                    stacked.setdefault(name, []).append(data[name].reshape(1, -1))
        return {name: np.concatenate(parts) for name, parts in stacked.items()}

    # -- summary ---------------------------------------------------------------------

    def write_summary(self, extra_rows: Iterable[dict[str, Any]] = ()) -> pd.DataFrame:
        """Mean and standard deviation over clips of every metric, from ``per_clip.csv``.

        Infinite values (PSNR of identical frames) are kept out of the mean and counted in
        ``n_clips`` only when finite; the summary says so through ``n_clips``. Rows whose
        values are all NaN (set-level metrics, whose value comes from ``extra_rows``) are
        not averaged. ``extra_rows``: set-level values and unavailable metrics.
        """
        self._require_main("writing the summary")
        rows = []
        per_clip = self.per_clip()
        extra_rows = list(extra_rows)
        set_level = {row["metric"] for row in extra_rows}
        for (metric, provenance_id), group in per_clip.groupby(["metric", "provenance_id"], sort=True):
            if metric in set_level:
                continue
            values = [v for v in group["value"].astype(float) if math.isfinite(v)]
            note = _summary_note(group, len(values))
            mean = math.fsum(values) / len(values) if values else float("nan")
            std = (
                math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            )
            rows.append(
                {
                    "metric": metric,
                    "value": mean,
                    "std": std,
                    "n_clips": len(values),
                    "higher_is_better": bool(group["higher_is_better"].iloc[0]),
                    "provenance_id": provenance_id,
                    "note": note,
                }
            )
        rows.extend({"note": "", **row} for row in extra_rows)
        rows.sort(key=lambda row: row["metric"])
        atomic_write_text(self.summary_path, csv_text(rows, SUMMARY_COLUMNS, True))
        return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
