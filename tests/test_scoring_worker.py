"""Issue 14: the CPU-only metrics of clip k are scored in a worker process while clip k+1 is
restored (``overlap``); the rows are the serial loop's, written in clip order, and a clip whose
worker rows never came back is not finished (a rerun resumes it)."""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from types import SimpleNamespace

from pathlib import Path

import pandas as pd
import pytest
from conftest import overrides

from fvr_bench.config import compose
from fvr_bench.errors import FvrBenchError
from fvr_bench.evaluate import Evaluator, evaluate
from fvr_bench.scoring import CpuScoringWorker

EWARP = "+metrics.items.ewarp={_target_: fvr_bench.metrics.temporal.EWarp, flow: dis}"
BRIGHTNESS = "+metrics.items.mean_brightness={_target_: worker_metrics.MeanBrightness"


def config(data_dir, tmp_path, *extra):
    return compose("run", overrides(data_dir, tmp_path, "metrics=fidelity", *extra))


def test_cpu_only_metrics_are_the_cpu_face_and_flow_backends_and_niqe(tiny_data_dir, tmp_path):
    cfg = config(tiny_data_dir, tmp_path, "+metrics.items.ids_dlib={_target_: fvr_bench.metrics.face.IDSDlib}",
                 "+metrics.items.akd_mediapipe={_target_: fvr_bench.metrics.face.AKDMediaPipe}",
                 "+metrics.items.ewarp={_target_: fvr_bench.metrics.temporal.EWarp, flow: dis}",
                 "+metrics.items.ids_arcface={_target_: fvr_bench.metrics.face.IDSArcFace, random_weights: true}",
                 "+metrics.items.niqe={_target_: fvr_bench.metrics.niqe.NIQE}")
    evaluator = Evaluator(cfg)
    assert evaluator.cpu_metric_ids() == ["ids_dlib", "akd_mediapipe", "ewarp", "niqe"]
    assert evaluator.metric_device(evaluator.metrics["ids_arcface"]) == evaluator.device


def test_overlapped_rows_are_the_serial_rows_and_a_worker_failure_resumes(tiny_data_dir, tmp_path, monkeypatch):
    """The next clip loaded in a thread, the CPU-only metrics (E_warp with OpenCV DIS flow, a test metric) in the
    worker: the same bytes as the serial loop, in clip order; when the worker fails on clip 1,
    clip 0 is written and clip 1 is not, and the rerun finishes clip 1 only."""
    submitted = []
    submit = CpuScoringWorker.submit
    monkeypatch.setattr(CpuScoringWorker, "submit", lambda self, *a: submitted.append(a[2]) or submit(self, *a))
    armed = tmp_path / "armed"  # while it exists, the test metric fails on its second clip
    metrics = (EWARP, f"{BRIGHTNESS}, fail_on_call: 2, armed: '{armed}'}}")
    serial = evaluate(config(tiny_data_dir, tmp_path / "serial", "overlap=false", *metrics))
    assert submitted == []
    armed.touch()
    overlap = config(tiny_data_dir, tmp_path / "overlap", "overlap=true", *metrics)
    with pytest.raises(RuntimeError, match="failing on call 2"):
        evaluate(overlap)
    assert submitted == ["carphone_000", "carphone_001"]
    run_dir = Path(overlap.run_dir)
    assert pd.read_csv(run_dir / "per_clip.csv", dtype={"clip_id": str})["clip_id"].unique().tolist() == ["carphone_000"]
    armed.unlink()
    assert evaluate(overlap) == run_dir
    assert submitted == ["carphone_000", "carphone_001"]  # one clip left: scored in this process
    for name in ("per_clip.csv", "summary.csv"):
        assert (serial / name).read_bytes() == (run_dir / name).read_bytes()
    per_clip = pd.read_csv(run_dir / "per_clip.csv", dtype={"clip_id": str})
    assert per_clip["metric"].tolist()[:6] == ["psnr_y", "psnr_rgb", "ssim_y", "ssim_rgb", "ewarp", "mean_brightness"]
    timing = pd.read_csv(run_dir / "timing.csv", dtype={"clip_id": str})
    assert timing["clip_id"].tolist() == ["carphone_000", "carphone_001"]
    assert (timing[["ewarp_s", "mean_brightness_s"]] > 0).all().all() and timing.loc[0, "load_s"] > 0


def test_a_dead_worker_is_an_error_naming_the_clip_and_the_way_out():
    died = Future()
    died.set_exception(BrokenProcessPool("A process in the process pool was terminated abruptly"))
    holder = SimpleNamespace(metric_ids=["ids_dlib", "akd_mediapipe"])
    with pytest.raises(FvrBenchError, match=r"clip c7: the metric worker process \(ids_dlib, akd_mediapipe\) died.*overlap=false"):
        CpuScoringWorker.result(holder, died, "c7")
