"""FasterVQA (official FAST-VQA-and-FasterVQA ``vqa.py`` pipeline).

The samplers are checked on hand-made clips whose pixels encode their own coordinates,
against indices worked out by hand from the official code. The Swin-3D backbone with
fragment biases switched off and full (8, 7, 7) windows must equal torchvision's
``swin3d_t`` (the same Video Swin) on the same weights — this checks windows, shifts,
masks, relative positions, patch merging. A state dict written in the official key
layout (``{"state_dict": {fragments_backbone.*, vqa_head.*}}``) must load with every key
consumed. No pretrained weights exist here: the network runs with seeded random weights
at a reduced fragment geometry (2×2 fragments, 8 frames) to stay fast; the architecture
is the real one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fvr_bench import weights
from fvr_bench.errors import ClipNotScorableError, ConfigError, WeightsMissingError
from fvr_bench.metrics.fastervqa import (
    FasterVQA,
    SwinTransformer3D,
    build_fastervqa_net,
    load_fastervqa_state,
    relative_position_index,
    sigmoid_rescale,
    spatial_fragments,
    temporal_indices,
)

SMALL = {"fragments_h": 2, "fragments_w": 2, "clip_len": 8, "t_frag": 2, "aligned": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- temporal


def test_contiguous_sampling_is_vqa_py_sample_frames():
    # SampleFrames(32, 1, 1) test mode: offset int((T - 32 + 1) / 2), indices modulo T
    assert temporal_indices(100, "contiguous").tolist() == list(range(34, 66))
    assert temporal_indices(32, "contiguous").tolist() == list(range(32))  # offset int(0.5) = 0
    assert temporal_indices(24, "contiguous").tolist() == list(range(24)) + list(range(8))
    assert temporal_indices(5, "contiguous", clip_len=8).tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert temporal_indices(100, "contiguous", frame_interval=2).tolist() == list(range(18, 82, 2))


def test_fragment_sampling_is_fragment_sample_frames():
    inds = temporal_indices(100, "fragments", seed=7)
    rnd = np.random.RandomState(7).randint(0, 12 - 4, size=8)  # segments of 100 // 8 = 12 frames
    expected = np.concatenate([12 * i + rnd[i] + np.arange(4) for i in range(8)])
    assert inds.tolist() == expected.tolist()
    assert (np.diff(inds.reshape(8, 4), axis=1) == 1).all()
    # segments too short for a random offset: 3 frames each, 4 taken from each start
    assert temporal_indices(24, "fragments").tolist() == [0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12,
                                                          12, 13, 14, 15, 15, 16, 17, 18, 18, 19, 20, 21, 21, 22, 23, 0]  # fmt: skip
    with pytest.raises(ConfigError):
        temporal_indices(10, "uniform")


# --------------------------------------------------------------------------- spatial


def coordinate_video(t: int, h: int, w: int) -> torch.Tensor:
    """``(3, T, H, W)``: channel 0 = row, 1 = column, 2 = frame index."""
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1).expand(t, h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(t, h, w)
    frames = torch.arange(t, dtype=torch.float32).view(t, 1, 1).expand(t, h, w)
    return torch.stack([rows, cols, frames])


def test_spatial_fragments_geometry_on_a_hand_made_clip():
    video = coordinate_video(16, 300, 260)
    out = spatial_fragments(video, 7, 7, 32, 32, aligned=8, generator=torch.Generator().manual_seed(3))
    assert out.shape == (3, 16, 224, 224)
    g = torch.Generator().manual_seed(3)  # the official draw order: rows, then columns
    rnd_h = torch.randint(300 // 7 - 32, (7, 7, 2), generator=g)
    rnd_w = torch.randint(260 // 7 - 32, (7, 7, 2), generator=g)
    for i in range(7):
        for j in range(7):
            for t in range(16):
                patch = out[:, t, 32 * i : 32 * i + 32, 32 * j : 32 * j + 32]
                top, left = 42 * i + int(rnd_h[i, j, t // 8]), 37 * j + int(rnd_w[i, j, t // 8])
                assert patch[0, 0, 0] == top and patch[1, 0, 0] == left and (patch[2] == t).all()
                assert top + 32 <= 42 * (i + 1) and left + 32 <= 37 * (j + 1)  # inside its grid cell
                assert torch.equal(patch[0], top + torch.arange(32.0).view(32, 1).expand(32, 32))
                assert torch.equal(patch[1], left + torch.arange(32.0).view(1, 32).expand(32, 32))


def test_small_frames_are_upsampled_but_gridded_at_the_original_size():
    """The official quirk: H, W are read before the upsampling."""
    video = torch.randint(0, 256, (3, 8, 112, 112), generator=torch.Generator().manual_seed(0)).float()
    out = spatial_fragments(video, 7, 7, 32, 32, aligned=8, generator=torch.Generator().manual_seed(0))
    up = torch.trunc(torch.nn.functional.interpolate(video / 255.0, scale_factor=2.0, mode="bilinear") * 255.0)
    grid = [0, 16, 32, 48, 64, 80, 80]  # min(112 // 7 * i, 112 - 32); cells of 16 < 32 → no offsets
    for i, hs in enumerate(grid):
        for j, ws in enumerate(grid):
            assert torch.equal(out[:, :, 32 * i : 32 * i + 32, 32 * j : 32 * j + 32], up[:, :, hs : hs + 32, ws : ws + 32])
    assert out.max() <= 255 and torch.equal(out, out.trunc())
    with pytest.raises(ClipNotScorableError, match="smaller than one"):
        spatial_fragments(torch.zeros(3, 8, 20, 64), aligned=8)


# --------------------------------------------------------------------------- network


def test_backbone_without_fragment_bias_equals_torchvision_video_swin():
    from torchvision.models.video import swin3d_t

    torch.manual_seed(0)
    ref = swin3d_t().eval()
    for name, param in ref.named_parameters():
        if "relative_position_bias_table" in name:
            torch.nn.init.normal_(param, std=0.5)
    state = {}
    for key, value in ref.state_dict().items():
        if key.startswith("head."):
            continue
        if key.startswith(("patch_embed.", "norm.")):
            state[key] = value
            continue
        _, stage, *rest = key.split(".")
        if int(stage) % 2 == 0:
            block, *name = rest
            name = ".".join(name).replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
            state[f"layers.{int(stage) // 2}.blocks.{block}.{name}"] = value
        else:
            state[f"layers.{int(stage) // 2}.downsample." + ".".join(rest)] = value
    mine = SwinTransformer3D(frag_biases=(False,) * 4).eval()
    mine.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 8, 64, 96)
    with torch.no_grad():
        expected = ref.norm(ref.features(ref.patch_embed(x)))
        torch.testing.assert_close(mine(x, None).permute(0, 2, 3, 4, 1), expected, rtol=0, atol=1e-5)


def official_layout_state(seed: int = 2) -> dict[str, torch.Tensor]:
    """Key names and shapes of ``DiViDeAddEvaluator(swin_tiny_grpb)``, written from the
    official module definitions (not from this module's state dict); relative position
    indices from this module (they are buffers computed from the window)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    index = relative_position_index((8, 7, 7))
    b = "fragments_backbone"
    state = {f"{b}.patch_embed.proj.weight": r(96, 3, 2, 4, 4), f"{b}.patch_embed.proj.bias": r(96),
             f"{b}.patch_embed.norm.weight": 1 + r(96), f"{b}.patch_embed.norm.bias": r(96)}  # fmt: skip
    table = 15 * 13 * 13
    for i, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24))):
        dim = 96 * 2**i
        for j in range(depth):
            p = f"{b}.layers.{i}.blocks.{j}"
            state.update({f"{p}.norm1.weight": 1 + r(dim), f"{p}.norm1.bias": r(dim), f"{p}.norm2.weight": 1 + r(dim),
                          f"{p}.norm2.bias": r(dim), f"{p}.attn.relative_position_bias_table": r(table, heads),
                          f"{p}.attn.relative_position_index": index.clone(), f"{p}.attn.qkv.weight": r(3 * dim, dim),
                          f"{p}.attn.qkv.bias": r(3 * dim), f"{p}.attn.proj.weight": r(dim, dim), f"{p}.attn.proj.bias": r(dim),
                          f"{p}.mlp.fc1.weight": r(4 * dim, dim), f"{p}.mlp.fc1.bias": r(4 * dim),
                          f"{p}.mlp.fc2.weight": r(dim, 4 * dim), f"{p}.mlp.fc2.bias": r(dim)})  # fmt: skip
            if i < 3:  # frag_biases = [True, True, True, False]
                state[f"{p}.attn.fragment_position_bias_table"] = r(table, heads)
        if i < 3:
            state.update({f"{b}.layers.{i}.downsample.reduction.weight": r(2 * dim, 4 * dim),
                          f"{b}.layers.{i}.downsample.norm.weight": 1 + r(4 * dim), f"{b}.layers.{i}.downsample.norm.bias": r(4 * dim)})  # fmt: skip
    state.update({f"{b}.norm.weight": 1 + r(768), f"{b}.norm.bias": r(768),
                  "vqa_head.fc_hid.weight": r(64, 768, 1, 1, 1), "vqa_head.fc_hid.bias": r(64),
                  "vqa_head.fc_last.weight": r(1, 64, 1, 1, 1), "vqa_head.fc_last.bias": torch.tensor([0.15])})  # fmt: skip
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    state = official_layout_state()
    assert len(state) == 197
    path = tmp_path_factory.mktemp("fastervqa") / "FAST_VQA_3D_1_1.pth"
    torch.save({"state_dict": state}, path)
    return path, state


