"""``python -m fvr_bench data curate``: grade every clip of a dataset, keep the best.

Output folder ``cfg.out`` (default ``<outputs>/curation/<data name>/``):

- ``scores.csv``  one row per clip (columns: :data:`COLUMNS`), replaced atomically
  after every clip, so a killed run resumes where it stopped (clips already in the CSV
  are not graded again);
- ``answers/<clip_id>.txt``  the model's raw answer (written before the clip's row);
- ``kept.txt``  clip ids with ``final >= threshold`` (and none of ``exclude_flags``);
- ``summary.json``  counts, tiers, mean final score; ``prompt.txt`` the exact prompt;
  ``run.json`` what a resumed run must match (model, prompt, frames, face crops).

The threshold and ``exclude_flags`` are applied when the run finishes, to every row:
re-running with another threshold rewrites ``kept`` and ``kept.txt`` without grading
anything again. ``reparse=true`` re-reads every stored answer with the current parser.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from fvr_bench.config import build
from fvr_bench.curation.parse import ParsedAnswer, flag_kind, is_kept, parse_answer
from fvr_bench.curation.rubric import VIVIDFACE_RUBRIC
from fvr_bench.errors import ConfigError, DataError
from fvr_bench.io import atomic_write_text, csv_text
from fvr_bench.results import RunDir

DIMENSIONS = [d.key for d in VIVIDFACE_RUBRIC.dimensions]
COLUMNS = [
    "clip_id", "status", *DIMENSIONS, "base", "adjustments", "final", "reported_final", "tier", "kept", "flags",
    "reasons", "critical_issues", "motion_blur_check", "face_region", "frames", "answer_file", "seconds",
]
# status: scored (all five scores read) | incomplete (some missing) | unparseable | no_face


def _safe_name(clip_id: str) -> str:
    """A file name for a clip id; ids that needed changing get a hash suffix so two ids
    never share an answer file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", clip_id)
    return safe if safe == clip_id else f"{safe}-{hashlib.sha1(clip_id.encode()).hexdigest()[:8]}"


def score_row(clip_id: str, parsed: ParsedAnswer, region: str, indices: list[int], answer_file: str,
              seconds: float) -> dict[str, Any]:
    """The ``scores.csv`` row of one graded clip (``kept`` is filled in at the end).
    ``region``/``indices``: how the face crops were made (:class:`FaceCrops`)."""
    status = "scored" if parsed.final is not None else ("incomplete" if parsed.parseable else "unparseable")
    flags = list(parsed.flags)
    if region == "full_frame":
        flags.append("no_face_full_frame")
    return {
        "clip_id": clip_id,
        "status": status,
        **{key: _number(parsed.scores.get(key)) for key in DIMENSIONS},
        "base": _number(parsed.base),
        "adjustments": json.dumps([a.as_dict() for a in parsed.adjustments], ensure_ascii=False),
        "final": _number(parsed.final),
        "reported_final": _number(parsed.reported.get("final")),
        "tier": parsed.tier or "",
        "flags": ";".join(flags),
        "reasons": json.dumps(parsed.reasons, ensure_ascii=False),
        "critical_issues": json.dumps(parsed.critical_issues, ensure_ascii=False),
        "motion_blur_check": json.dumps(parsed.motion_blur_check, ensure_ascii=False),
        "face_region": region,
        "frames": " ".join(str(i) for i in indices),
        "answer_file": answer_file,
        "seconds": round(seconds, 3),
    }


def no_face_row(clip_id: str, seconds: float) -> dict[str, Any]:
    return {"clip_id": clip_id, "status": "no_face", "flags": "no_face", "face_region": "none",
            "adjustments": "[]", "reasons": "{}", "critical_issues": "[]", "motion_blur_check": "{}",
            "answer_file": "", "seconds": round(seconds, 3)}


