"""E_warp and Flow-Score on real face video (carphone), and the warp/occlusion algebra by hand.

The hand-built cases check the formula against a direct numpy transcription of Lai et al.'s
``detect_occlusion`` + ``evaluate_WarpError.py`` (FlowNet2 ``Resample2d`` warping: bilinear
with neighbour indices clamped to the frame).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import overrides
from scipy.ndimage import gaussian_filter

from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.metrics.backends.flow import DISFlow, FarnebackFlow, RAFTFlow, video_flow
from fvr_bench.metrics.temporal import (
    EWarp,
    FlowScore,
    backward_warp,
    flow_gradient_energy,
    occlusion_mask,
    pair_warping_errors,
)

RAFT_FILE = "raft_large_C_T_SKHT_V2-ff5fadd5.pth"


# --------------------------------------------------------------------------- numpy reference (Lai et al.)


def np_resample2d(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """FlowNet2 ``Resample2d``: ``image`` (H, W, C), ``flow`` (H, W, 2) → image(x + flow(x)),
    bilinear, the four neighbour indices clamped to the frame."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xf, yf = xs + flow[..., 0], ys + flow[..., 1]
    alpha, beta = (xf - np.floor(xf))[..., None], (yf - np.floor(yf))[..., None]
    xl = np.clip(np.floor(xf).astype(int), 0, width - 1)
    xr = np.clip(np.floor(xf).astype(int) + 1, 0, width - 1)
    yt = np.clip(np.floor(yf).astype(int), 0, height - 1)
    yb = np.clip(np.floor(yf).astype(int) + 1, 0, height - 1)
    return (
        (1 - alpha) * (1 - beta) * image[yt, xl]
        + alpha * (1 - beta) * image[yt, xr]
        + (1 - alpha) * beta * image[yb, xl]
        + alpha * beta * image[yb, xr]
    )


def np_detect_occlusion(fw_flow: np.ndarray, bw_flow: np.ndarray) -> np.ndarray:
    """Lai's ``utils.detect_occlusion`` verbatim in its own names; (H, W) 1 = occluded."""
    fw_flow_w = np_resample2d(fw_flow, bw_flow)
    mag = lambda f: f[..., 0] ** 2 + f[..., 1] ** 2
    mask1 = mag(fw_flow_w + bw_flow) > 0.01 * (mag(fw_flow_w) + mag(bw_flow)) + 0.5
    fx_du, fx_dv, fy_du, fy_dv = (np.zeros(bw_flow.shape[:2]) for _ in range(4))
    fx_du[:, :-1] = bw_flow[:, :-1, 0] - bw_flow[:, 1:, 0]
    fx_dv[:-1, :] = bw_flow[:-1, :, 0] - bw_flow[1:, :, 0]
    fy_du[:, :-1] = bw_flow[:, :-1, 1] - bw_flow[:, 1:, 1]
    fy_dv[:-1, :] = bw_flow[:-1, :, 1] - bw_flow[1:, :, 1]
    mask2 = (fx_du**2 + fx_dv**2 + fy_du**2 + fy_dv**2) > 0.01 * mag(bw_flow) + 0.002
    return np.logical_or(mask1, mask2).astype(np.float64)


def np_warp_error(img1, img2, fw_flow, bw_flow) -> float:
    """One pair of ``evaluate_WarpError.py``; ``compute_flow_occlusion.py`` calls
    ``detect_occlusion(bw_flow, fw_flow)`` — arguments swapped — and the mask PNG is read
    back with 3 channels, so N counts every channel."""
    occ = np_detect_occlusion(bw_flow, fw_flow)
    noc_mask = np.repeat((1 - occ)[..., None], 3, axis=2)
    diff = (np_resample2d(img2, fw_flow) - img1) * noc_mask
    n = noc_mask.sum() or diff.size
    return float(np.square(diff).sum() / n)


def t_img(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) numpy → (1, C, H, W) float64 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(torch.float64)


