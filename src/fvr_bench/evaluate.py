"""clips → degrade (cached) → restore → metrics → ResultStore.

The evaluator never asks what kind of method or metric it runs: everything it needs is
in the restorer contract (:mod:`fvr_bench.methods.base`), the metric class attributes
(:mod:`fvr_bench.metrics.base`) and the dataset contract (:mod:`fvr_bench.data.base`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
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
from fvr_bench.errors import (
    ClipNotScorableError,
    ConfigError,
    DataError,
    RestorerOutputError,
    WeightsMissingError,
)
from fvr_bench.metrics.base import ClipMetric, SetMetric, VideoMetric
from fvr_bench.results import ResultStore, RunLock
from fvr_bench.video import to_numpy, to_tensor, write_frame_folder, write_video

log = logging.getLogger(__name__)


@dataclass
class PreparedInput:
    """What the restorer receives for one clip (batch of one)."""

    lq: torch.Tensor  # (1, T, 3, h, w) float32 in [0, 1]
    mask: torch.Tensor | None  # (1, T, 1, h, w) bool
    task: str


class FrameBar:
    """A bar over the frames of one clip for one metric, made on the first report only
    (a metric that never calls :meth:`ClipMetric.advance` shows none); closed on exit."""

    def __init__(self, desc: str, total: int, enabled: bool, position: int) -> None:
        self.desc, self.total, self.enabled, self.position = desc, total, enabled, position
        self.bar: tqdm | None = None

    def update(self, frames: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(total=self.total, desc=self.desc, unit="frame", leave=False, position=self.position)
        self.bar.update(frames)

    def __enter__(self) -> FrameBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
            metric.to(self.device)
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

    def score(self, sample: ClipSample, restored: torch.Tensor, seconds: dict[str, float] | None = None,
              position: int = 1) -> list[dict[str, Any]]:
        """One row per metric. A metric that cannot score this clip (its frames are below
        the metric's minimum size, say) gets value NaN, frames 0 and the reason in ``note``;
        the other metrics and clips go on (:class:`ClipNotScorableError`).

        ``seconds``: receives ``<metric_id>_s``, each metric's time on this clip. A
        :class:`ClipMetric` that reports its frames (:meth:`ClipMetric.advance`, the face
        metrics) gets a bar over the clip's frames at ``position`` (``leave=False``; none
        when ``cfg.progress`` is off)."""
        preds = restored.clamp(0.0, 1.0).to(self.device)
        target = sample.gt[None].to(self.device) if sample.gt is not None else None
        rows = []
        for metric_id, metric in self.metrics.items():
            reference = target if metric.needs_reference else None
            frames, note = preds.shape[1], ""
            start = time.perf_counter()
            try:
                if isinstance(metric, SetMetric):
                    # the set value needs every clip: keep this clip's features, value comes at the end
                    features = metric.features(preds, reference)
                    self.store.save_features(metric_id, sample.clip_id, {k: v.double().cpu().numpy() for k, v in features.items()})
                    value = float("nan")
                else:
                    # stateless: nothing accumulates in the metric over a run
                    bar = FrameBar(metric_id, preds.shape[0] * preds.shape[1], bool(self.cfg.progress), position)
                    with bar, metric.frame_progress(bar.update):
                        value = float(metric.score(preds, reference)[0].item())
                    used, note = metric.last_notes[0]
                    frames = preds.shape[1] if used is None else used
            except ClipNotScorableError as error:
                if isinstance(metric, SetMetric):
                    raise  # a set value over some of the clips would be another number: stop
                log.warning("clip %s: %s not scored: %s", sample.clip_id, metric_id, error)
                value, frames, note = float("nan"), 0, f"not scored: {error}"
            self.synchronize()
            if seconds is not None:
                seconds[f"{metric_id}_s"] = time.perf_counter() - start
            rows.append(
                {
                    "metric": metric_id,
                    "value": value,
                    "higher_is_better": metric.higher_is_better,
                    "provenance_id": metric.provenance().provenance_id,
                    "frames": frames,
                    "note": note,
                }
            )
        return rows

    def add_restorer_notes(self, clip_id: str, rows: list[dict]) -> None:
        """What the restorer reports about a clip (e.g. SVFR: no face in its reference frame, so no
        ID tokens) goes into the note of every row of that clip: the values depend on it."""
        take_notes = getattr(self.restorer, "take_notes", None)
        notes = [note for noted_clip, note in take_notes() if noted_clip == clip_id] if callable(take_notes) else []
        if notes:
            text = "restorer: " + "; ".join(notes)
            for row in rows:
                row["note"] = f"{row['note']}; {text}" if row["note"] else text

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
        the device restores; on a CPU the background thread competes with the restorer and the
        metrics for the same cores (measured slower on 2 cores, bench/pipeline.py)."""
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
        of it (features, restored frames) is written.

        With ``overlap`` (``auto``: when the restorer runs on a GPU) the next clip is loaded and
        degraded in one background thread while this one is restored and scored; clips still finish, and are written, in
        order, and an error of clip k+1's loading surfaces only after clip k's rows are written.
        ``overlap=false`` is the plain serial loop."""
        progress = tqdm(clip_ids, desc=f"{self.cfg.method.name} on {self.dataset.name}{progress_label}", unit="clip",
                        disable=not self.cfg.progress, position=position)
        executor = None
        if self.overlaps() and len(clip_ids) > 1:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fvr-prefetch")
        try:
            pending = executor.submit(self.load_and_prepare, clip_ids[0]) if executor is not None else None
            for index, clip_id in enumerate(progress):
                # timing.csv: where each clip's time goes (ResultStore, TIMING_COLUMNS); with
                # overlap, load_s / degrade_s ran in the background and total_s is this clip's wall time
                start = time.perf_counter()
                if pending is not None:
                    sample, prepared, load_s, degrade_s = pending.result()
                    pending = (executor.submit(self.load_and_prepare, clip_ids[index + 1])
                               if index + 1 < len(clip_ids) else None)
                else:
                    sample, prepared, load_s, degrade_s = self.load_and_prepare(clip_id)
                prepared_at = time.perf_counter()
                restored = self.restore(sample, prepared)
                self.synchronize()
                restored_at = time.perf_counter()
                metric_seconds: dict[str, float] = {}
                rows = self.score(sample, restored, seconds=metric_seconds, position=position + 1)
                self.add_restorer_notes(clip_id, rows)
                # outputs first: a clip counts as finished only once everything of it is written
                if self.cfg.save_restored not in (None, False, "none"):
                    self.save_restored(clip_id, restored, sample.fps)
                timing = {
                    "frames": int(prepared.lq.shape[1]),
                    "load_s": load_s,
                    "degrade_s": degrade_s,
                    "restore_s": restored_at - prepared_at,
                    **metric_seconds,
                    "total_s": time.perf_counter() - start,
                }
                store.append_clip(clip_id, rows, seconds=restored_at - prepared_at, timing=timing)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

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