def _number(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return int(value) if float(value).is_integer() else float(value)


class CurationStore:
    """``scores.csv`` of one curation folder: rows in clip order, atomic replacement."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dir = RunDir(out)
        self.scores_path = out / "scores.csv"
        self.run_json_path = self.dir.run_json_path
        self.rows: list[dict[str, Any]] = []
        if self.scores_path.exists():
            frame = pd.read_csv(self.scores_path, dtype=str, keep_default_na=False)
            missing = [c for c in ("clip_id", "status", "final") if c not in frame.columns]
            if missing:
                raise DataError(f"{self.scores_path}: not a curation scores file (no column {', '.join(missing)}); "
                                f"move it away or choose out=<another folder>")
            self.rows = frame.to_dict("records")

    def check(self, identity: dict[str, Any], overwrite: bool) -> None:
        """Refuse to resume results of another identity (unless ``overwrite``); writes nothing."""
        self.dir.check(identity, overwrite, "out=<another folder>")

    def open(self, identity: dict[str, Any], overwrite: bool) -> None:
        """Start or resume: ``overwrite`` drops earlier rows; records the identity."""
        self.check(identity, overwrite)
        if overwrite:
            self.rows = []
            self.scores_path.unlink(missing_ok=True)
        self.dir.write_identity(identity)

    def done(self) -> set[str]:
        return {str(row["clip_id"]) for row in self.rows}

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        atomic_write_text(self.scores_path, csv_text(self.rows, COLUMNS, True))


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def apply_threshold(rows: list[dict[str, Any]], threshold: float, exclude_flags: tuple[str, ...]) -> list[str]:
    """Set ``kept`` on every row; returns the kept clip ids in row order."""
    kept = []
    for row in rows:
        flags = [f for f in str(row.get("flags") or "").split(";") if f]
        keep = is_kept(_as_float(row.get("final")), flags, threshold, exclude_flags)
        row["kept"] = "true" if keep else "false"
        if keep:
            kept.append(str(row["clip_id"]))
    return kept


def summarise(rows: list[dict[str, Any]], kept: list[str], threshold: float, total_clips: int) -> dict[str, Any]:
    finals = [f for f in (_as_float(r.get("final")) for r in rows) if f is not None]
    flags = Counter(flag_kind(f) for r in rows for f in str(r.get("flags") or "").split(";") if f)
    return {
        "clips_in_dataset": total_clips,
        "clips_graded": len(rows),
        "kept": len(kept),
        "threshold": threshold,
        "status": dict(Counter(str(r.get("status")) for r in rows)),
        "tiers": dict(Counter(str(r.get("tier")) for r in rows if r.get("tier"))),
        "final_mean": sum(finals) / len(finals) if finals else None,
        "final_min": min(finals) if finals else None,
        "final_max": max(finals) if finals else None,
        "flags": dict(sorted(flags.items())),
    }


def curate_command(cfg) -> Path:
    """Grade the clips of ``cfg.data`` with ``cfg.scorer`` on ``cfg.faces`` crops; write
    ``scores.csv``, ``answers/``, ``kept.txt`` and ``summary.json`` under ``cfg.out``;
    return that folder. Resumable; see the module docstring."""
    from omegaconf import OmegaConf
    from tqdm.auto import tqdm

    threshold = float(cfg.threshold)
    exclude_flags = tuple(cfg.get("exclude_flags") or ())
    limit = cfg.get("limit_clips")
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"limit_clips must be >= 1 or null, got {limit}")

    dataset = build(cfg.data, "data")
    scorer = build(cfg.scorer, "scorer")
    extractor = build(cfg.faces, "faces")
    out = Path(cfg.out)
    overwrite = bool(cfg.get("overwrite", False))
    store = CurationStore(out)
    identity = {"rubric": VIVIDFACE_RUBRIC.name, "data": cfg.data.name, "faces": extractor.settings(), **scorer.identity()}
    store.check(identity, overwrite)

    clip_ids = dataset.clip_ids()
    if limit is not None:
        clip_ids = clip_ids[: int(limit)]
    done = set() if overwrite else store.done()
    todo = [c for c in clip_ids if c not in done]
    if todo:
        scorer.load()  # a missing model stops here, before anything is written
    store.open(identity, overwrite)
    atomic_write_text(out / "prompt.txt", scorer.prompt(scorer.frames) + "\n")
    store.dir.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    for clip_id in tqdm(todo, desc=f"grading {cfg.data.name}", unit="clip", disable=not cfg.get("progress", True)):
        start = time.perf_counter()
        sample = dataset.load(clip_id)
        video = sample.gt if sample.gt is not None else sample.lq
        crops = extractor.extract(video, scorer.frames, clip_id)
        if crops is None:
            store.append(no_face_row(clip_id, time.perf_counter() - start))
            continue
        answer = scorer.answer(crops.images)
        answer_file = f"answers/{_safe_name(clip_id)}.txt"
        atomic_write_text(out / answer_file, answer)
        store.append(score_row(clip_id, parse_answer(answer), crops.region, crops.indices, answer_file,
                               time.perf_counter() - start))

    if cfg.get("reparse", False):
        reparse(store)
    kept = apply_threshold(store.rows, threshold, exclude_flags)
    store.write()
    atomic_write_text(out / "kept.txt", "".join(f"{c}\n" for c in kept))
    summary = summarise(store.rows, kept, threshold, len(dataset.clip_ids()))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return out


def reparse(store: CurationStore) -> None:
    """Re-read every stored answer with the current parser (no model needed)."""
    for index, row in enumerate(store.rows):
        answer_file = str(row.get("answer_file") or "")
        if not answer_file:
            continue
        path = store.out / answer_file
        if not path.is_file():
            raise DataError(f"{path}: the stored answer of clip {row['clip_id']} is missing; "
                            f"reparse needs every answers/ file (or rerun with overwrite=true)")
        indices = [int(i) for i in str(row.get("frames") or "").split()]
        store.rows[index] = score_row(str(row["clip_id"]), parse_answer(path.read_text()), str(row.get("face_region") or ""),
                                      indices, answer_file, _as_float(row.get("seconds")) or 0.0)


def format_summary(out: Path) -> str:
    """A few lines for the terminal after a run."""
    summary = json.loads((out / "summary.json").read_text())
    mean = summary["final_mean"]
    lines = [
        f"graded {summary['clips_graded']} of {summary['clips_in_dataset']} clips; kept {summary['kept']} "
        f"(final >= {summary['threshold']:g})" + (f"; mean final {mean:.1f}" if mean is not None else ""),
        f"status: {', '.join(f'{k} {v}' for k, v in sorted(summary['status'].items()))}",
        f"scores: {out / 'scores.csv'}   kept: {out / 'kept.txt'}",
    ]
    return "\n".join(lines)
