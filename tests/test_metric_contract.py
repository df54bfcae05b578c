"""One contract suite over every metric config, ``conf/metric/*.yaml`` (issue 11, item 4).

Each metric is built the way the evaluator builds it — from the composed run config, so
the run-level keys the metric configs interpolate (``compat``) resolve — and checked for:

* identity: ``metric_id`` is the file stem; ``higher_is_better`` / ``needs_reference`` are
  bools; ``level`` is frame | clip | set; the kind: a ``ClipMetric`` (``level`` frame or
  clip) or a ``SetMetric`` (``level`` set), never both;
* provenance: a ``Provenance`` whose id starts with ``<metric_id>@`` and is the same for two
  builds of the same config;
* missing pretrained files (``missing_weights()`` non-empty, as in CI where user-supplied
  weights are absent): the first use raises ``WeightsMissingError`` naming the file (and
  nothing is downloaded: every socket connect fails in this module);
* with its files present, on real face frames (the sample builder's 192² carphone clip,
  9 frames — NIQE needs at least 96×192):
  shapes (clip metrics: ``score`` gives ``(B,)`` float64 and a ``(frames, note)`` per clip,
  keeps no state, and ``update``/``compute`` accumulate it; set metrics: ``features``
  gives ``(B, D)`` arrays and ``value`` a float), determinism (the same input again, as a fresh copy,
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
from contract_helpers import config_files, mark_known_bug, no_network, read_frames
from omegaconf import OmegaConf

from fvr_bench import weights
from fvr_bench.config import build, compose
from fvr_bench.errors import WeightsMissingError
from fvr_bench.metrics.base import ClipMetric, Provenance, SetMetric

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
    mark_known_bug(request, KNOWN_BUGS, "metric_file")


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
    if "resolution" in run_cfg.probe:  # I3D at 112² keeps the fast tier fast; the contract does not change
        run_cfg.probe.resolution = 112
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
    first: torch.Tensor | None = None  # (B,) score() of the first input
    second: torch.Tensor | None = None  # the same input again, a fresh copy
    notes: list | None = None  # last_notes after the first score()
    state_after_score: int | None = None  # len(metric.values) after the three score() calls
    features: tuple[dict, dict] | None = None  # set level: features, twice
    set_values: tuple[float, float] | None = None
    degraded: torch.Tensor | None = None  # (B,) values of the degraded prediction, or (1,) set value
    updated: tuple | None = None  # torchmetrics API: (per_clip(), compute()) after update(), clips after reset()


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
    if isinstance(metric, SetMetric):
        first = metric.features(clips, target)
        second = metric.features(clips.clone(), target)
        result.features = (first, second)
        result.set_values = (metric.value(first), metric.value(second))
        result.degraded = torch.tensor([metric.value(metric.features(degraded, target))], dtype=torch.float64)
    else:
        result.first = metric.score(clips, target).clone()
        result.notes = list(metric.last_notes)
        result.second = metric.score(clips.clone(), target).clone()
        result.degraded = metric.score(degraded, target).clone()
        result.state_after_score = len(metric.values)
        # the torchmetrics API for library users: update appends score(), compute is the mean
        metric.update(clips.clone(), target)
        metric.update(degraded, target)
        values, computed = metric.per_clip().clone(), metric.compute().clone()
        metric.reset()
        result.updated = (values, computed, metric.per_clip().numel())
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
    # the kind, which the evaluator dispatches on; level only reports
    assert isinstance(metric, ClipMetric) != isinstance(metric, SetMetric)
    assert (cls.level == "set") == isinstance(metric, SetMetric)
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
    assert all(weights.entry(name).name == name for name in required), required  # entry() raises for unknown names
    assert set(metric.missing_weights()) <= set(required)


def test_missing_weights_raise_a_clear_error_on_first_use(metric, clips):
    missing = metric.missing_weights()
    if not missing:
        pytest.skip(f"{metric.metric_id}: every pretrained file is present")
    preds = clips[:, :3].clone()  # a short batch: the error comes before any computation
    target = preds.clone() if metric.needs_reference else None
    with pytest.raises(WeightsMissingError) as error:
        if isinstance(metric, SetMetric):
            metric.features(preds, target)
        else:
            metric.score(preds, target)
    message = str(error.value)
    files = [weights.entry(name).filename for name in missing]
    assert any(name in message for name in files), f"the error names none of {files}: {message}"


def test_shapes(scored, clips):
    metric, batch, frames = scored.metric, clips.shape[0], clips.shape[1]
    if isinstance(metric, SetMetric):
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
    assert scored.second.shape == scored.degraded.shape == (batch,)
    assert scored.state_after_score == 0, "score() must not accumulate state"
    values, computed, after_reset = scored.updated
    assert torch.equal(values, torch.cat([scored.second, scored.degraded]))
    assert torch.allclose(computed.double(), values.mean(), equal_nan=True) and after_reset == 0
    assert len(scored.notes) == batch
    for used, note in scored.notes:
        assert isinstance(used, int) and 0 < used <= frames and isinstance(note, str)
    assert metric.last_note == metric.last_notes[-1]


def test_set_metric_update_compute_reset(scored, clips):
    """Set metrics under torchmetrics' API: update accumulates features, compute is their
    value, reset forgets them."""
    metric = scored.metric
    if not isinstance(metric, SetMetric):
        pytest.skip("clip metric: checked in test_shapes")
    target = clips if metric.needs_reference else None
    metric.update(clips, target)
    metric.update(clips.clone(), target)
    stacked = metric.stacked_features()
    assert all(array.shape[0] == 2 * clips.shape[0] for array in stacked.values())
    assert metric.compute().item() == metric.value(stacked)
    metric.reset()
    assert all(array.shape[0] == 0 for array in metric.stacked_features().values())


def test_determinism(scored):
    if isinstance(scored.metric, SetMetric):
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
    if isinstance(scored.metric, SetMetric):
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
    values = scored.degraded if isinstance(metric, SetMetric) or ideal.on == "both" else scored.degraded[[STILL]]
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
