"""MUSIQ (pyiqa's ``musiq``, KonIQ checkpoint).

No pretrained weights are available here: the network runs with seeded random weights,
and a state dict written by hand in pyiqa's key layout (the 248 keys of
``musiq_koniq_ckpt-e95806b9.pth`` as pyiqa 0.1.16's ``MUSIQ`` names them) must load with
every key consumed. Patch extraction is checked on hand-made images. When pyiqa itself
can be imported, its ``MUSIQ`` on the same random weights must give the same scores.
Scores with random weights carry no meaning; shapes, determinism and batching are checked.
Small ``longer_side_lengths`` keep the tests fast (the architecture is unchanged).
"""

from __future__ import annotations

import pytest
import torch

from fvr_bench import weights
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.metrics.musiq import (
    MUSIQ,
    build_musiq_net,
    hashed_positions,
    load_musiq_state,
    multiscale_patches,
    same_padding,
)

FAST = (32, 64)  # resized scales for tests: 1 + 4 patches instead of 49 + 144


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- patches


def test_same_padding_is_tensorflow_same():
    x = torch.ones(1, 1, 16, 15)
    out = same_padding(x, 3, 2)  # H: ceil(16/2)=8 → pad 1 (0 top, 1 bottom); W: 8 → pad 2 (1, 1)
    assert out.shape == (1, 1, 17, 17)
    assert out[0, 0, 16].abs().sum() == 0 and out[0, 0, 0].abs().sum() > 0
    assert out[0, 0, :, 0].abs().sum() == 0 and out[0, 0, :, 16].abs().sum() == 0
    assert same_padding(torch.ones(1, 1, 64, 64), 32, 32).shape == (1, 1, 64, 64)


def test_hashed_positions_nearest_on_10x10_grid():
    assert hashed_positions(10, 2, 3).tolist() == [0, 3, 6, 50, 53, 56]
    assert hashed_positions(10, 10, 10).tolist() == list(range(100))
    assert hashed_positions(10, 1, 1).tolist() == [0]


def test_multiscale_patches_geometry_on_a_hand_made_image():
    image = torch.arange(3 * 64 * 96, dtype=torch.float32).reshape(1, 3, 64, 96) / (3 * 64 * 96)
    tokens = multiscale_patches(image, 32, 10, (64, 32), -1)  # lengths are sorted: 32 → id 0, 64 → id 1
    # scale 0: 64x96 → (21, 32): 1 patch (max 1); scale 1: (43, 64): 2x2 (max 4); original: 2x3
    assert tokens.shape == (1, 1 + 4 + 6, 3 * 32 * 32 + 3)
    assert tokens[0, :, -2].tolist() == [0] + [1] * 4 + [2] * 6
    assert tokens[0, :, -1].tolist() == [1] * 11
    assert tokens[0, 5:, -3].tolist() == [0, 3, 6, 50, 53, 56]
    assert tokens[0, 1:5, -3].tolist() == [0, 5, 50, 55]
    for r in range(2):
        for c in range(3):  # full-resolution patches in row-major order, channel-major features
            expected = image[0, :, 32 * r : 32 * r + 32, 32 * c : 32 * c + 32].reshape(-1)
            assert torch.equal(tokens[0, 5 + 3 * r + c, :-3], expected)
    # a resized scale shorter than its maximum length is zero-padded with mask 0
    tokens = multiscale_patches(torch.rand(2, 3, 32, 96), 32, 10, (96, 128), None)
    assert tokens.shape == (2, 9 + 16, 3 * 32 * 32 + 3)
    assert tokens[0, :9, -1].tolist() == [1] * 3 + [0] * 6
    assert tokens[:, 3:9].abs().sum() == 0
    assert tokens[0, 9:, -2].tolist() == [1] * 8 + [0] * 8  # (43, 128): 2x4 patches of 16
    assert tokens[0, 9:, -1].tolist() == [1] * 8 + [0] * 8


# --------------------------------------------------------------------------- weights


