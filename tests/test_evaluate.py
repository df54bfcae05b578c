"""The evaluator end to end on real face frames: resumable, deterministic, strict."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import overrides

from fvr_bench.config import compose
from fvr_bench.errors import ConfigError, DataError, RestorerOutputError, ResultsMismatchError, RunInProgressError
from fvr_bench.evaluate import evaluate
from fvr_bench.methods.baselines import BicubicRestorer
from fvr_bench.results import RunLock
from fvr_bench.video import read_frame_folder, write_frame_folder


def run(data_dir, tmp_path, *extra):
    return evaluate(compose("run", overrides(data_dir, tmp_path, *extra)))


def summary(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "summary.csv").set_index("metric")


def test_default_run(tiny_data_dir, tmp_path):
    run_dir = run(tiny_data_dir, tmp_path)
    assert run_dir == tmp_path / "outputs" / "sample" / "vividface_bfr" / "bicubic"
    table = summary(run_dir)
    assert set(table.index) == {"psnr_rgb", "psnr_y", "ssim_rgb", "ssim_y", "niqe"}
    assert (table["n_clips"] == 2).all()
    assert 15 < table.loc["psnr_y", "value"] < 45
    per_clip = pd.read_csv(run_dir / "per_clip.csv")
    assert len(per_clip) == 2 * 5 and not per_clip.duplicated(["clip_id", "metric"]).any()
    assert (run_dir / "config.yaml").exists() and (run_dir / "provenance.json").exists()


def test_bicubic_beats_identity_on_downscaled_input(tiny_data_dir, tmp_path):
    args = ("degradation=ip_fvr_light", "metrics=fidelity")
    identity = summary(run(tiny_data_dir, tmp_path, "method=identity", *args))
    bicubic = summary(run(tiny_data_dir, tmp_path, "method=bicubic", *args))
    assert bicubic.loc["psnr_y", "value"] > identity.loc["psnr_y", "value"]


def test_two_runs_give_bit_identical_lq_and_summaries(tiny_data_dir, tmp_path):
    first = run(tiny_data_dir, tmp_path / "a")
    second = run(tiny_data_dir, tmp_path / "b")
    lq_a = sorted((tmp_path / "a" / "cache").rglob("*.png"))
    lq_b = sorted((tmp_path / "b" / "cache").rglob("*.png"))
    assert len(lq_a) == 18 and len(lq_a) == len(lq_b)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(lq_a, lq_b))
    assert (first / "summary.csv").read_bytes() == (second / "summary.csv").read_bytes()


def test_killed_run_resumes_to_the_same_summary(tiny_data_dir, tmp_path, monkeypatch):
    reference = run(tiny_data_dir, tmp_path / "whole", "metrics=fidelity")
    calls = {"n": 0}
    original = BicubicRestorer.restore

    def dies_on_second_clip(self, lq, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(self, lq, **kwargs)

    monkeypatch.setattr(BicubicRestorer, "restore", dies_on_second_clip)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_data_dir, tmp_path / "killed", "metrics=fidelity")
    run_dir = tmp_path / "killed" / "outputs" / "sample" / "vividface_bfr" / "bicubic"
    assert pd.read_csv(run_dir / "per_clip.csv")["clip_id"].nunique() == 1
    monkeypatch.undo()
    run(tiny_data_dir, tmp_path / "killed", "metrics=fidelity")
    per_clip = pd.read_csv(run_dir / "per_clip.csv")
    assert not per_clip.duplicated(["clip_id", "metric"]).any()
    assert (run_dir / "summary.csv").read_bytes() == (reference / "summary.csv").read_bytes()


def test_resume_with_a_different_config_is_refused(tiny_data_dir, tmp_path):
    run(tiny_data_dir, tmp_path, "metrics=fidelity", "limit_clips=1")
    with pytest.raises(ResultsMismatchError, match="seed"):
        run(tiny_data_dir, tmp_path, "metrics=fidelity", "limit_clips=1", "seed=1")


@pytest.mark.parametrize(
    "bad_output, message",
    [
        (lambda lq: torch.full_like(lq, float("nan")), "NaN/Inf"),
        (lambda lq: lq[:, :-1], "shape"),
    ],
)
def test_invalid_restorer_output_is_named_and_writes_nothing(tiny_data_dir, tmp_path, monkeypatch, bad_output, message):
    monkeypatch.setattr(BicubicRestorer, "restore", lambda self, lq, **kw: bad_output(lq))
    with pytest.raises(RestorerOutputError, match=message) as error:
        run(tiny_data_dir, tmp_path, "metrics=fidelity", "degradation=none")
    assert "carphone_000" in str(error.value)
    run_dir = tmp_path / "outputs" / "sample" / "none" / "bicubic"
    assert not (run_dir / "per_clip.csv").exists()


def test_precomputed_outputs_score_like_the_method_that_made_them(tiny_data_dir, tmp_path):
    made = run(tiny_data_dir, tmp_path, "metrics=fidelity", "save_restored=png")
    saved = run(
        tiny_data_dir, tmp_path, "metrics=fidelity", "method=precomputed",
        f"method.root={made / 'restored'}", "method.name=saved_bicubic",
    )
    assert saved.name == "saved_bicubic"
    np.testing.assert_allclose(summary(saved)["value"], summary(made)["value"], rtol=0, atol=1e-9)


def test_sizes_not_divisible_by_8(tmp_path, carphone):
    root = tmp_path / "odd"
    write_frame_folder(root / "clip", (carphone[:5, :50, :42] * 255).astype(np.uint8))
    run_dir = evaluate(compose("run", overrides(tmp_path, tmp_path, "data=folder", f"data.root={root}",
                                                "degradation=ip_fvr_light", "metrics=fidelity")))
    assert summary(run_dir).loc["psnr_y", "n_clips"] == 1


def test_reference_metric_on_a_set_without_ground_truth(tmp_path, carphone):
    root = tmp_path / "lq_only"
    write_frame_folder(root / "clip", (carphone[:3] * 255).astype(np.uint8))
    cfg = compose("run", overrides(tmp_path, tmp_path, "data=folder", "data.root=null", f"data.lq_root={root}"))
    with pytest.raises(ConfigError, match="needs ground truth"):
        evaluate(cfg)


def test_paper_protocol_runs_every_offline_column(tiny_data_dir, tmp_path):
    """protocol=vividface_t1 end to end: the offline metrics are measured, the ones whose
    weights are absent are reported unavailable (never computed with random weights)."""
    from fvr_bench import weights

    run_dir = run(tiny_data_dir, tmp_path, "protocol=vividface_t1", "allow_missing=true", "data.resize=null")
    assert run_dir.parent.name == "vividface_t1"
    table = summary(run_dir)
    measured = table[table["provenance_id"] != "unavailable"]
    assert {"psnr_y", "ssim_rgb", "akd_mediapipe", "facecons_id", "fvd"} <= set(measured.index)
    assert measured["value"].notna().all()
    for metric_id in set(table.index) - set(measured.index):
        assert "missing pretrained file" in table.loc[metric_id, "note"]
        names = table.loc[metric_id, "note"].split("missing pretrained file(s) ")[1].split(", ")
        assert names and all(weights.find(name) is None for name in names), names


# --------------------------------------------------------------------------- nothing silently wrong


def folder_run(root: Path, out: Path, cache: Path, *extra: str) -> Path:
    """A run of ``data=folder`` on ``root``; ``cache``: the LQ cache folder."""
    return evaluate(compose("run", [
        "data=folder", f"data.root={root}", f"paths.output_dir={out}", f"paths.cache_dir={cache}",
        "metrics=fidelity", "progress=false", "device=cpu", *extra,
    ]))


def psnr_y(run_dir: Path) -> float:
    return summary(run_dir).loc["psnr_y", "value"]


def test_lq_cache_never_serves_another_clips_lq(tmp_path, carphone):
    """The three cases a held-out trial found: each second run scored against the first
    run's cached LQ (or crashed); now each equals a run with an empty cache."""
    set_a, set_b = tmp_path / "set_a", tmp_path / "set_b"
    write_frame_folder(set_a / "clip", carphone[:6])
    write_frame_folder(set_b / "clip", carphone[60:66, :, ::-1])  # same clip name, other frames
    shared = tmp_path / "shared_cache"

    def fresh(name: str, root: Path, *extra: str) -> float:
        return psnr_y(folder_run(root, tmp_path / f"fresh_{name}", tmp_path / f"fresh_cache_{name}", *extra))

    psnr_y(folder_run(set_a, tmp_path / "a", shared))
    assert psnr_y(folder_run(set_b, tmp_path / "b", shared)) == fresh("b", set_b)

    psnr_y(folder_run(set_a, tmp_path / "r128", shared, "data.resize=128"))
    assert psnr_y(folder_run(set_a, tmp_path / "r96", shared, "data.resize=96")) == fresh("r96", set_a, "data.resize=96")

    psnr_y(folder_run(set_a, tmp_path / "f3", shared, "data.max_frames=3"))
    assert psnr_y(folder_run(set_a, tmp_path / "f5", shared, "data.max_frames=5")) == fresh("f5", set_a, "data.max_frames=5")


