"""Scoring one restored clip with a set of metrics: here, or in a worker process.

:func:`score_clip` is the one scoring loop (a row per metric, each metric's seconds, the
per-frame bar of slow metrics). The evaluator runs it in its own process for the metrics
that compute on the run's device; :class:`CpuScoringWorker` runs it in one spawned process
for the metrics that compute on the CPU whatever the device (:meth:`VideoMetric.cpu_only`:
dlib, MediaPipe, OpenCV flow, NIQE), so that with ``overlap`` their work on clip k proceeds while
the evaluator restores clip k+1 on the GPU.

Why a process and not a thread: a metric scores inside
:func:`~fvr_bench.metrics.determinism.thread_invariant_kernels`, which switches oneDNN off
for the whole process; a metric thread would change the restorer's CPU kernels mid-run.
The worker builds its own metrics from the same resolved configs and gets the same CPU
tensors the serial loop would, so its rows are the serial loop's rows, bit for bit.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch
from tqdm.auto import tqdm

from fvr_bench.errors import ClipNotScorableError, FvrBenchError
from fvr_bench.metrics.base import SetMetric, VideoMetric

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]
FeatureSink = Callable[[str, dict[str, torch.Tensor]], None]


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


def score_clip(metrics: Mapping[str, VideoMetric], preds: torch.Tensor, target: torch.Tensor | None, *,
               clip_id: str, progress: bool, position: int, save_features: FeatureSink | None = None,
               synchronize: Callable[[], None] = lambda: None) -> tuple[Rows, dict[str, float]]:
    """``(rows, seconds)`` of one clip: a row per metric in ``metrics``' order and
    ``{"<metric_id>_s": seconds}``.

    ``preds``, ``target``: ``(1, T, 3, H, W)`` float in [0, 1] on the metrics' device. A
    metric that cannot score this clip (frames below its minimum size, say) gets value NaN,
    frames 0 and the reason in ``note`` (:class:`ClipNotScorableError`); the others go on.
    A :class:`SetMetric`'s features go to ``save_features(metric_id, features)`` (its row's
    value is NaN: the set value comes at the end). A metric that reports its frames
    (:meth:`ClipMetric.advance`) gets a bar over them at ``position`` when ``progress``.
    ``synchronize``: waits for the device, so that each metric's seconds are its own.
    """
    rows, seconds = [], {}
    for metric_id, metric in metrics.items():
        reference = target if metric.needs_reference else None
        frames, note = preds.shape[1], ""
        start = time.perf_counter()
        try:
            if isinstance(metric, SetMetric):
                if save_features is None:
                    raise FvrBenchError(f"{metric_id}: a set-level metric needs somewhere to keep its features")
                save_features(metric_id, metric.features(preds, reference))
                value = float("nan")
            else:
                # stateless: nothing accumulates in the metric over a run
                bar = FrameBar(metric_id, preds.shape[0] * preds.shape[1], progress, position)
                with bar, metric.frame_progress(bar.update):
                    value = float(metric.score(preds, reference)[0].item())
                used, note = metric.last_notes[0]
                frames = preds.shape[1] if used is None else used
        except ClipNotScorableError as error:
            if isinstance(metric, SetMetric):
                raise  # a set value over some of the clips would be another number: stop
            log.warning("clip %s: %s not scored: %s", clip_id, metric_id, error)
            value, frames, note = float("nan"), 0, f"not scored: {error}"
        synchronize()
        seconds[f"{metric_id}_s"] = time.perf_counter() - start
        rows.append({
            "metric": metric_id,
            "value": value,
            "higher_is_better": metric.higher_is_better,
            "provenance_id": metric.provenance().provenance_id,
            "frames": frames,
            "note": note,
        })
    return rows, seconds


# --------------------------------------------------------------------------- the worker process

_worker_metrics: dict[str, VideoMetric] = {}


def _build_worker_metrics(metric_configs: dict[str, dict[str, Any]]) -> None:
    """Runs once in the worker process: its own instances of the CPU metrics."""
    from omegaconf import OmegaConf

    from fvr_bench.config import build, register_resolvers

    register_resolvers()
    for metric_id, config in metric_configs.items():
        metric = build(OmegaConf.create(config), f"metric {metric_id}")
        _worker_metrics[metric_id] = metric.to("cpu")


def _start() -> None:
    """Submitted first: makes the pool start its process (and build its metrics) at once."""


def _score_in_worker(preds: torch.Tensor, target: torch.Tensor | None, clip_id: str, progress: bool,
                     position: int) -> tuple[Rows, dict[str, float]]:
    return score_clip(_worker_metrics, preds, target, clip_id=clip_id, progress=progress, position=position)


class CpuScoringWorker:
    """One spawned process that scores the CPU-only metrics of a run, a clip at a time, in
    the order the clips are submitted.

    ``metric_configs``: ``{metric_id: resolved config}`` of those metrics (plain containers;
    the worker builds its own instances). The process starts at construction and builds its
    metrics while the first clip is restored. :meth:`submit` returns a future of
    :func:`score_clip`'s ``(rows, seconds)``; an error in the worker comes out of the
    future's ``result()``; a dead worker (killed, out of memory) is a
    :class:`FvrBenchError` naming the clip. Use as a context manager, or :meth:`close`.
    """

    def __init__(self, metric_configs: dict[str, dict[str, Any]]) -> None:
        self.metric_ids = list(metric_configs)
        # spawn: a forked copy of a process that holds CUDA or OpenMP threads is not safe
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_build_worker_metrics, initargs=(metric_configs,))
        self.pool.submit(_start)  # a pool starts its process on the first submit

    def submit(self, preds: torch.Tensor, target: torch.Tensor | None, clip_id: str, progress: bool,
               position: int) -> Future:
        """Score ``clip_id``: ``preds`` / ``target`` ``(1, T, 3, H, W)`` float in [0, 1], moved to the CPU here."""
        target = None if target is None else target.cpu()
        return self.pool.submit(_score_in_worker, preds.cpu(), target, clip_id, progress, position)

    def result(self, future: Future, clip_id: str) -> tuple[Rows, dict[str, float]]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result()
        except BrokenProcessPool as error:
            raise FvrBenchError(
                f"clip {clip_id}: the metric worker process ({', '.join(self.metric_ids)}) died "
                f"(out of memory?); rerun to resume, or set overlap=false to score in this process"
            ) from error

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CpuScoringWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
