"""The evaluator end to end on real face frames: resumable, deterministic, strict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import overrides

from fvr_bench.cli import compose
from fvr_bench.errors import ConfigError, RestorerOutputError, ResultsMismatchError
from fvr_bench.evaluate import evaluate
from fvr_bench.methods.baselines import BicubicRestorer
from fvr_bench.video import write_frame_folder


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
        assert any(weights.find(name) is None for name in weights.REGISTRY if metric_id in weights.REGISTRY[name].used_by)