@pytest.mark.parametrize("frames", [7, 5])
def test_precomputed_outputs_with_another_frame_count_are_an_error(tmp_path, carphone, frames):
    """121 frames for a 120-frame clip used to be trimmed silently (a one-frame offset)."""
    write_frame_folder(tmp_path / "gt" / "clip", carphone[:6])
    write_frame_folder(tmp_path / "outputs_of_x" / "clip", carphone[:frames])
    with pytest.raises(DataError) as error:
        folder_run(tmp_path / "gt", tmp_path / "out", tmp_path / "cache", "method=precomputed",
                   f"method.root={tmp_path / 'outputs_of_x'}")
    message = str(error.value)
    assert str(tmp_path / "outputs_of_x" / "clip") in message and f"has {frames} frames" in message
    assert "clip 'clip' has 6" in message and str(tmp_path / "gt" / "clip") in message
    assert not (tmp_path / "out" / "folder" / "vividface_bfr" / "precomputed" / "per_clip.csv").exists()


def test_a_run_directory_without_results_is_no_conflict(tiny_data_dir, tmp_path, monkeypatch):
    def dies(self, lq, **kwargs):
        raise KeyboardInterrupt("killed before the first clip")

    monkeypatch.setattr(BicubicRestorer, "restore", dies)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_data_dir, tmp_path, "metrics=fidelity")
    run_dir = tmp_path / "outputs" / "sample" / "vividface_bfr" / "bicubic"
    assert (run_dir / "run.json").exists() and not (run_dir / "per_clip.csv").exists()
    monkeypatch.undo()
    run(tiny_data_dir, tmp_path, "metrics=default")  # other metrics: nothing to mix, so it runs
    assert set(summary(run_dir).index) == {"psnr_rgb", "psnr_y", "ssim_rgb", "ssim_y", "niqe"}
    with pytest.raises(ResultsMismatchError, match="metrics"):  # now there are results
        run(tiny_data_dir, tmp_path, "metrics=fidelity")


