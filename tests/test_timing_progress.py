"""Issue 14: where a clip's time goes (``timing.csv`` stage columns) and progress over the
frames of a clip for slow metrics (the face metrics' per-frame reports)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import overrides

from fvr_bench.config import compose
from fvr_bench.evaluate import evaluate
from fvr_bench.scoring import FrameBar
from fvr_bench.faces.frames import frames_of
from fvr_bench.faces.memo import clear_memo
from fvr_bench.metrics import face
from fvr_bench.results import TIMING_COLUMNS, ResultStore
from fvr_bench.video import read_frame_folder

IDS_DLIB = "+metrics.items.ids_dlib={_target_: fvr_bench.metrics.face.IDSDlib}"
STAGES = ["load_s", "degrade_s", "restore_s"]


def run(data_dir, tmp_path, *extra):
    return evaluate(compose("run", overrides(data_dir, tmp_path, "metrics=fidelity", IDS_DLIB, *extra)))


def metric_rows(value: float) -> list[dict]:
    return [{"metric": "psnr", "value": value, "higher_is_better": True, "provenance_id": "psnr@1",
             "frames": 9, "note": ""}]


def stage_row(restore: float = 0.25) -> dict:
    return {"frames": 9, "load_s": 0.01, "degrade_s": 0.02, "restore_s": restore, "psnr_s": 0.03, "total_s": 1.0}


def test_timing_csv_has_a_column_per_stage_and_metric(tiny_data_dir, tmp_path):
    run_dir = run(tiny_data_dir, tmp_path, "overlap=false")  # serial: every stage inside the clip's wall time
    timing = pd.read_csv(run_dir / "timing.csv", dtype={"clip_id": str})
    metrics = pd.read_csv(run_dir / "per_clip.csv")["metric"].unique().tolist()
    assert "ids_dlib" in metrics
    assert list(timing.columns) == [*TIMING_COLUMNS, *(f"{m}_s" for m in metrics), "total_s"]
    assert timing["clip_id"].tolist() == ["carphone_000", "carphone_001"]
    assert (timing["frames"] == 9).all()
    seconds = timing.drop(columns=["clip_id", "frames"])
    assert np.isfinite(seconds.to_numpy()).all() and (seconds.to_numpy() >= 0).all()
    assert (timing["seconds"] == timing["restore_s"]).all()  # the column of earlier run directories
    parts = timing[[*STAGES, *(f"{m}_s" for m in metrics)]].sum(axis=1)
    assert (parts <= timing["total_s"] + 1e-5).all()
    summary = pd.read_csv(run_dir / "summary.csv")
    assert not any(column.endswith("_s") for column in summary.columns)  # timings never enter the summary
    assert not summary["metric"].str.endswith("_s").any()


def test_a_run_resumed_over_an_old_timing_csv_keeps_its_rows(tiny_data_dir, tmp_path):
    run_dir = run(tiny_data_dir, tmp_path, "limit_clips=1")
    (run_dir / "timing.csv").write_text("clip_id,seconds\ncarphone_000,0.123456\n")  # the layout before issue 14
    run(tiny_data_dir, tmp_path)
    timing = pd.read_csv(run_dir / "timing.csv", dtype={"clip_id": str}).set_index("clip_id")
    assert list(timing.index) == ["carphone_000", "carphone_001"]
    assert list(timing.columns[:5]) == TIMING_COLUMNS[1:] and timing.columns[-1] == "total_s"
    assert timing.loc["carphone_000", "seconds"] == 0.123456
    assert timing.loc["carphone_000"].drop("seconds").isna().all()  # old row: new cells empty
    assert timing.loc["carphone_001"].notna().all()


def test_store_appends_old_and_new_rows_into_one_header(tmp_path):
    store = ResultStore(tmp_path)
    (tmp_path / "timing.csv").write_text("clip_id,seconds\na,0.500000\n")
    store.append_clip("b", metric_rows(1.0), seconds=0.25, timing=stage_row())
    store.append_clip("c", metric_rows(2.0), seconds=0.5)  # a caller of the old signature
    text = (tmp_path / "timing.csv").read_text().splitlines()
    assert text[0] == "clip_id,seconds,frames,load_s,degrade_s,restore_s,psnr_s,total_s"
    assert text[1:] == ["a,0.500000,,,,,,", "b,0.250000,9,0.010000,0.020000,0.250000,0.030000,1.000000",
                        "c,0.500000,,,,,,"]


def test_a_timing_row_of_a_clip_killed_before_its_rows_is_replaced(tmp_path):
    store = ResultStore(tmp_path)
    store.append_clip("a", metric_rows(1.0), seconds=0.25, timing=stage_row())
    (tmp_path / "timing.csv").write_text((tmp_path / "timing.csv").read_text() + "b,9.0,9,1,1,1,1,9\n")
    store.append_clip("b", metric_rows(2.0), seconds=0.5, timing=stage_row(0.5))
    timing = pd.read_csv(tmp_path / "timing.csv")
    assert timing["clip_id"].tolist() == ["a", "b"] and timing["restore_s"].tolist() == [0.25, 0.5]


def test_merge_keeps_the_stage_columns_over_an_old_main_file(tmp_path):
    store = ResultStore(tmp_path)
    store.append_clip("a", metric_rows(1.0), seconds=0.5)
    (tmp_path / "timing.csv").write_text("clip_id,seconds\na,0.500000\n")
    ResultStore(tmp_path, shard="rank0").append_clip("c", metric_rows(3.0), seconds=0.25, timing=stage_row())
    ResultStore(tmp_path, shard="rank1").append_clip("b", metric_rows(2.0), seconds=0.5)  # an older process' part
    assert store.merge_shards(["a", "b", "c"]) == ["b", "c"]
    timing = pd.read_csv(tmp_path / "timing.csv")
    assert list(timing.columns) == [*TIMING_COLUMNS, "psnr_s", "total_s"]
    assert timing["clip_id"].tolist() == ["a", "b", "c"]
    assert timing["seconds"].tolist() == [0.5, 0.5, 0.25]
    assert timing["total_s"].isna().tolist() == [True, True, False]
    assert not (tmp_path / "parts").exists()


def test_merge_of_new_parts_writes_what_one_process_writes(tmp_path):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    for clip_id in ("a", "b"):
        ResultStore(one).append_clip(clip_id, metric_rows(1.0), seconds=0.25, timing=stage_row())
    ResultStore(sharded, shard="rank1").append_clip("b", metric_rows(1.0), seconds=0.25, timing=stage_row())
    ResultStore(sharded, shard="rank0").append_clip("a", metric_rows(1.0), seconds=0.25, timing=stage_row())
    ResultStore(sharded).merge_shards(["a", "b"])
    assert (sharded / "timing.csv").read_bytes() == (one / "timing.csv").read_bytes()


@pytest.fixture(scope="module")
def face_clip(tiny_data_dir):
    frames = read_frame_folder(tiny_data_dir / "sample" / "gt" / "carphone_000")
    target = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float()
    preds = (target + 0.02 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return preds, target


@pytest.mark.parametrize("metric_class", [face.IDSDlib, face.AKDDlib68, face.FaceConsID])
def test_face_metrics_report_every_frame_and_keep_their_values(face_clip, metric_class):
    preds, target = face_clip
    metric = metric_class()
    reference = target if metric.needs_reference else None
    clear_memo()
    reports: list[int] = []
    with metric.frame_progress(reports.append):
        value = metric.score(preds, reference)
    assert reports == [1] * preds.shape[1]  # dlib analyses frame by frame: one report per frame
    assert metric._progress is None  # the callback is gone after the block
    clear_memo()
    assert torch.equal(metric.score(preds, reference), value)  # no callback: the same value
    assert not torch.isnan(value).any()


def test_frame_by_frame_analysis_equals_one_call_over_the_clip(face_clip):
    preds, target = face_clip
    metric = face.IDSDlib()
    clear_memo()
    chunked = metric.similarities(preds, target)[0].numpy()
    clear_memo()
    pred, gt = metric.identity.pair(frames_of(preds[0]), frames_of(target[0]), preds.device)
    whole = face._cosine(pred.values, gt.values)
    np.testing.assert_array_equal(chunked, whole)


def test_the_evaluator_shows_a_frame_bar_only_for_metrics_that_report(tiny_data_dir, tmp_path, monkeypatch):
    from fvr_bench import scoring

    bars: list[tuple[str, int, int]] = []

    class Recording(FrameBar):
        def __exit__(self, *exc_info):
            if self.bar is not None:
                bars.append((self.desc, self.bar.total, self.bar.n))
            super().__exit__(*exc_info)

    monkeypatch.setattr(scoring, "FrameBar", Recording)
    reference = pd.read_csv(run(tiny_data_dir, tmp_path / "quiet") / "summary.csv")
    assert bars == []  # progress=false: no bar at all
    shown = run(tiny_data_dir, tmp_path / "shown", "progress=true")
    assert bars == [("ids_dlib", 9, 9)] * 2  # one per clip, face metric only
    pd.testing.assert_frame_equal(pd.read_csv(shown / "summary.csv"), reference)


def test_frame_bar_is_made_on_the_first_report_only():
    with FrameBar("m", 4, True, 1) as bar:
        assert bar.bar is None
        bar.update(3)
        bar.update(1)
        assert bar.bar.n == 4 and bar.bar.total == 4
    assert bar.bar is None
    with FrameBar("m", 4, False, 1) as off:
        off.update(4)
        assert off.bar is None
