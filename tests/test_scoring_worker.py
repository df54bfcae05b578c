"""Issue 14: the CPU-only metrics of clip k are scored in a worker process while clip k+1 is
restored (``overlap``); the rows are the serial loop's, written in clip order, and a clip whose
worker rows never came back is not finished (a rerun resumes it)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import overrides

from fvr_bench.config import compose
from fvr_bench.errors import FvrBenchError
from fvr_bench.evaluate import Evaluator, evaluate
from fvr_bench.scoring import CpuScoringWorker

IDS_DLIB = "+metrics.items.ids_dlib={_target_: fvr_bench.metrics.face.IDSDlib}"
BRIGHTNESS = "+metrics.items.mean_brightness={_target_: worker_metrics.MeanBrightness"


def config(data_dir, tmp_path, *extra):
    return compose("run", overrides(data_dir, tmp_path, "metrics=fidelity", *extra))


def test_cpu_only_metrics_are_the_face_flow_backends_that_run_on_the_cpu(tiny_data_dir, tmp_path):
    cfg = config(tiny_data_dir, tmp_path, "+metrics.items.ids_dlib={_target_: fvr_bench.metrics.face.IDSDlib}",
                 "+metrics.items.akd_mediapipe={_target_: fvr_bench.metrics.face.AKDMediaPipe}",
                 "+metrics.items.ewarp={_target_: fvr_bench.metrics.temporal.EWarp, flow: dis}",
                 "+metrics.items.ids_arcface={_target_: fvr_bench.metrics.face.IDSArcFace, random_weights: true}")
    evaluator = Evaluator(cfg)
    assert evaluator.cpu_metric_ids() == ["ids_dlib", "akd_mediapipe", "ewarp"]
    assert evaluator.metric_device(evaluator.metrics["ids_arcface"]) == evaluator.device


def test_overlapped_runs_write_the_serial_rows_in_clip_order(tiny_data_dir, tmp_path, monkeypatch):
    """The next clip loaded in a thread, the CPU-only metrics (dlib's IDS, a test metric) in the worker."""
    submitted = []
    submit = CpuScoringWorker.submit
    monkeypatch.setattr(CpuScoringWorker, "submit", lambda self, *a: submitted.append(a[2]) or submit(self, *a))
    metrics = (IDS_DLIB, BRIGHTNESS + "}")
    serial = evaluate(config(tiny_data_dir, tmp_path / "serial", "overlap=false", *metrics))
    assert submitted == []
    overlapped = evaluate(config(tiny_data_dir, tmp_path / "overlap", "overlap=true", *metrics))
    assert submitted == ["carphone_000", "carphone_001"]
    for name in ("per_clip.csv", "summary.csv"):
        assert (serial / name).read_bytes() == (overlapped / name).read_bytes()
    per_clip = pd.read_csv(overlapped / "per_clip.csv", dtype={"clip_id": str})
    assert per_clip["metric"].tolist()[:6] == ["psnr_y", "psnr_rgb", "ssim_y", "ssim_rgb", "ids_dlib", "mean_brightness"]
    timing = pd.read_csv(overlapped / "timing.csv", dtype={"clip_id": str})
    assert timing["clip_id"].tolist() == ["carphone_000", "carphone_001"]
    assert (timing[["load_s", "ids_dlib_s", "mean_brightness_s"]] > 0).all().all()


@pytest.mark.parametrize("failure,message", [("raise", "failing on call 2"), ("exit", "metric worker process .*died")])
def test_a_worker_failure_keeps_the_clips_before_it_and_a_rerun_resumes(tiny_data_dir, tmp_path, failure, message):
    armed = tmp_path / "armed"
    armed.touch()
    cfg = config(tiny_data_dir, tmp_path, "overlap=true", f"{BRIGHTNESS}, fail_on_call: 2, failure: {failure}, armed: '{armed}'}}")
    with pytest.raises((RuntimeError, FvrBenchError), match=message):
        evaluate(cfg)
    per_clip = pd.read_csv(next((tmp_path / "outputs").rglob("per_clip.csv")), dtype={"clip_id": str})
    assert set(per_clip["clip_id"]) == {"carphone_000"}  # clip 0 written; clip 1's worker rows never came back
    armed.unlink()
    resumed = evaluate(cfg)
    per_clip = pd.read_csv(resumed / "per_clip.csv", dtype={"clip_id": str})
    assert per_clip.groupby("clip_id").size().to_dict() == {"carphone_000": 5, "carphone_001": 5}
    assert torch.isfinite(torch.tensor(per_clip["value"].to_numpy())).all()