def test_a_metric_that_cannot_score_the_frame_size_leaves_the_others(tmp_path, carphone):
    """NIQE needs two 96² blocks; 176×144 frames hold one. PSNR/SSIM are still scored, NIQE
    is NaN with the reason in per_clip.csv and summary.csv."""
    write_frame_folder(tmp_path / "gt" / "clip", carphone[:4])
    run_dir = folder_run(tmp_path / "gt", tmp_path / "out", tmp_path / "cache", "metrics=default")
    per_clip = pd.read_csv(run_dir / "per_clip.csv").set_index("metric")
    assert np.isfinite(per_clip.loc["psnr_y", "value"]) and per_clip.loc["psnr_y", "frames"] == 4
    assert np.isnan(per_clip.loc["niqe", "value"]) and per_clip.loc["niqe", "frames"] == 0
    assert per_clip.loc["niqe", "note"].startswith("not scored: niqe: frames of 176x144")
    table = summary(run_dir)
    assert table.loc["niqe", "n_clips"] == 0 and "no clip has a value" in table.loc["niqe", "note"]
    assert "1 of 1 clips: not scored: niqe" in table.loc["niqe", "note"]
    assert np.isfinite(table.loc["ssim_y", "value"])


def test_face_metrics_write_the_frames_they_used_and_why(tiny_data_dir, tmp_path):
    frames = read_frame_folder(tiny_data_dir / "sample" / "gt" / "carphone_000")
    frames[:3] = 0.5  # three frames without a face
    write_frame_folder(tmp_path / "gt" / "clip", frames)
    run_dir = folder_run(tmp_path / "gt", tmp_path / "out", tmp_path / "cache", "method=identity", "degradation=none",
                         "metrics=fidelity", "+metrics.items.ids_dlib={_target_: fvr_bench.metrics.face.IDSDlib}")
    row = pd.read_csv(run_dir / "per_clip.csv").set_index("metric").loc["ids_dlib"]
    assert row["frames"] == 6 and row["note"] == "no face in 3 of 9 frames (skipped)"
    assert np.isfinite(row["value"])
    assert summary(run_dir).loc["ids_dlib", "note"] == "1 of 1 clips: no face in 3 of 9 frames (skipped)"