def test_checkpoint_in_official_layout_loads_every_key(checkpoint):
    path, state = checkpoint
    metric = FasterVQA(weights_path=str(path), **SMALL)
    assert metric.required_weights() == ["fastervqa"] and metric.missing_weights() == []
    scores = metric.clip_scores(torch.rand(1, 8, 3, 64, 64))
    assert scores.shape == (1,) and 0 <= scores.item() <= 1
    net_state = metric.network().state_dict()
    assert set(net_state) == set(state) and all(torch.equal(net_state[k], v) for k, v in state.items())
    assert metric.weights_file() == (path.name, weights.sha256_of(path))


def test_checkpoint_with_wrong_keys_or_index_is_refused():
    state = official_layout_state()
    net = build_fastervqa_net(None)
    assert len(load_fastervqa_state(net, {"state_dict": dict(state)}, "ok")) == 197
    broken = dict(state)
    broken.pop("fragments_backbone.layers.2.blocks.5.attn.fragment_position_bias_table")
    with pytest.raises(ConfigError, match="missing"):
        load_fastervqa_state(net, broken, "test")
    with pytest.raises(ConfigError, match="unexpected"):
        load_fastervqa_state(net, {**state, "resize_backbone.norm.weight": torch.ones(768)}, "test")
    key = "fragments_backbone.layers.1.blocks.1.attn.relative_position_index"
    with pytest.raises(ConfigError, match="relative position index"):
        load_fastervqa_state(net, {**state, key: state[key].flip(0)}, "test")


