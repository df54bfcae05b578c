"""SVFR identity tokens: the official iresnet100 / id_linear key layouts and strict loading,
forward shapes, the two ID crops (solver, official pipeline, geometry) and
ReferenceIdentity with an injected detector. Random weights, CPU, tiny networks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.faces.align import ARCFACE_TEMPLATE_112, similarity_transform
from fvr_bench.methods.svfr.identity import (
    ID_CROPS,
    NO_FACE,
    SVFR_TEMPLATE_256,
    IDTokenProjection,
    ReferenceIdentity,
    id_crop,
    load_official_identity,
)
from fvr_bench.methods.svfr.iresnet import IResNet, iresnet100

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_LAYERS = (1, 1, 1, 1)
TOKENS = 49


@pytest.fixture(scope="module")
def tiny_arcface() -> IResNet:
    torch.manual_seed(0)
    return IResNet(TINY_LAYERS).eval()


# --------------------------------------------------------------------------- key layouts


def expected_iresnet_keys(layers: tuple[int, ...]) -> int:
    """Keys of insightface's IResNet state dict, counted by hand: a BN has 5 (weight, bias,
    running mean/var, num_batches_tracked), conv/PReLU 1, Linear 2."""
    stem = 1 + 5 + 1  # conv1, bn1, prelu
    block = 5 + 1 + 5 + 1 + 1 + 5  # bn1, conv1, bn2, prelu, conv2, bn3
    downsample = 1 + 5  # one per stage (every first block changes stride)
    head = 5 + 2 + 5  # bn2, fc, features
    return stem + sum(layers) * block + len(layers) * downsample + head


def test_iresnet100_has_the_official_key_layout():
    with torch.device("meta"):
        net = iresnet100()
    shapes = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    assert len(shapes) == expected_iresnet_keys((3, 13, 30, 3)) == 925
    official = {
        "conv1.weight": (64, 3, 3, 3),
        "bn1.running_mean": (64,),
        "prelu.weight": (64,),
        "layer1.0.bn1.weight": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.prelu.weight": (64,),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer1.0.downsample.1.running_var": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer3.29.conv2.weight": (256, 256, 3, 3),
        "layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "layer4.2.bn3.running_var": (512,),
        "layer4.2.bn3.num_batches_tracked": (),
        "bn2.weight": (512,),
        "fc.weight": (512, 25088),
        "fc.bias": (512,),
        "features.weight": (512,),
        "features.running_var": (512,),
    }
    for key, shape in official.items():
        assert shapes[key] == shape, key
    assert "layer3.30.bn1.weight" not in shapes and "layer1.1.downsample.0.weight" not in shapes
    assert sum(v.numel() for v in net.parameters()) > 65_000_000


def test_projection_has_the_official_key_layout():
    shapes = {k: tuple(v.shape) for k, v in IDTokenProjection().state_dict().items()}
    assert shapes == {"project1024.weight": (1024, 512, 1, 1), "final_norm.weight": (1024,),
                      "final_norm.bias": (1024,)}
    # official names also at a tiny width
    assert set(IDTokenProjection(512, 8).state_dict()) == set(shapes)


# --------------------------------------------------------------------------- forward


def test_tiny_iresnet_returns_embedding_and_layer4_map_before_bn2(tiny_arcface):
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        embedding, layer4_map = tiny_arcface(x)
        assert embedding.shape == (2, 512) and layer4_map.shape == (2, 512, 7, 7)
        # the map is layer4's raw output: the embedding is bn2 → fc → features of it
        again = tiny_arcface.features(tiny_arcface.fc(torch.flatten(tiny_arcface.bn2(layer4_map), 1)))
    torch.testing.assert_close(embedding, again)
    with pytest.raises(ValueError, match="112"):
        tiny_arcface(torch.zeros(1, 3, 128, 128))


def test_projection_tokens_shape_and_norm():
    projection = IDTokenProjection(512, 16)
    feature_map = torch.randn(3, 512, 7, 7)
    tokens = projection(feature_map)
    assert tokens.shape == (3, TOKENS, 16)
    # token k is spatial position (k // 7, k % 7)
    manual = projection.final_norm(projection.project1024(feature_map)[:, :, 2, 5])
    torch.testing.assert_close(tokens[:, 2 * 7 + 5], manual)


# --------------------------------------------------------------------------- loading


def release_id_linear(path, out_channels: int = 1024) -> dict[str, torch.Tensor]:
    """An ``id_linear`` file as released: the official keys, fp16, plain torch.save."""
    torch.manual_seed(1)
    state = {"project1024.weight": torch.randn(out_channels, 512, 1, 1),
             "final_norm.weight": torch.rand(out_channels) + 0.5,
             "final_norm.bias": torch.randn(out_channels)}
    state = {k: v.half() for k, v in state.items()}
    torch.save(state, path)
    return state


def small_arcface() -> IResNet:
    """The tiny IResNet with an 8-d embedding: a small ``fc``, so files write fast."""
    return IResNet(TINY_LAYERS, num_features=8)


@pytest.fixture(scope="module")
def arcface_files(tmp_path_factory) -> tuple[dict, dict]:
    """An ArcFace file as released (random values, official keys) and the same without the
    BN counters: (paths, the saved state)."""
    root = tmp_path_factory.mktemp("svfr_weights")
    torch.manual_seed(2)
    state = {k: (torch.randn_like(v) if v.is_floating_point() else v.clone())
             for k, v in small_arcface().state_dict().items()}
    paths = {"full": root / "insightface_glint360k.pth", "no_counters": root / "no_counters.pth"}
    torch.save(state, paths["full"])
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, paths["no_counters"])
    return paths, state


def test_release_files_load_strictly(tmp_path, arcface_files):
    paths, arcface_state = arcface_files
    arcface, projection = small_arcface(), IDTokenProjection()
    id_state = release_id_linear(tmp_path / "id_linear.pth")
    load_official_identity(arcface, projection, paths["full"], tmp_path / "id_linear.pth")
    torch.testing.assert_close(arcface.state_dict()["layer4.0.conv2.weight"], arcface_state["layer4.0.conv2.weight"])
    torch.testing.assert_close(projection.project1024.weight, id_state["project1024.weight"].float())
    torch.testing.assert_close(projection.final_norm.bias, id_state["final_norm.bias"].float())


def test_arcface_file_without_bn_counters_loads(tmp_path, arcface_files):
    paths, state = arcface_files
    release_id_linear(tmp_path / "p.pth")
    arcface = small_arcface()
    load_official_identity(arcface, IDTokenProjection(), paths["no_counters"], tmp_path / "p.pth")
    torch.testing.assert_close(arcface.fc.weight, state["fc.weight"])
    assert int(arcface.bn1.num_batches_tracked) == 0


def test_misfits_name_the_key(tmp_path, arcface_files):
    paths, _ = arcface_files
    release_id_linear(tmp_path / "p.pth")
    with pytest.raises(ConfigError, match=r"project1024\.weight.*\(1024, 512, 1, 1\).*\(64, 512, 1, 1\)"):
        load_official_identity(small_arcface(), IDTokenProjection(512, 64), paths["full"], tmp_path / "p.pth")
    state = torch.load(tmp_path / "p.pth")
    torch.save({**state, "project1024.bias": torch.zeros(1024, dtype=torch.float16)}, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match=r"unexpected key.*project1024\.bias"):
        load_official_identity(small_arcface(), IDTokenProjection(), paths["full"], tmp_path / "extra.pth")
    # the 8-d file into a 512-d ArcFace, and into a deeper one
    with pytest.raises(ConfigError, match=r"fc\.weight.*\(8, 25088\).*\(512, 25088\)"):
        load_official_identity(IResNet(TINY_LAYERS), IDTokenProjection(), paths["full"], tmp_path / "p.pth")
    with pytest.raises(ConfigError, match=r"missing key.*layer1\.1\."):
        load_official_identity(IResNet((2, 1, 1, 1), num_features=8), IDTokenProjection(), paths["full"],
                               tmp_path / "p.pth")


def test_missing_files_raise(tmp_path, arcface_files):
    paths, _ = arcface_files
    release_id_linear(tmp_path / "p.pth")
    with pytest.raises(WeightsMissingError, match="insightface_glint360k.pth"):
        load_official_identity(small_arcface(), IDTokenProjection(), tmp_path / "insightface_glint360k.pth",
                               tmp_path / "p.pth")
    with pytest.raises(WeightsMissingError, match="nothere.pth"):
        load_official_identity(small_arcface(), IDTokenProjection(), paths["full"], tmp_path / "nothere.pth")


# --------------------------------------------------------------------------- ID crops


def official_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Reference: SVFR's ``get_affine_transform`` as normal equations of the 4-DoF least
    squares ``[a -b; b a] p + (tx, ty) ≈ q`` (unknowns a, b, tx, ty)."""
    n = len(src)
    sx, sy = src[:, 0], src[:, 1]
    dx, dy = dst[:, 0], dst[:, 1]
    r2 = float(np.sum(sx * sx + sy * sy))
    a = np.array([[r2, 0.0, sx.sum(), sy.sum()],
                  [0.0, r2, -sy.sum(), sx.sum()],
                  [sx.sum(), -sy.sum(), n, 0.0],
                  [sy.sum(), sx.sum(), 0.0, n]])
    b = np.array([np.sum(sx * dx + sy * dy), np.sum(sx * dy - sy * dx), dx.sum(), dy.sum()])
    scale_cos, scale_sin, tx, ty = np.linalg.solve(a, b)
    return np.array([[scale_cos, -scale_sin, tx], [scale_sin, scale_cos, ty]])