# --------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip(carphone) -> torch.Tensor:
    """6 real frames of carphone at full resolution: (1, 6, 3, 144, 176) in [0, 1]."""
    return torch.from_numpy(carphone[20:26]).permute(0, 3, 1, 2)[None].contiguous()


@pytest.fixture(scope="module")
def gt_ewarp(clip) -> float:
    """E_warp (DIS) of the GT clip against itself."""
    return EWarp()(clip, clip).item()


def translated_pair(dx: int, dy: int, height: int = 36, width: int = 44, seed: int = 0):
    """A smooth random RGB texture and the same texture moved by (+dx, +dy) pixels:
    ``second(y, x) = first(y − dy, x − dx)``, new content entering at the top/left."""
    rng = np.random.default_rng(seed)
    canvas = gaussian_filter(rng.random((height + 20, width + 20, 3)), sigma=(1.5, 1.5, 0))
    canvas = (canvas - canvas.min()) / (canvas.max() - canvas.min())
    first = canvas[10 : 10 + height, 10 : 10 + width]
    second = canvas[10 - dy : 10 - dy + height, 10 - dx : 10 - dx + width]
    return first, second


def constant_flow(dx: float, dy: float, height: int, width: int) -> torch.Tensor:
    flow = torch.zeros(1, 2, height, width, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


# --------------------------------------------------------------------------- warp and mask by hand


def test_integer_translation_is_undone_exactly_in_the_interior():
    dx, dy = 3, 2
    first, second = translated_pair(dx, dy)
    height, width = first.shape[:2]
    warped = backward_warp(t_img(second), constant_flow(dx, dy, height, width))[0].numpy().transpose(1, 2, 0)
    # interior: x + d stays in the frame → the warped next frame is the first frame
    np.testing.assert_allclose(warped[: height - dy, : width - dx], first[: height - dy, : width - dx], rtol=0, atol=1e-12)
    # the strip that leaves the frame reads the nearest border pixel (Resample2d clamping)
    ys, xs = np.mgrid[0:height, 0:width]
    expected = second[np.minimum(ys + dy, height - 1), np.minimum(xs + dx, width - 1)]
    np.testing.assert_allclose(warped, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(warped, np_resample2d(second, np.broadcast_to([dx, dy], (height, width, 2))), atol=1e-12)


def test_translation_warping_error_equals_direct_numpy_computation():
    dx, dy = 3, 2
    first, second = translated_pair(dx, dy)
    height, width = first.shape[:2]
    frames = torch.cat([t_img(first), t_img(second)])
    fw, bw = constant_flow(dx, dy, height, width), constant_flow(-dx, -dy, height, width)
    # constant flows are forward-backward consistent everywhere: Lai's mask keeps every pixel,
    # so the error is the plain mean over pixels and channels, all of it from the exit strip
    assert not occlusion_mask(fw, bw).any()
    ys, xs = np.mgrid[0:height, 0:width]
    warped = second[np.minimum(ys + dy, height - 1), np.minimum(xs + dx, width - 1)]
    direct = np.mean((warped - first) ** 2)
    strip = (ys >= height - dy) | (xs >= width - dx)
    assert direct > 0 and np.isclose(np.sum((warped - first)[strip] ** 2) / (3 * height * width), direct)
    got = pair_warping_errors(frames, fw, bw)
    assert got.shape == (1,) and got.dtype == torch.float64
    assert got.item() == pytest.approx(direct, rel=1e-12)
    assert got.item() == pytest.approx(np_warp_error(first, second, fw[0].numpy().transpose(1, 2, 0), bw[0].numpy().transpose(1, 2, 0)), rel=1e-12)
    # optional out-of-frame masking removes exactly that strip: the rest is recovered exactly
    mask = occlusion_mask(fw, bw, mask_out_of_frame=True)[0].numpy()
    np.testing.assert_array_equal(mask, strip)
    assert pair_warping_errors(frames, fw, bw, mask_out_of_frame=True).item() < 1e-24


def test_occluded_region_and_motion_boundary_are_masked():
    dx, dy = 3, 2
    first, second = translated_pair(dx, dy)
    height, width = first.shape[:2]
    fw, bw = constant_flow(dx, dy, height, width), constant_flow(-dx, -dy, height, width)
    # a static occluder in frame t+1 (its backward flow is 0) whose pixels hold garbage
    block = (slice(10, 20), slice(15, 27))
    bw[0, :, block[0], block[1]] = 0.0
    second = second.copy()
    second[block] = 1.0
    frames = torch.cat([t_img(first), t_img(second)])
    occluded = occlusion_mask(fw, bw)[0].numpy()
    # pixels of frame t that land in the block: |0 + d|² = 13 > 0.01·13 + 0.5
    expected = np.zeros((height, width), bool)
    expected[10 - dy : 20 - dy, 15 - dx : 27 - dx] = True
    np.testing.assert_array_equal(occluded, expected)
    # the garbage is read only by occluded pixels (integer flow): the error stays that of the exit strip
    clean = pair_warping_errors(torch.cat([t_img(first), t_img(translated_pair(dx, dy)[1])]), fw, constant_flow(-dx, -dy, height, width))
    got = pair_warping_errors(frames, fw, bw).item()
    assert got == pytest.approx(np_warp_error(first, second, fw[0].numpy().transpose(1, 2, 0), bw[0].numpy().transpose(1, 2, 0)), rel=1e-12)
    unmasked = np.mean((backward_warp(frames[1:], fw)[0].numpy().transpose(1, 2, 0) - first) ** 2)
    assert got < 2 * clean.item() and unmasked > 10 * got
    # a motion boundary of the forward flow, a step from d to 0: the gradient test flags the
    # last column before it; the forward-backward test flags the columns that land behind it
    step = fw.clone()
    step[..., 30:] = 0.0
    gradient = (flow_gradient_energy(step)[0] > 0.01 * step[0].square().sum(0) + 0.002).numpy()
    assert gradient[:, 29].all() and gradient.sum() == height
    occluded = occlusion_mask(step, -step)[0].numpy()
    np.testing.assert_array_equal(occluded.any(axis=0), np.isin(np.arange(width), [27, 28, 29]))
    assert occluded[:, 27:30].all()


def test_warping_error_matches_numpy_transcription_of_lai_on_fractional_flows():
    rng = np.random.default_rng(3)
    height, width = 30, 38
    img1, img2 = rng.random((height, width, 3)), rng.random((height, width, 3))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    # smooth fractional motion (gradients far below the motion-boundary threshold) …
    fw = np.stack([1.3 + 0.02 * xs + 0.3 * np.sin(ys / 7), -0.7 + 0.015 * ys], axis=-1)
    fw[:, 20:, 0] += 2.5  # … with one motion boundary …
    bw = -np_resample2d(fw, -fw)  # … a nearly consistent backward flow …
    bw[5:15, 8:18] += 1.5  # … and a patch where it disagrees (an occlusion)
    occ = np_detect_occlusion(bw, fw)
    assert 0.05 < occ.mean() < 0.6  # both kinds of pixels are there: the check is not vacuous
    ours = occlusion_mask(t_img(fw), t_img(bw))[0].numpy()
    np.testing.assert_array_equal(ours, occ.astype(bool))
    got = pair_warping_errors(torch.cat([t_img(img1), t_img(img2)]), t_img(fw), t_img(bw)).item()
    assert got == pytest.approx(np_warp_error(img1, img2, fw, bw), rel=1e-10)


# --------------------------------------------------------------------------- flow backends on real frames


@pytest.mark.parametrize("backend, tolerance", [(DISFlow(), 0.15), (FarnebackFlow(), 0.3)])
def test_opencv_backends_recover_a_known_shift_of_a_real_frame(carphone, backend, tolerance):
    frame = carphone[40]
    first = frame[4:124, 6:150]  # second = first moved by (+2, +1): first(x) = second(x + (2, 1))
    second = frame[3:123, 4:148]
    frames = torch.from_numpy(np.stack([first, second])).permute(0, 3, 1, 2)
    fw = video_flow(frames, backend)
    bw = video_flow(frames, backend, "backward")
    assert fw.shape == (1, 2, 120, 144) and fw.dtype == torch.float32
    inner = (slice(None), slice(None), slice(16, -16), slice(16, -16))
    assert fw[inner][0, 0].median().item() == pytest.approx(2.0, abs=tolerance)
    assert fw[inner][0, 1].median().item() == pytest.approx(1.0, abs=tolerance)
    assert bw[inner][0, 0].median().item() == pytest.approx(-2.0, abs=tolerance)
    assert bw[inner][0, 1].median().item() == pytest.approx(-1.0, abs=tolerance)


# --------------------------------------------------------------------------- the metrics on real video


def test_output_equal_to_gt_scores_the_warping_error_of_gt_itself(clip, gt_ewarp):
    value = gt_ewarp
    # direct computation from the building blocks: DIS on the 8-bit frames, Lai's mask and error
    frames = torch.floor(clip[0] * 255 + 0.5) / 255
    fw, bw = video_flow(frames, DISFlow()), video_flow(frames, DISFlow(), "backward")
    direct = pair_warping_errors(frames, fw, bw).mean().item()
    assert value == pytest.approx(direct, rel=1e-12)
    assert 0 < value < 2e-3  # real motion, well-estimated flow: small but not zero
    assert EWarp(flow_from="preds")(clip).item() == pytest.approx(value, rel=1e-12)


def test_static_clip_has_zero_warping_error_and_zero_flow(clip):
    static = clip[:, :1].repeat(1, 6, 1, 1, 1)
    assert EWarp()(static, static).item() < 1e-12
    # Farneback returns flows of ~1e-3 px on identical frames (polynomial fit), hence ~1e-6
    assert EWarp(flow="farneback")(static, static).item() < 1e-5
    assert FlowScore(flow="dis")(static).item() < 1e-3
    assert FlowScore(flow="farneback")(static).item() < 1e-2  # vs ~0.5 px for carphone's motion


def test_brightness_flicker_raises_warping_error_and_flow_score(clip, gt_ewarp):
    # BFVR-STC-style flicker: per-frame gain in [0.5, 1.5] (cv2.convertScaleAbs saturates at 1)
    gains = torch.tensor([1.0, 1.35, 0.7, 1.2, 0.6, 1.4]).view(1, 6, 1, 1, 1)
    flicker = (clip * gains).clamp(0, 1)
    clean = gt_ewarp
    assert EWarp()(flicker, clip).item() > 20 * clean
    assert EWarp(flow_from="preds")(flicker).item() > 20 * clean
    assert EWarp(flow="farneback")(flicker, clip).item() > 20 * EWarp(flow="farneback")(clip, clip).item()
    assert FlowScore(flow="dis")(flicker).item() > 1.2 * FlowScore(flow="dis")(clip).item()
    assert FlowScore(flow="farneback")(flicker).item() > 1.2 * FlowScore(flow="farneback")(clip).item()


def test_per_clip_values_chunking_and_batch(clip, gt_ewarp):
    other = clip.flip(1)  # the same frames played backwards: another clip
    batch = torch.cat([clip, other])
    metric = EWarp(chunk_pairs=2)  # chunks of pairs change memory, not the value
    metric.update(batch, batch)
    values = metric.per_clip()
    assert values.shape == (2,)
    assert values[0].item() == pytest.approx(gt_ewarp, rel=1e-12)
    assert values[1].item() == pytest.approx(EWarp()(other, other).item(), rel=1e-12)
    pairs = FlowScore(flow="dis", chunk_pairs=2).pair_scores(batch)
    assert pairs.shape == (2, 5) and (pairs > 0).all()
    with pytest.raises(ValueError, match="at least 2 frames"):
        EWarp()(clip[:, :1], clip[:, :1])


def test_ids_reference_needs_and_settings():
    assert (EWarp().metric_id, EWarp(flow="farneback").metric_id, EWarp(flow="raft").metric_id) == (
        "ewarp", "ewarp_farneback", "ewarp_raft")
    assert EWarp().needs_reference and not EWarp(flow_from="preds").needs_reference
    assert EWarp(flow_from="preds").metric_id == "ewarp_nr"
    assert (FlowScore().metric_id, FlowScore(flow="dis").metric_id) == ("flow_score", "flow_score_dis")
    assert not FlowScore().needs_reference and not EWarp.higher_is_better and not FlowScore.higher_is_better
    assert EWarp().provenance().provenance_id != EWarp(flow_options={"preset": "ultrafast"}).provenance().provenance_id
    assert EWarp().required_weights() == [] and FlowScore(flow="dis").weights_file() == (None, None)
    for bad in ({"flow": "flownet2"}, {"flow_from": "gt"}, {"flow_options": {"preset": "slow"}}, {"weights_path": "x.pth"}):
        with pytest.raises(ConfigError):
            EWarp(**bad)
    with pytest.raises(ConfigError, match="unknown parameter"):
        FlowScore(flow="farneback", flow_options={"window": 9})
    with pytest.raises(ConfigError, match="needs ground truth"):
        EWarp().update(torch.rand(1, 2, 3, 16, 16))


def test_temporal_metric_set_end_to_end(tiny_data_dir, tmp_path):
    import pandas as pd

    from fvr_bench.config import compose
    from fvr_bench.evaluate import evaluate

    run_dir = evaluate(compose("run", overrides(tiny_data_dir, tmp_path, "metrics=temporal", "method=identity",
                                                "degradation=none", "limit_clips=1")))
    table = pd.read_csv(run_dir / "summary.csv").set_index("metric")
    assert set(table.index) == {"ewarp", "flow_score_dis"}
    assert 0 < table.loc["ewarp", "value"] < 5e-3 and table.loc["flow_score_dis", "value"] > 0


# --------------------------------------------------------------------------- RAFT


def test_raft_runs_with_random_weights_on_small_frames():
    torch.manual_seed(0)
    frames = torch.rand(1, 2, 3, 130, 132)  # not multiples of 8: padded, then cropped back
    flow = video_flow(frames[0], RAFTFlow(random_weights=True))  # 20 iterations, as EvalCrafter
    assert flow.shape == (1, 2, 130, 132) and flow.dtype == torch.float32 and torch.isfinite(flow).all()
    # the metrics with fewer iterations: the same code path at a fraction of the CPU time
    ewarp = EWarp(flow="raft", random_weights=True, flow_options={"iterations": 3})
    assert ewarp.required_weights() == [] and ewarp.weights_file() == (None, None)
    assert ewarp.settings()["flow"]["iterations"] == 3 and ewarp.settings()["flow"]["random_weights"]
    value = ewarp(frames, frames).item()
    score = FlowScore(random_weights=True, flow_options={"iterations": 3})(frames).item()
    assert np.isfinite(value) and value >= 0 and np.isfinite(score) and score >= 0
    with pytest.raises(ValueError, match="at least|too small"):
        RAFTFlow(random_weights=True)(frames[0, :1, :, :100], frames[0, 1:, :, :100])


def test_raft_without_weights_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FVR_BENCH_WEIGHTS", raising=False)
    metric = FlowScore()  # construction never loads (or looks for) the weights
    assert metric.required_weights() == ["raft_large"] and metric.missing_weights() == ["raft_large"]
    assert metric.weights_file() == (RAFT_FILE, None)
    with pytest.raises(WeightsMissingError, match=RAFT_FILE):
        metric.update(torch.rand(1, 2, 3, 128, 128))
    explicit = EWarp(flow="raft", weights_path=str(tmp_path / "elsewhere.pth"))
    assert explicit.missing_weights() == ["raft_large"]
    with pytest.raises(WeightsMissingError, match=RAFT_FILE):
        explicit.update(torch.rand(1, 2, 3, 128, 128), torch.rand(1, 2, 3, 128, 128))
