"""One contract suite over every metric config, ``conf/metric/*.yaml`` (issue 11, item 4).

Each metric is built the way the evaluator builds it — from the composed run config, so
the run-level keys the metric configs interpolate (``compat``) resolve — and checked for:

* identity: ``metric_id`` is the file stem; ``higher_is_better`` / ``needs_reference`` are
  bools; ``level`` is frame | clip | set;
* provenance: a ``Provenance`` whose id starts with ``<metric_id>@`` and is the same for two
  builds of the same config;
* missing pretrained files (``missing_weights()`` non-empty, as in CI where user-supplied
  weights are absent): the first use raises ``WeightsMissingError`` naming the file (and
  nothing is downloaded: every socket connect fails in this module);
* with its files present, on real face frames (the sample builder's 192² carphone clip,
  9 frames — NIQE needs at least 96×192):
  shapes (``update`` adds one value per clip; set level: ``clip_features`` gives ``(B, D)``
  arrays and ``set_value`` a float), determinism (the same input again, as a fresh copy,
  gives bit-identical values), the ideal value of identical inputs (table ``IDEAL``), and
  ``higher_is_better`` agrees with it: a degraded prediction (independent noise in every
  frame) scores on the worse side of the ideal.

The batch is two clips, prediction == target:
``moving`` = the real clip, ``still`` = its first frame repeated. Reference metrics reach
their ideal on both; temporal-consistency metrics (flow, warping, jitter, identity drift)
only on the still clip — on a moving clip they measure the GT's own motion.

A new ``conf/metric/*.yaml`` is covered by every check automatically; its ideal value must
be decided in ``IDEAL`` (``test_every_metric_has_an_ideal_value_decision`` says so).
Each metric is scored once per module (the ``scored`` fixture) and every check reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from contract_helpers import config_files, no_network, read_frames
from omegaconf import OmegaConf

from fvr_bench import weights
from fvr_bench.config import build, compose
from fvr_bench.errors import WeightsMissingError
from fvr_bench.metrics.base import Provenance

METRIC_FILES = config_files("metric")
METRIC_IDS = [path.stem for path in METRIC_FILES]
LEVELS = ("frame", "clip", "set")
MOVING, STILL = 0, 1  # clip indices in the batch


@dataclass(frozen=True)
class Ideal:
    """The value of identical prediction and target. ``value`` is a number or a function
    of the metric (a setting such as PSNR's cap); ``on``: "both" clips, or the "still" clip
    only (temporal metrics); set-level metrics: the set value. ``tol``: absolute."""

    value: float | Callable[[Any], float]
    on: str = "both"
    tol: float = 1e-6


# Decided per metric from its docstring. None: no ideal value exists (no-reference quality
# scores have no "perfect" number for a given input).
IDEAL: dict[str, Ideal | None] = {
    # fidelity: identical frames → MSE 0 → PSNR capped at max_psnr (default 100 dB); SSIM 1
    "psnr_rgb": Ideal(lambda metric: metric.max_psnr, tol=0.0),
    "psnr_y": Ideal(lambda metric: metric.max_psnr, tol=0.0),
    "ssim_rgb": Ideal(1.0, tol=1e-9),
    "ssim_y": Ideal(1.0, tol=1e-9),
    # learned perceptual distances: the same features → distance 0
    "lpips_alex": Ideal(0.0),
    "lpips_vgg": Ideal(0.0),
    "dists": Ideal(0.0, tol=1e-5),
    # landmarks: identical frames → identical landmarks → AKD 0; TLME 0 (same motion)
    "akd_dlib68": Ideal(0.0),
    "akd_mediapipe": Ideal(0.0),
    "tlme": Ideal(0.0),
    # identity to GT: cos(e, e) = 1 for every frame → IDS 1, σ over frames 0
    "ids_dlib": Ideal(1.0),
    "ids_arcface": Ideal(1.0, tol=1e-5),
    "sigma_ids": Ideal(0.0),
    # I3D: identical logits → per-pair ‖f − f‖² = 0; FVD of two identical sets 0 up to
    # scipy sqrtm's rounding on a rank-deficient 400×400 covariance (N = 2 clips: ~2e-4)
    "fvd_per_video": Ideal(0.0),
    "fvd": Ideal(0.0, tol=1e-2),
    # temporal consistency: a still clip has no flow, no warping error, no jitter, no
    # identity drift; on the moving clip these measure the GT's own motion (no ideal)
    "ewarp": Ideal(0.0, on="still", tol=1e-9),
    "ewarp_raft": Ideal(0.0, on="still", tol=1e-9),
    "ewarp_nr": Ideal(0.0, on="still", tol=1e-9),
    "flow_score": Ideal(0.0, on="still", tol=1e-4),
    "flow_score_dis": Ideal(0.0, on="still", tol=1e-4),
    "tlme_nr": Ideal(0.0, on="still"),
    "vidd": Ideal(0.0, on="still", tol=1e-5),
    "facecons_id": Ideal(1.0, on="still"),
    "facecons_clip": Ideal(1.0, on="still", tol=1e-5),
    # no-reference quality: no ideal value
    "niqe": None,
    "niqe_skvideo": None,
    "musiq": None,
    "clipiqa": None,
    "liqe": None,
    "fastervqa": None,
}

# (test name, metric id) → reason, for a check that fails because of a known bug in the
# metric: the case is xfail(strict=True), so fixing the bug makes it fail until removed.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


@pytest.fixture(autouse=True)
def _known_bugs(request):
    params = request.node.callspec.params if hasattr(request.node, "callspec") else {}
    metric_id = params["metric_file"].stem if "metric_file" in params else None
    reason = KNOWN_BUGS.get((request.node.originalname, metric_id))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture(scope="module", autouse=True)
def _offline(one_torch_thread):
    """No metric may reach the network (a missing file must never be fetched silently);
    one torch thread: these are a handful of small tensors (see conftest)."""
    with no_network():
        yield


@pytest.fixture(scope="module")
def run_cfg():
    cfg = compose("run", [])
    OmegaConf.set_struct(cfg, False)
    return cfg


def build_metric(run_cfg, path):
    """As the evaluator does: the metric node inside the run config, then instantiate."""
    run_cfg.probe = OmegaConf.load(path)
    return build(run_cfg.probe, path.stem)


@pytest.fixture(scope="module")
def clips(tiny_data_dir) -> torch.Tensor:
    """``(2, 9, 3, 192, 192)``: the real carphone face clip, and its first frame held still."""
    moving = read_frames(tiny_data_dir / "sample" / "gt" / "carphone_000")
    assert moving.shape == (9, 3, 192, 192)
    still = moving[:1].expand_as(moving).clone()
    return torch.stack([moving, still])


@pytest.fixture(scope="module")
def degraded(clips) -> torch.Tensor:
    """``clips`` with independent Gaussian noise (σ = 0.04) in every frame: worse on every
    reference metric, and flicker on the still clip; faces stay detectable."""
    noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(0))
    return (clips + 0.04 * noise).clamp(0.0, 1.0)


@pytest.fixture(scope="module", params=METRIC_FILES, ids=METRIC_IDS)
def metric_file(request):
    return request.param


@pytest.fixture(scope="module")
def metric(run_cfg, metric_file):
    return build_metric(run_cfg, metric_file)


@dataclass
class Scored:
    metric: Any
    first: torch.Tensor | None = None  # (B,) per-clip values of the first update
    second: torch.Tensor | None = None  # the same input again, a fresh copy
    features: tuple[dict, dict] | None = None  # set level: clip_features, twice
    set_values: tuple[float, float] | None = None
    degraded: torch.Tensor | None = None  # (B,) values of the degraded prediction, or (1,) set value
    all_values: torch.Tensor | None = None  # per_clip() after the three updates


@pytest.fixture(scope="module")
def scored(metric, clips, degraded) -> Scored:
    """One scoring per metric, shared by the shape / determinism / ideal checks."""
    missing = metric.missing_weights()
    if missing:
        pytest.skip(f"{metric.metric_id}: pretrained files missing ({', '.join(missing)}); see test_missing_weights_*")

    # The target is the one shared tensor (as one GT batch is for all metrics in a run).
    # First pass: the prediction is that same tensor; second pass: a fresh copy, so
    # per-tensor caches (I3D logits) cannot answer and an equal value shows both that the
    # metric is deterministic and that the first value did not come from a shortcut.
    target = clips if metric.needs_reference else None

    result = Scored(metric)
    if metric.level == "set":
        first = metric.clip_features(clips, target)
        second = metric.clip_features(clips.clone(), target)
        result.features = (first, second)
        result.set_values = (metric.set_value(first), metric.set_value(second))
        result.degraded = torch.tensor([metric.set_value(metric.clip_features(degraded, target))], dtype=torch.float64)
    else:
        batch = clips.shape[0]
        metric.update(clips, target)
        result.first = metric.per_clip().clone()
        metric.update(clips.clone(), target)
        result.second = metric.per_clip()[batch:].clone()
        metric.update(degraded, target)
        result.degraded = metric.latest(batch).clone()
        result.all_values = metric.per_clip().clone()
    return result


# --------------------------------------------------------------------------- every metric


def test_the_suite_finds_the_metric_configs():
    assert len(METRIC_FILES) >= 20 and "psnr_y" in METRIC_IDS and "fvd" in METRIC_IDS


def test_identity_and_class_attributes(metric, metric_file):
    assert metric.metric_id == metric_file.stem, "the evaluator keys results by the file's id"
    cls = type(metric)
    assert isinstance(cls.higher_is_better, bool)
    assert isinstance(cls.needs_reference, bool)
    assert cls.level in LEVELS
    # what the evaluator reads: the instance's values (a setting may change one, e.g. ewarp
    # with flow_from=preds is ewarp_nr and needs no reference)
    assert isinstance(metric.higher_is_better, bool)
    assert isinstance(metric.needs_reference, bool)
    assert metric.level in LEVELS


def test_provenance_is_stable_across_builds(metric, metric_file, run_cfg):
    provenance = metric.provenance()
    assert isinstance(provenance, Provenance)
    assert provenance.metric_id == metric.metric_id
    assert provenance.provenance_id.startswith(f"{metric.metric_id}@")
    again = build_metric(run_cfg, metric_file).provenance()
    assert again.provenance_id == provenance.provenance_id
    assert again == provenance


def test_declared_weights_are_registered(metric):
    required = metric.required_weights()
    assert all(name in weights.REGISTRY for name in required), required
    assert set(metric.missing_weights()) <= set(required)


def test_missing_weights_raise_a_clear_error_on_first_use(metric, clips):
    missing = metric.missing_weights()
    if not missing:
        pytest.skip(f"{metric.metric_id}: every pretrained file is present")
    preds = clips[:, :3].clone()  # a short batch: the error comes before any computation
    target = preds.clone() if metric.needs_reference else None
    with pytest.raises(WeightsMissingError) as error:
        if metric.level == "set":
            metric.clip_features(preds, target)
        else:
            metric.update(preds, target)
    message = str(error.value)
    files = [weights.entry(name).filename for name in missing]
    assert any(name in message for name in files), f"the error names none of {files}: {message}"


def test_shapes(scored, clips):
    metric, batch, frames = scored.metric, clips.shape[0], clips.shape[1]
    if metric.level == "set":
        for features in scored.features:
            assert isinstance(features, dict) and features
            dims = set()
            for name, array in features.items():
                assert isinstance(array, torch.Tensor) and array.ndim == 2 and array.shape[0] == batch, (name, array.shape)
                assert torch.isfinite(array).all(), name
                dims.add(array.shape[1])
            assert len(dims) == 1, f"feature arrays of different widths: {dims}"
        value = scored.set_values[0]
        assert isinstance(value, float) and math.isfinite(value)
        return
    assert scored.first.shape == (batch,) and scored.first.dtype == torch.float64
    assert torch.isfinite(scored.first).all() and torch.isfinite(scored.degraded).all(), (scored.first, scored.degraded)
    assert torch.equal(scored.all_values, torch.cat([scored.first, scored.second, scored.degraded]))
    assert torch.allclose(metric.compute().double(), scored.all_values.mean())
    used, note = metric.last_note
    assert isinstance(used, int) and 0 < used <= frames and isinstance(note, str)


def test_determinism(scored):
    if scored.metric.level == "set":
        first, second = scored.features
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first)
        assert scored.set_values[0] == scored.set_values[1]
    else:
        assert torch.equal(scored.first, scored.second), (scored.first, scored.second)


def test_identical_inputs_give_the_ideal_value(scored):
    metric_id = scored.metric.metric_id
    if metric_id not in IDEAL:
        pytest.skip(f"{metric_id}: no entry in IDEAL (test_every_metric_has_an_ideal_value_decision fails)")
    ideal = IDEAL[metric_id]
    if ideal is None:
        pytest.skip(f"{metric_id}: no ideal value (no-reference quality score)")
    expected = ideal.value(scored.metric) if callable(ideal.value) else ideal.value
    if scored.metric.level == "set":
        values = torch.tensor([scored.set_values[0]], dtype=torch.float64)
    else:
        values = scored.first if ideal.on == "both" else scored.first[[STILL]]
    assert torch.allclose(values, torch.full_like(values, expected), rtol=0.0, atol=ideal.tol), (
        f"{metric_id}: identical inputs ({ideal.on}) give {values.tolist()}, ideal {expected} ± {ideal.tol}")


def test_a_degraded_prediction_is_worse_than_the_ideal(scored):
    """``higher_is_better`` points away from the ideal: noise moves the value to the worse side."""
    metric = scored.metric
    ideal = IDEAL.get(metric.metric_id)
    if ideal is None:
        pytest.skip(f"{metric.metric_id}: no ideal value")
    expected = ideal.value(metric) if callable(ideal.value) else ideal.value
    values = scored.degraded if metric.level == "set" or ideal.on == "both" else scored.degraded[[STILL]]
    if metric.higher_is_better:
        assert (values < expected - ideal.tol).all(), f"{metric.metric_id}: degraded {values.tolist()} not below the ideal {expected}"
    else:
        assert (values > expected + ideal.tol).all(), f"{metric.metric_id}: degraded {values.tolist()} not above the ideal {expected}"


def test_every_metric_has_an_ideal_value_decision():
    undecided = sorted(set(METRIC_IDS) - set(IDEAL))
    assert not undecided, (
        f"metric configs without an ideal-value decision: {undecided}; add each to IDEAL in "
        "tests/test_metric_contract.py (None when no ideal value exists)")
    stale = sorted(set(IDEAL) - set(METRIC_IDS))
    assert not stale, f"IDEAL lists metrics that have no conf/metric file: {stale}"
