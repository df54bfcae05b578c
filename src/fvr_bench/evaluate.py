"""clips → degrade (cached) → restore → metrics → ResultStore.

The evaluator never asks what kind of method or metric it runs: everything it needs is
in the restorer contract (:mod:`fvr_bench.methods.base`), the metric class attributes
(:mod:`fvr_bench.metrics.base`) and the dataset contract (:mod:`fvr_bench.data.base`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import fvr_bench
from fvr_bench import weights
from fvr_bench.config import build
from fvr_bench.data.base import ClipSample, VideoDataset
from fvr_bench.degradations import LQCache, build_degradation
from fvr_bench.errors import ConfigError, DataError, RestorerOutputError, WeightsMissingError
from fvr_bench.metrics.base import ClipMetric, SetMetric, VideoMetric
from fvr_bench.results import ResultStore, RunLock
from fvr_bench.scoring import CpuScoringWorker, score_clip
from fvr_bench.video import to_numpy, to_tensor, write_frame_folder, write_video

log = logging.getLogger(__name__)


@dataclass
class PreparedInput:
    """What the restorer receives for one clip (batch of one)."""

    lq: torch.Tensor  # (1, T, 3, h, w) float32 in [0, 1]
    mask: torch.Tensor | None  # (1, T, 1, h, w) bool
    task: str


@dataclass
class ScoredClip:
    """One clip between its restore and its rows' append: the rows scored in this process,
    and, with ``overlap``, the future of the worker's rows (:meth:`Evaluator.write_clip`)."""

    clip_id: str
    rows: list[dict[str, Any]]
    seconds: dict[str, float]  # <metric_id>_s of the metrics scored so far
    notes: str  # the restorer's notes on this clip, for every row ("" if none)
    timing: dict[str, Any]  # frames, load_s, degrade_s, restore_s
    worker_rows: Future | None = None
    busy_s: float = 0.0  # this process's time on the clip before its rows are due


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """The configuration fields that must match for two runs to share a run directory."""
    return {
        "method": OmegaConf.to_container(cfg.method, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "degradation": OmegaConf.to_container(cfg.degradation, resolve=True),
        "metrics": OmegaConf.to_container(cfg.metrics, resolve=True),
        "seed": cfg.seed,
        "protocol": cfg.protocol_name,
        "condition": cfg.condition,
        "compat": cfg.compat,
        "code_version": fvr_bench.__version__,
    }


class Evaluator:
    """Runs one (method, data, degradation, metrics, seed) cell into ``run_dir``.

    ``device``: where the restorer and metrics run; default ``cfg.device``. A sharded run
    (:mod:`fvr_bench.sharding`) builds one evaluator per process on that process's device.
    """

    def __init__(self, cfg: DictConfig, device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.device = device if device is not None else resolve_device(cfg.device)
        self.dataset: VideoDataset = build(cfg.data, "data")
        self.degradation = build_degradation(cfg.degradation)
        self.metrics: dict[str, VideoMetric] = {
            metric_id: build(metric_cfg, f"metric {metric_id}") for metric_id, metric_cfg in cfg.metrics["items"].items()
        }
        for metric_id, metric in self.metrics.items():
            if metric.metric_id != metric_id:
                raise ConfigError(
                    f"metric set '{cfg.metrics.name}': entry '{metric_id}' instantiates metric '{metric.metric_id}'"
                )
            if metric.needs_reference and not self.dataset.has_gt:
                raise ConfigError(
                    f"metric '{metric_id}' needs ground truth, but data={self.dataset.name} has none; "
                    f"use a no-reference metric set (e.g. metrics=no_reference)"
                )
            if not isinstance(metric, (ClipMetric, SetMetric)):
                raise ConfigError(
                    f"metric '{metric_id}' ({type(metric).__qualname__}) is neither a ClipMetric nor a SetMetric "
                    f"(fvr_bench.metrics.base)"
                )
            metric.to(self.metric_device(metric))
        self.unavailable = self.check_weights(cfg.allow_missing)
        self.restorer = build(cfg.method.restorer, f"method {cfg.method.name}")
        if hasattr(self.restorer, "to"):
            self.restorer.to(self.device)
        self.cache = LQCache(Path(cfg.paths.cache_dir) / "lq")
        self.store = ResultStore(self.run_dir)

    def check_weights(self, allow_missing: bool) -> dict[str, str]:
        """Check every metric's pretrained files before the first clip.

        Missing files stop the run with the whole list, unless ``allow_missing``: then the
        metrics that lack them are dropped and reported as unavailable with the reason.
        Never random weights in a real run.
        """
        missing = {metric_id: metric.missing_weights() for metric_id, metric in self.metrics.items()}
        missing = {metric_id: names for metric_id, names in missing.items() if names}
        if not missing:
            return {}
        if not allow_missing:
            names = sorted({name for names in missing.values() for name in names})
            raise WeightsMissingError(
                f"metrics {', '.join(sorted(missing))} need pretrained files that are not here "
                f"(or run with allow_missing=true to compute the other metrics):\n"
                + "\n".join(weights.missing_message(name) for name in names)
            )
        for metric_id, names in missing.items():
            log.warning("metric %s unavailable: missing %s", metric_id, ", ".join(names))
            del self.metrics[metric_id]
        return {metric_id: f"unavailable: missing pretrained file(s) {', '.join(names)}" for metric_id, names in missing.items()}

    # -- inputs ----------------------------------------------------------------------

    def prepare_input(self, sample: ClipSample) -> PreparedInput:
        """The LQ input of a clip: the dataset's own, or the GT degraded (cached, seeded)."""
        if sample.lq is not None:
            return PreparedInput(sample.lq[None], None, self.degradation.task)
        degraded = self.cache.get_or_compute(self.degradation, self.cfg.seed, sample.clip_id, to_numpy(sample.gt))
        mask = None
        if degraded.mask is not None:
            mask = torch.from_numpy(np.ascontiguousarray(degraded.mask))[None, :, None]
        return PreparedInput(to_tensor(degraded.lq)[None], mask, self.degradation.task)

    # -- the loop --------------------------------------------------------------------

    def restore(self, sample: ClipSample, prepared: PreparedInput) -> torch.Tensor:
        out_size = tuple(sample.gt.shape[-2:]) if sample.gt is not None else None
        reference = sample.reference[None].to(self.device) if sample.reference is not None else None
        with torch.inference_mode():
            try:
                restored = self.restorer.restore(
                    prepared.lq.to(self.device),
                    task=prepared.task,
                    reference=reference,
                    mask=None if prepared.mask is None else prepared.mask.to(self.device),
                    out_size=out_size,
                    clip_ids=[sample.clip_id],
                )
            except DataError as error:  # e.g. saved outputs that do not fit: name the GT clip too
                raise DataError(f"{error} (GT clip '{sample.clip_id}': {sample.source})") from error
        self.check_output(sample, prepared, restored, out_size)
        return restored.float()

    def check_output(self, sample: ClipSample, prepared: PreparedInput, restored: Any, out_size) -> None:
        name = self.cfg.method.name
        if not isinstance(restored, torch.Tensor):
            raise RestorerOutputError(f"method {name}, clip {sample.clip_id}: restore returned {type(restored).__name__}, not a tensor")
        num_frames = prepared.lq.shape[1]
        expected = (1, num_frames, 3, *out_size) if out_size is not None else None
        if restored.ndim != 5 or restored.shape[:3] != (1, num_frames, 3) or (
            expected is not None and tuple(restored.shape) != expected
        ):
            raise RestorerOutputError(
                f"method {name}, clip {sample.clip_id} ({sample.source}): restored shape {tuple(restored.shape)}, "
                f"expected {expected or (1, num_frames, 3, 'H', 'W')}"
            )
        if not torch.isfinite(restored).all():
            bad = (~torch.isfinite(restored)).sum().item()
            raise RestorerOutputError(
                f"method {name}, clip {sample.clip_id} ({sample.source}): {bad} NaN/Inf values in the restored clip; "
                f"no results were written for this clip"
            )

    def synchronize(self) -> None:
        """Wait for the device's queued work, so that a stage's time is its own."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def metric_device(self, metric: VideoMetric) -> torch.device:
        """Where ``metric`` scores: the CPU for :meth:`~VideoMetric.cpu_only` metrics (their
        number is then the same on every run device), else the run's device."""
        return torch.device("cpu") if metric.cpu_only() else self.device

    def cpu_metric_ids(self) -> list[str]:
        """The clip metrics that :meth:`evaluate_clips` may score in a worker process."""
        return [metric_id for metric_id, metric in self.metrics.items()
                if isinstance(metric, ClipMetric) and metric.cpu_only()]

    def score(self, sample: ClipSample, restored: torch.Tensor, seconds: dict[str, float] | None = None,
              position: int = 1, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """One row per metric but those in ``skip`` (:func:`fvr_bench.scoring.score_clip`: a
        metric that cannot score this clip gets NaN and the reason in ``note``). CPU-only
        metrics get CPU tensors; set-level features go to the result store.

        ``seconds``: receives ``<metric_id>_s``, each metric's time on this clip. A metric that
        reports its frames gets a bar over them at ``position`` (none when ``cfg.progress`` is off)."""
        preds = restored.clamp(0.0, 1.0)
        groups: dict[torch.device, dict[str, VideoMetric]] = {}
        for metric_id, metric in self.metrics.items():
            if metric_id not in skip:
                groups.setdefault(self.metric_device(metric), {})[metric_id] = metric
        rows: list[dict[str, Any]] = []
        for device, group in groups.items():
            group_rows, group_seconds = score_clip(
                group, preds.to(device), sample.gt[None].to(device) if sample.gt is not None else None,
                clip_id=sample.clip_id, progress=bool(self.cfg.progress), position=position,
                save_features=lambda metric_id, features: self.store.save_features(
                    metric_id, sample.clip_id, {k: v.double().cpu().numpy() for k, v in features.items()}),
                synchronize=self.synchronize)
            rows += group_rows
            if seconds is not None:
                seconds.update(group_seconds)
        return self.in_metric_order(rows)

    def in_metric_order(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        order = {metric_id: index for index, metric_id in enumerate(self.metrics)}
        return sorted(rows, key=lambda row: order[row["metric"]])

    def restorer_notes(self, clip_id: str) -> str:
        """What the restorer reports about a clip it has just restored (e.g. SVFR: no face in its
        reference frame, so no ID tokens): it goes into the note of every row of that clip, the
        values depend on it. Taken right after the restore (the restorer forgets it then)."""
        take_notes = getattr(self.restorer, "take_notes", None)
        notes = [note for noted_clip, note in take_notes() if noted_clip == clip_id] if callable(take_notes) else []
        return "restorer: " + "; ".join(notes) if notes else ""

    def save_restored(self, clip_id: str, restored: torch.Tensor, fps: float) -> None:
        frames = to_numpy(restored[0])
        mode = self.cfg.save_restored
        if mode == "png":
            write_frame_folder(self.run_dir / "restored" / clip_id, frames)
        elif mode == "video":
            write_video(self.run_dir / "restored" / f"{clip_id}.mkv", frames, fps=fps, lossless=True)
        elif mode not in (None, False, "none"):
            raise ConfigError(f"save_restored={mode!r}: choose none, png or video")

    def clip_ids(self) -> list[str]:
        """The clips of this run, in the dataset's order (``limit_clips`` applied)."""
        clip_ids = self.dataset.clip_ids()
        if self.cfg.limit_clips is not None:
            clip_ids = clip_ids[: self.cfg.limit_clips]
        return clip_ids

    def open_run(self, clip_ids: list[str]) -> list[str]:
        """Start or resume the run directory; returns the clips still to do.

        Rows that the processes of a killed sharded run left in part files are merged
        first, so they count as finished whatever the device count is now.
        """
        resolved = OmegaConf.to_yaml(self.cfg, resolve=True)
        self.store.open(run_identity(self.cfg), resolved, overwrite=bool(self.cfg.overwrite))
        self.store.record_provenance(
            {m.provenance().provenance_id: asdict(m.provenance()) for m in self.metrics.values()}
        )
        if callable(getattr(self.restorer, "provenance", None)):  # what determines the restorer's outputs
            self.store.record_provenance({"restorer": self.restorer.provenance()})
        self.store.merge_shards(clip_ids)
        finished = self.store.finished_clips()
        todo = [clip_id for clip_id in clip_ids if clip_id not in finished]
        if finished:
            log.info("resuming %s: %d of %d clips already done", self.run_dir, len(clip_ids) - len(todo), len(clip_ids))
        return todo

    def overlaps(self) -> bool:
        """``overlap``: true | false | auto — auto overlaps only on a GPU, where the CPU is idle while
        the device restores; on a CPU the background thread and the metric worker compete with the
        restorer and the other metrics for the same cores (measured slower on 2 cores, bench/pipeline.py)."""
        setting = str(self.cfg.get("overlap", "auto")).lower()
        if setting not in ("auto", "true", "false"):
            raise ConfigError(f"overlap={setting!r}: auto, true or false")
        return self.device.type == "cuda" if setting == "auto" else setting == "true"

    def load_and_prepare(self, clip_id: str) -> tuple[ClipSample, PreparedInput, float, float]:
        """``(sample, LQ input, load seconds, degrade seconds)`` of one clip: the CPU work that
        :meth:`evaluate_clips` runs ahead, in a background thread, while the previous clip is
        restored and scored (values do not depend on it: both are seeded per clip)."""
        start = time.perf_counter()
        sample = self.dataset.load(clip_id)
        loaded = time.perf_counter()
        prepared = self.prepare_input(sample)
        return sample, prepared, loaded - start, time.perf_counter() - loaded

    def evaluate_clips(self, clip_ids: list[str], store: ResultStore, progress_label: str = "", position: int = 0) -> None:
        """Restore and score ``clip_ids``, appending each clip's rows to ``store`` once all
        of it (features, restored frames) is written, in the order of ``clip_ids``.

        With ``overlap`` (``auto``: when the restorer runs on a GPU) the CPU stays busy while
        the device restores: the next clip is loaded and degraded in a background thread, and
        the CPU-only metrics (:meth:`cpu_metric_ids`) of clip k are scored in a worker process
        (:class:`~fvr_bench.scoring.CpuScoringWorker`) while clip k+1 is restored; clip k's
        rows are written once they are back. Values are those of the serial loop (the same
        metrics on the same CPU tensors); a clip whose rows are not all written is not finished,
        so resuming is unchanged, and an error of clip k+1 surfaces only after clip k's rows are
        written. ``overlap=false`` is the plain serial loop.

        ``position``: the clip bar's terminal line; the frame bars of slow metrics take the next
        two (this process's, the worker's)."""
        progress = tqdm(clip_ids, desc=f"{self.cfg.method.name} on {self.dataset.name}{progress_label}", unit="clip",
                        disable=not self.cfg.progress, position=position)
        overlap = self.overlaps() and len(clip_ids) > 1
        prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fvr-prefetch") if overlap else None
        worker_ids = self.cpu_metric_ids() if overlap else []
        worker = CpuScoringWorker({metric_id: OmegaConf.to_container(self.cfg.metrics["items"][metric_id], resolve=True)
                                   for metric_id in worker_ids}) if worker_ids else None
        waiting: ScoredClip | None = None  # the previous clip, its CPU-only metrics still in the worker
        try:
            pending = prefetch.submit(self.load_and_prepare, clip_ids[0]) if prefetch is not None else None
            for index, clip_id in enumerate(progress):
                # timing.csv: where each clip's time goes (ResultStore, TIMING_COLUMNS); with
                # overlap, load_s / degrade_s and the worker's metrics ran in the background and
                # total_s is the time this process spent on the clip (the run's wall time is their sum)
                start = time.perf_counter()
                if pending is not None:
                    sample, prepared, load_s, degrade_s = pending.result()
                    pending = (prefetch.submit(self.load_and_prepare, clip_ids[index + 1])
                               if index + 1 < len(clip_ids) else None)
                else:
                    sample, prepared, load_s, degrade_s = self.load_and_prepare(clip_id)
                prepared_at = time.perf_counter()
                restored = self.restore(sample, prepared)
                self.synchronize()
                restored_at = time.perf_counter()
                notes = self.restorer_notes(clip_id)
                seconds: dict[str, float] = {}
                rows = self.score(sample, restored, seconds=seconds, position=position + 1, skip=tuple(worker_ids))
                scored = ScoredClip(clip_id, rows, seconds, notes, timing={
                    "frames": int(prepared.lq.shape[1]), "load_s": load_s, "degrade_s": degrade_s,
                    "restore_s": restored_at - prepared_at})
                if worker is not None:
                    scored.worker_rows = worker.submit(restored.clamp(0.0, 1.0), sample.gt[None] if sample.gt is not None
                                                       else None, clip_id, bool(self.cfg.progress), position + 2)
                # outputs first: a clip counts as finished only once everything of it is written
                if self.cfg.save_restored not in (None, False, "none"):
                    self.save_restored(clip_id, restored, sample.fps)
                scored.busy_s = time.perf_counter() - start
                if worker is None:
                    self.write_clip(scored, store, None)
                else:  # clip k-1's worker rows should be back by now; clip k waits for clip k+1's restore
                    previous, waiting = waiting, None
                    if previous is not None:
                        self.write_clip(previous, store, worker)
                    waiting = scored
            previous, waiting = waiting, None
            if previous is not None:
                self.write_clip(previous, store, worker)
        except BaseException:
            if waiting is not None:  # clip k's rows are due even when clip k+1 failed
                try:
                    self.write_clip(waiting, store, worker)
                except Exception as error:  # noqa: BLE001 — the first error is the one to report
                    log.warning("clip %s not written: %s", waiting.clip_id, error)
            raise
        finally:
            if prefetch is not None:
                prefetch.shutdown(wait=True, cancel_futures=True)
            if worker is not None:
                worker.close()

    def write_clip(self, scored: ScoredClip, store: ResultStore, worker: CpuScoringWorker | None) -> None:
        """Append one clip's rows and timing to ``store``, waiting for its worker rows first."""
        waited_from = time.perf_counter()
        if scored.worker_rows is not None:
            worker_rows, worker_seconds = worker.result(scored.worker_rows, scored.clip_id)
            scored.rows += worker_rows
            scored.seconds.update(worker_seconds)
        rows = self.in_metric_order(scored.rows)
        if scored.notes:
            for row in rows:
                row["note"] = f"{row['note']}; {scored.notes}" if row["note"] else scored.notes
        metric_seconds = {f"{metric_id}_s": scored.seconds[f"{metric_id}_s"] for metric_id in self.metrics}
        timing = {**scored.timing, **metric_seconds, "total_s": scored.busy_s + time.perf_counter() - waited_from}
        store.append_clip(scored.clip_id, rows, seconds=scored.timing["restore_s"], timing=timing)

    def finish(self, clip_ids: list[str]) -> None:
        """Merge the shards' rows (if any) and write the summary over ``clip_ids``."""
        self.store.merge_shards(clip_ids)
        self.store.write_summary(self.set_level_rows(clip_ids))

    def run(self) -> Path:
        clip_ids = self.clip_ids()
        todo = self.open_run(clip_ids)
        self.evaluate_clips(todo, self.store)
        self.finish(clip_ids)
        return self.run_dir

    def set_level_rows(self, clip_ids: list[str]) -> list[dict[str, Any]]:
        """Summary rows of set-level metrics (from the stored features of every clip) and of
        metrics that could not run."""
        rows = []
        for metric_id, metric in self.metrics.items():
            if not isinstance(metric, SetMetric):
                continue
            stacked = self.store.load_features(metric_id, clip_ids)
            features = {name: torch.from_numpy(array) for name, array in stacked.items()}
            rows.append({
                "metric": metric_id,
                "value": float(metric.value(features)),
                "std": float("nan"),
                "n_clips": len(clip_ids),
                "higher_is_better": metric.higher_is_better,
                "provenance_id": metric.provenance().provenance_id,
            })
        for metric_id, reason in self.unavailable.items():
            rows.append({
                "metric": metric_id, "value": float("nan"), "std": float("nan"), "n_clips": 0,
                "higher_is_better": "", "provenance_id": "unavailable", "note": reason,
            })
        return rows


def evaluate(cfg: DictConfig) -> Path:
    """Run one evaluation cell in this process; returns the run directory. Holds the run
    directory's lock (:class:`~fvr_bench.results.RunLock`) for the whole run.

    Several processes (``devices=N``) are :func:`fvr_bench.sharding.evaluate_sharded`; the
    command line chooses between the two.
    """
    with RunLock(Path(cfg.run_dir)):
        return Evaluator(cfg).run()