def moved(points: np.ndarray, angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """``points`` under a similarity (about their mean)."""
    t = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    centre = points.mean(0)
    return (points - centre) @ rot.T + centre + np.asarray(shift)


def test_svfr_template_is_the_official_mean_face():
    # mean_face_lm5p_256 of SVFR's src/dataset/dataset.py, written out
    official = np.array([[(30.2946 + 8) * 2 + 16, 51.6963 * 2], [(65.5318 + 8) * 2 + 16, 51.5014 * 2],
                         [(48.0252 + 8) * 2 + 16, 71.7366 * 2], [(33.5493 + 8) * 2 + 16, 92.3655 * 2],
                         [(62.7299 + 8) * 2 + 16, 92.2041 * 2]], dtype=np.float32)
    np.testing.assert_allclose(SVFR_TEMPLATE_256, official, atol=1e-4)


def test_umeyama_equals_the_official_normal_equations():
    rng = np.random.default_rng(0)
    for _ in range(50):
        src = rng.uniform(0, 512, size=(5, 2))
        dst = rng.uniform(0, 256, size=(5, 2))
        np.testing.assert_allclose(similarity_transform(src, dst), official_affine(src, dst), atol=1e-8, rtol=1e-7)
    # and on realistic faces (template under a similarity plus detector noise)
    for _ in range(20):
        src = moved(SVFR_TEMPLATE_256, rng.uniform(-30, 30), rng.uniform(0.5, 3), rng.uniform(-50, 50, 2))
        src = src + rng.normal(0, 2, size=src.shape)
        np.testing.assert_allclose(similarity_transform(src, SVFR_TEMPLATE_256 * 2),
                                   official_affine(src, SVFR_TEMPLATE_256 * 2), atol=1e-8, rtol=1e-7)


def test_svfr_official_crop_matches_the_release_pipeline():
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, size=(512, 512, 3), dtype=np.uint8), (5, 5), 0)
    points = moved(SVFR_TEMPLATE_256 * 2, 12.0, 0.8, (10.0, -6.0)) + rng.normal(0, 1.5, size=(5, 2))
    # infer.py: get_affine_transform → warpAffine (cubic) → ToTensor+Normalize → slice → resize
    matrix = official_affine(points, SVFR_TEMPLATE_256 * 512 / 256)
    warped = cv2.warpAffine(image, matrix, (512, 512), flags=cv2.INTER_CUBIC)
    x = (torch.from_numpy(warped).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    reference = F.interpolate(x[None, :, 0:224, 16:240], size=[112, 112], mode="bilinear")
    crop = id_crop(image, points, "svfr_official")
    assert crop.shape == (1, 3, 112, 112) and crop.dtype == torch.float32
    assert crop.min() >= -1 and crop.max() <= 1
    torch.testing.assert_close(crop, reference, atol=1e-5, rtol=0)


def blob_image(shape: tuple[int, int], centre: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 RGB ``shape`` image, black with one white Gaussian dot at ``centre`` (x, y)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    dot = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(255 * dot).astype(np.uint8)[..., None], 3, axis=2)


def dot_position(crop: torch.Tensor) -> np.ndarray | None:
    """Intensity-weighted centre (x, y) of the dot in a ``(1, 3, h, w)`` [-1, 1] crop; None
    when there is (almost) no dot."""
    weight = ((crop[0, 0] + 1) / 2).clamp(min=0).numpy().astype(np.float64)
    weight[weight < 0.05] = 0
    if weight.sum() < 1.0:
        return None
    ys, xs = np.mgrid[0:weight.shape[0], 0:weight.shape[1]]
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def test_aligned_112_puts_the_points_on_the_arcface_template():
    points = moved(ARCFACE_TEMPLATE_112 * 2.3, -15.0, 1.0, (60.0, 40.0))
    for index in range(5):
        image = blob_image((360, 320), points[index], sigma=5.0)
        found = dot_position(id_crop(image, points, "aligned_112"))
        np.testing.assert_allclose(found, ARCFACE_TEMPLATE_112[index], atol=0.3)


def test_svfr_official_crop_geometry_depends_on_the_frame_size():
    # at 256² the window is the ArcFace crop at 2× (a quarter-pixel off from aligned_112:
    # the half-size resize maps u to (u - 0.5) / 2)
    points = moved(SVFR_TEMPLATE_256, 8.0, 0.9, (5.0, 3.0))
    for index in range(5):
        found = dot_position(id_crop(blob_image((256, 256), points[index], 4.0), points, "svfr_official"))
        np.testing.assert_allclose(found, ARCFACE_TEMPLATE_112[index] - 0.25, atol=0.3)
    # at 512² (SVFR's size) it is the top-left quadrant: only the left eye is in view
    points = moved(SVFR_TEMPLATE_256 * 2, 8.0, 0.9, (5.0, 3.0))
    left_eye = dot_position(id_crop(blob_image((512, 512), points[0], 8.0), points, "svfr_official"))
    np.testing.assert_allclose(left_eye, (SVFR_TEMPLATE_256[0] * 2 - (16, 0) - 0.5) / 2, atol=0.3)
    for index in (1, 2, 3, 4):
        assert dot_position(id_crop(blob_image((512, 512), points[index], 8.0), points, "svfr_official")) is None


def test_unknown_crop_is_a_config_error():
    with pytest.raises(ConfigError, match=r"method\.restore\.id_crop.*svfr_official.*aligned_112"):
        id_crop(np.zeros((64, 64, 3), np.uint8), ARCFACE_TEMPLATE_112, "center")
    with pytest.raises(ConfigError, match=r"method\.restore\.id_crop"):
        ReferenceIdentity(small_arcface(), IDTokenProjection(512, 8), id_crop="center")
    assert ID_CROPS == ("svfr_official", "aligned_112")


# --------------------------------------------------------------------------- tokens


def test_tokens_without_a_face(tiny_arcface):
    identity = ReferenceIdentity(tiny_arcface, IDTokenProjection(512, 8), detector=lambda image: None)
    assert identity.tokens(torch.rand(3, 64, 64)) == (None, NO_FACE)


@pytest.mark.parametrize("mode", ID_CROPS)
def test_tokens_from_fixed_points(tiny_arcface, mode):
    seen = []
    points = moved(SVFR_TEMPLATE_256, 5.0, 0.9, (3.0, -2.0))

    def detect(image: np.ndarray) -> np.ndarray:
        seen.append(image)
        return points

    projection = IDTokenProjection(512, 8)
    identity = ReferenceIdentity(tiny_arcface, projection, id_crop=mode, detector=detect)
    frame = torch.rand(3, 256, 256)
    tokens, reason = identity.tokens(frame)
    assert tokens.shape == (1, TOKENS, 8) and tokens.dtype == torch.float32
    assert reason == f"id tokens from detect 5 points, crop {mode}"
    # the detector saw the frame as 8-bit RGB (H, W, 3)
    assert seen[0].dtype == np.uint8 and seen[0].shape == (256, 256, 3)
    with torch.no_grad():
        expected = projection(tiny_arcface(id_crop(seen[0], points, mode))[1])
    torch.testing.assert_close(tokens.detach(), expected)


def test_only_the_projection_trains(tiny_arcface):
    projection = IDTokenProjection(512, 8).double()
    identity = ReferenceIdentity(tiny_arcface, projection, detector=lambda image: SVFR_TEMPLATE_256)
    identity.train()
    assert not tiny_arcface.training and identity.projection.training
    assert not any(p.requires_grad for p in tiny_arcface.parameters())
    tokens, _ = identity.tokens(torch.rand(3, 256, 256))
    assert tokens.dtype == torch.float64  # the projection's dtype
    tokens.sum().backward()
    assert projection.project1024.weight.grad is not None


def test_tokens_with_the_default_mtcnn(carphone):
    identity = ReferenceIdentity(small_arcface(), IDTokenProjection(512, 8), id_crop="aligned_112")
    tokens, reason = identity.tokens(torch.from_numpy(carphone[0]).permute(2, 0, 1))
    assert tokens.shape == (1, TOKENS, 8) and reason == "id tokens from mtcnn 5 points, crop aligned_112"
    assert identity.tokens(torch.zeros(3, 144, 176)) == (None, NO_FACE)