def test_missing_weights_raise_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "env"))
    monkeypatch.setattr(weights, "_package_dir", lambda package: None)
    metric = FasterVQA()
    assert metric.missing_weights() == metric.required_weights() == ["fastervqa"]
    with pytest.raises(WeightsMissingError, match=r"FAST_VQA_3D_1_1\.pth"):
        metric.update(torch.zeros(1, 8, 3, 64, 64))


# --------------------------------------------------------------------------- metric


def test_clip_scores_shape_range_determinism_and_batching():
    clips = torch.rand(2, 10, 3, 72, 80, generator=torch.Generator().manual_seed(1))
    metric = FasterVQA(pretrained=False, **SMALL)
    scores = metric.clip_scores(clips)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert ((scores > 0) & (scores < 1)).all()
    torch.testing.assert_close(FasterVQA(pretrained=False, **SMALL).clip_scores(clips), scores, rtol=0, atol=0)
    torch.testing.assert_close(metric.clip_scores(clips[1:]), scores[1:], rtol=0, atol=1e-6)  # per-clip sampling seed
    torch.testing.assert_close(sigmoid_rescale(metric.raw_scores(clips)), scores)
    torch.testing.assert_close(sigmoid_rescale(torch.tensor(0.14759505)), torch.tensor(0.5))
    # other sampling seed, other random fragment offsets (the sampler needs no network)
    assert not torch.equal(FasterVQA(pretrained=False, sample_seed=0, **SMALL).sample(clips[0]), metric.sample(clips[0]))
    metric.update(clips)
    # update() runs CPU convolutions on thread-count independent kernels (not oneDNN): float rounding apart
    torch.testing.assert_close(metric.per_clip(), scores.double(), rtol=0, atol=1e-6)
    # the sampled network input: normalised, clip_len frames of the fragment size
    sample = metric.sample(clips[0])
    assert sample.shape == (3, 8, 64, 64)
    assert FasterVQA(pretrained=False, temporal_sampling="fragments", **SMALL).sample(clips[0]).shape == (3, 8, 64, 64)


def test_settings_provenance_and_config_errors():
    metric = FasterVQA(pretrained=False)
    assert metric.level == "clip" and metric.higher_is_better and not metric.needs_reference
    settings = metric.settings()
    assert settings["temporal_sampling"] == "contiguous" and settings["fragments"] == [7, 7]
    assert settings["window_size"] == [4, 7, 7] and settings["pretrained"] is False
    assert metric.provenance().provenance_id != FasterVQA(pretrained=False, temporal_sampling="fragments").provenance().provenance_id
    for bad in ({"temporal_sampling": "all"}, {"rescale": "linear"}, {"clip_len": 30}, {"window_size": "big"},
                {"temporal_sampling": "fragments", "t_frag": 3}, {"aligned": 0}):  # fmt: skip
        with pytest.raises(ConfigError):
            FasterVQA(**bad)