def pyiqa_layout_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """The key names and shapes of pyiqa 0.1.16's MUSIQ (KonIQ: one output), by hand."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    state = {"conv_root.weight": r(64, 3, 7, 7), "gn_root.weight": 1 + r(64), "gn_root.bias": r(64)}
    for name, shape in {"conv1": (64, 64, 1, 1), "conv2": (64, 64, 3, 3), "conv3": (256, 64, 1, 1), "conv_proj": (256, 64, 1, 1)}.items():
        state[f"block1.{name}.weight"] = r(*shape)
    for name, ch in {"gn1": 64, "gn2": 64, "gn3": 256, "gn_proj": 256}.items():
        state[f"block1.{name}.weight"], state[f"block1.{name}.bias"] = 1 + r(ch), r(ch)
    state.update({"embedding.weight": r(384, 16384), "embedding.bias": r(384)})
    enc = "transformer_encoder"
    state.update({f"{enc}.posembed_input.position_emb": r(1, 100, 384), f"{enc}.scaleembed_input.scale_emb": r(3, 384),
                  f"{enc}.cls": r(1, 1, 384), f"{enc}.encoder_norm.weight": 1 + r(384), f"{enc}.encoder_norm.bias": r(384)})  # fmt: skip
    for i in range(14):
        p = f"{enc}.transformer.encoderblock_{i}"
        for norm in ("norm1", "norm2"):
            state[f"{p}.{norm}.weight"], state[f"{p}.{norm}.bias"] = 1 + r(384), r(384)
        for lin in ("query", "key", "value", "out"):
            state[f"{p}.attention.{lin}.weight"], state[f"{p}.attention.{lin}.bias"] = r(384, 384), r(384)
        state[f"{p}.mlp.fc1.weight"], state[f"{p}.mlp.fc1.bias"] = r(1152, 384), r(1152)
        state[f"{p}.mlp.fc2.weight"], state[f"{p}.mlp.fc2.bias"] = r(384, 1152), r(384)
    state.update({"head.weight": r(1, 384), "head.bias": torch.tensor([50.0])})
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    state = pyiqa_layout_state()
    assert len(state) == 248
    path = tmp_path_factory.mktemp("musiq") / "musiq_koniq_ckpt-e95806b9.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # DataParallel prefixes are stripped
    return path, state


def test_checkpoint_in_pyiqa_layout_loads_every_key(checkpoint):
    path, state = checkpoint
    metric = MUSIQ(weights_path=str(path), longer_side_lengths=FAST)
    assert metric.required_weights() == ["musiq_koniq"] and metric.missing_weights() == []
    scores = metric.frame_scores(torch.rand(1, 2, 3, 64, 64))
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()
    net_state = metric.network().state_dict()
    assert set(net_state) == set(state)
    assert all(torch.equal(net_state[k], v) for k, v in state.items())
    name, sha = metric.weights_file()
    assert name == path.name and sha == weights.sha256_of(path)


def test_checkpoint_with_missing_or_foreign_keys_is_refused():
    state = pyiqa_layout_state()
    net = build_musiq_net(None, longer_side_lengths=FAST)
    assert len(load_musiq_state(net, dict(state), "ok")) == 248
    broken = dict(state)
    broken.pop("head.bias")
    with pytest.raises(ConfigError, match="missing"):
        load_musiq_state(net, broken, "test")
    with pytest.raises(ConfigError, match="unexpected"):
        load_musiq_state(net, {**state, "head.extra": torch.zeros(1)}, "test")
    with pytest.raises(ConfigError, match="shape"):
        load_musiq_state(net, {**state, "head.weight": torch.zeros(10, 384)}, "test")


def test_missing_weights_raise_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "env"))
    monkeypatch.setattr(weights, "_package_dir", lambda package: None)
    metric = MUSIQ()  # construction never touches the weights
    assert metric.missing_weights() == metric.required_weights() == ["musiq_koniq"]
    with pytest.raises(WeightsMissingError, match=r"musiq_koniq_ckpt-e95806b9\.pth"):
        metric.update(torch.zeros(1, 1, 3, 64, 64))
    assert MUSIQ(weights_path=str(tmp_path / "nowhere.pth")).missing_weights() == ["musiq_koniq"]


# --------------------------------------------------------------------------- metric


def test_scores_shape_determinism_and_batching():
    clips = torch.rand(2, 3, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    metric = MUSIQ(pretrained=False, longer_side_lengths=FAST, chunk_frames=2)
    scores = metric.frame_scores(clips)
    assert scores.shape == (2, 3) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert scores.std() > 0  # different frames, different scores
    again = MUSIQ(pretrained=False, longer_side_lengths=FAST, chunk_frames=6).frame_scores(clips)
    torch.testing.assert_close(again, scores, rtol=0, atol=1e-5)  # chunking never changes the number
    alone = metric.frame_scores(clips[1:, 2:])
    torch.testing.assert_close(alone[0, 0], scores[1, 2], rtol=0, atol=1e-5)
    metric.update(clips)
    torch.testing.assert_close(metric.per_clip(), scores.mean(dim=1).double(), rtol=0, atol=1e-6)
    other_seed = MUSIQ(pretrained=False, seed=1, longer_side_lengths=FAST).frame_scores(clips)
    assert not torch.allclose(other_seed, scores)


def test_full_geometry_runs_on_one_frame():
    """pyiqa's real scales (224, 384; 49 + 144 patches + all full-resolution ones)."""
    metric = MUSIQ(pretrained=False)
    scores = metric.frame_scores(torch.rand(1, 1, 3, 40, 72))
    assert scores.shape == (1, 1) and torch.isfinite(scores).all()


def test_provenance_and_settings():
    metric = MUSIQ(pretrained=False, longer_side_lengths=FAST)
    assert metric.higher_is_better and not metric.needs_reference and metric.level == "frame"
    assert metric.required_weights() == [] and metric.weights_file() == ("random(seed=0)", None)
    settings = metric.settings()
    assert settings["pretrained"] is False and settings["longer_side_lengths"] == [32, 64]
    assert MUSIQ().settings()["longer_side_lengths"] == [224, 384]
    assert metric.provenance().provenance_id != MUSIQ(pretrained=False).provenance().provenance_id
    with pytest.raises(ConfigError):
        MUSIQ(longer_side_lengths=(224,))
    with pytest.raises(ConfigError):
        MUSIQ(max_seq_len_from_original_res=-2)


def test_agrees_with_pyiqa_when_installed():
    reference = pytest.importorskip("pyiqa.archs.musiq_arch")
    ref = reference.MUSIQ(pretrained=False, longer_side_lengths=list(FAST)).eval()
    net = build_musiq_net(None, longer_side_lengths=FAST)
    net.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, 72, 40)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x).reshape(-1), rtol=0, atol=1e-5)