def test_one_writer_per_run_directory(tiny_data_dir, tmp_path):
    run_dir = tmp_path / "outputs" / "sample" / "vividface_bfr" / "bicubic"
    with RunLock(run_dir):
        with pytest.raises(RunInProgressError, match=f"PID {os.getpid()} on "):
            run(tiny_data_dir, tmp_path, "metrics=fidelity")
    assert not (run_dir / "per_clip.csv").exists()
    run(tiny_data_dir, tmp_path, "metrics=fidelity")  # released: the run goes ahead
    assert pd.read_csv(run_dir / "timing.csv")["clip_id"].tolist() == ["carphone_000", "carphone_001"]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fvr_bench.results import RunLock; "
         f"lock = RunLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInProgressError, match=f"PID {holder.pid} "):
            RunLock(tmp_path).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(tmp_path):
        pass


# --------------------------------------------------------------------------- the two metric kinds


def test_the_evaluator_scores_statelessly_and_never_calls_update(tiny_data_dir, tmp_path, monkeypatch):
    """Clip metrics through ``score()`` only, set metrics through ``features()`` / ``value()``:
    no metric accumulates state over a run (issue 11, item 4)."""
    from fvr_bench import weights
    from fvr_bench.evaluate import Evaluator
    from fvr_bench.metrics.base import ClipMetric, SetMetric

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"the evaluator called {type(self).__name__}.update")

    monkeypatch.setattr(ClipMetric, "update", refuse)
    monkeypatch.setattr(SetMetric, "update", refuse)
    extra = ["metrics=fidelity"]
    with_fvd = weights.find("i3d_kinetics400") is not None
    if with_fvd:
        extra.append("+metrics.items.fvd={_target_: fvr_bench.metrics.distribution.FVD, resolution: 32, trace_sqrt: svd}")
    evaluator = Evaluator(compose("run", overrides(tiny_data_dir, tmp_path, *extra)))
    evaluator.run()
    clip_metrics = [m for m in evaluator.metrics.values() if isinstance(m, ClipMetric)]
    assert clip_metrics and all(m.per_clip().numel() == 0 for m in clip_metrics)
    table = summary(evaluator.run_dir)
    assert (table.loc[[m.metric_id for m in clip_metrics], "n_clips"] == 2).all()
    if with_fvd:
        fvd = evaluator.metrics["fvd"]
        assert isinstance(fvd, SetMetric) and all(a.shape[0] == 0 for a in fvd.stacked_features().values())
        stored = evaluator.store.load_features("fvd", evaluator.clip_ids())
        expected = fvd.value({name: torch.from_numpy(array) for name, array in stored.items()})
        assert table.loc["fvd", "value"] == pytest.approx(expected, rel=1e-12)


def test_score_is_stateless(tiny_data_dir):
    from fvr_bench.metrics.face import IDSDlib
    from fvr_bench.metrics.fidelity import PSNR

    clip = read_frame_folder(tiny_data_dir / "sample" / "gt" / "carphone_000")
    target = torch.from_numpy(clip).permute(0, 3, 1, 2)[None].float()
    preds = (target + 0.02 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    for metric in (PSNR(), IDSDlib()):
        first = metric.score(preds, target)
        second = metric.score(preds, target)
        assert first.dtype == torch.float64 and first.shape == (1,)
        assert torch.equal(first, second) or torch.isnan(first).all() and torch.isnan(second).all()
        assert metric.per_clip().numel() == 0 and len(metric.values) == 0  # nothing grows
        assert len(metric.last_notes) == 1 and metric.last_notes[0][0] <= clip.shape[0]
        metric.update(preds, target)  # the torchmetrics API still accumulates, for library users
        assert torch.equal(metric.per_clip(), first) or torch.isnan(metric.per_clip()).all()
