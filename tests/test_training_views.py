"""Multi-task training samples (SVFR): combined tasks, task views, landmarks in ClipWindows."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fvr_bench.config import CONF_DIR
from fvr_bench.data.folder import ClipFolderDataset
from fvr_bench.degradations import (
    TASKS,
    BrushStrokeMask,
    Compose,
    Grayscale,
    build_degradation,
    task_parts,
)
from fvr_bench.errors import ConfigError
from fvr_bench.training.data import ClipWindows
from fvr_bench.training.views import TaskViews, multi_hot, task_views_from_config

COMBOS = [["vividface_bfr"], ["svfr_colorization"], ["svfr_inpainting"], ["vividface_bfr", "svfr_colorization"],
          ["svfr_colorization", "svfr_inpainting"]]


def preset(name: str) -> Compose:
    return build_degradation(OmegaConf.load(CONF_DIR / "degradation" / f"{name}.yaml"))


@pytest.fixture(scope="module")
def presets() -> dict[str, Compose]:
    return {name: preset(name) for name in {n for combo in COMBOS for n in combo}}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """uint8 (3, 48, 48, 3): the astronaut photo, panning 1 px per frame."""
    import cv2
    from skimage import data

    image = cv2.resize(data.astronaut(), (51, 51), interpolation=cv2.INTER_AREA)
    return np.stack([image[t : t + 48, t : t + 48] for t in range(3)])


def sample_dataset(data_dir):
    return ClipFolderDataset(name="sample", gt_root=data_dir / "sample" / "gt", manifest=data_dir / "sample" / "manifest.csv")


# --------------------------------------------------------------------------- combined tasks


def test_combined_tasks_are_validated_and_normalised():
    assert task_parts("bfr") == ("bfr",)
    assert task_parts("inpainting+colorization") == ("colorization", "inpainting")
    assert Compose("x", task="inpainting+colorization").task == "colorization+inpainting"
    assert Compose("x", task="deflicker+bfr").task == "bfr+deflicker"
    assert Compose("x", task="colorization").task == "colorization"
    with pytest.raises(ConfigError, match="'deblur'"):
        Compose("x", task="colorization+deblur")
    with pytest.raises(ConfigError, match="more than once"):
        Compose("x", task="inpainting+colorization+inpainting")
    for bad in ("", "bfr+", None, 3):
        with pytest.raises(ConfigError, match="task"):
            Compose("x", task=bad)
    combined = preset("svfr_colorization_inpainting")
    assert combined.task == "colorization+inpainting"
    assert [type(op) for op in combined.ops] == [Grayscale, BrushStrokeMask]
    # the same op parameters as the two single-task presets
    assert combined.ops[0].config() == preset("svfr_colorization").ops[0].config()
    assert combined.ops[1].config() == preset("svfr_inpainting").ops[0].config()


def test_multi_hot_in_task_order():
    assert TASKS == ("bfr", "colorization", "inpainting", "deflicker")
    assert multi_hot("bfr").tolist() == [1, 0, 0, 0]
    assert multi_hot(("colorization", "inpainting")).tolist() == [0, 1, 1, 0]
    assert multi_hot("inpainting+colorization").tolist() == [0, 1, 1, 0]
    assert multi_hot([]).tolist() == [0, 0, 0, 0]
    assert multi_hot("bfr").dtype == np.float32
    with pytest.raises(ConfigError):
        multi_hot(["deblur"])


# --------------------------------------------------------------------------- task views


def test_views_are_deterministic_and_distinct(presets, clip):
    views = TaskViews(presets, COMBOS, [1, 1, 1, 0.5, 1], views=2)
    a, b = views(clip, seed=0, key="c/e0/i1"), TaskViews(presets, COMBOS, [1, 1, 1, 0.5, 1])(clip, 0, "c/e0/i1")
    assert len(a) == 2
    for x, y in zip(a, b):
        assert x.presets == y.presets and x.tasks == y.tasks and x.lq.tobytes() == y.lq.tobytes()
        assert (x.mask is None and y.mask is None) or np.array_equal(x.mask, y.mask)
        assert x.lq.dtype == np.uint8 and x.lq.shape == clip.shape
    float_input = views(clip.astype(np.float32) / 255.0, seed=0, key="c/e0/i1")
    assert all(x.lq.tobytes() == y.lq.tobytes() for x, y in zip(a, float_input))
    chosen = set()
    for index in range(12):
        drawn = views(clip, seed=0, key=f"c/e0/i{index}")
        assert drawn[0].presets != drawn[1].presets  # distinct combinations within a sample
        chosen.add(tuple(v.presets for v in drawn))
        other = views(clip, seed=0, key=f"c/e1/i{index}")
        assert any(x.presets != y.presets or x.lq.tobytes() != y.lq.tobytes() for x, y in zip(drawn, other))
    assert len(chosen) > 3  # the draw depends on the key
    # the same combination in two views draws independent parameters (its own preset keys)
    bfr = TaskViews(presets, [["vividface_bfr"], ["svfr_colorization"]], views=2)
    one = bfr.apply(clip, 0, seed=0, key="k/view0")
    two = bfr.apply(clip, 0, seed=0, key="k/view1")
    assert one.lq.tobytes() != two.lq.tobytes()
    assert one.lq.shape == clip.shape  # a downscaled LQ comes back at the GT size


def test_views_apply_presets_in_order_and_or_masks(presets, clip):
    views = TaskViews(presets, COMBOS, views=1)
    both = views.apply(clip, COMBOS.index(["svfr_colorization", "svfr_inpainting"]), seed=0, key="k")
    assert both.tasks == ("colorization", "inpainting") and both.mask is not None
    assert both.mask.shape == clip.shape[:3] and 0 < both.mask.mean() < 1
    assert (both.lq[..., 0] == both.lq[..., 1]).all() and (both.lq[..., 1] == both.lq[..., 2]).all()  # gray
    assert (both.lq[both.mask] == 255).all()  # masked pixels white
    assert (both.lq[~both.mask] < 255).mean() > 0.5  # not everything white
    bfr_color = views.apply(clip, COMBOS.index(["vividface_bfr", "svfr_colorization"]), seed=0, key="k")
    assert bfr_color.tasks == ("bfr", "colorization") and bfr_color.mask is None
    assert (bfr_color.lq[..., 0] == bfr_color.lq[..., 2]).all()
    # masks of two mask presets combine with OR
    masks = {"m1": Compose("m1", task="inpainting", ops=[BrushStrokeMask(strokes=1, fill=1.0)]),
             "m2": Compose("m2", task="inpainting", ops=[BrushStrokeMask(strokes=1, fill=0.0)])}
    twice = TaskViews(masks, [["m1", "m2"]], views=1).apply(clip, 0, seed=0, key="k")
    first = masks["m1"](clip, seed=0, clip_id="k/0:m1").mask
    second = masks["m2"](clip, seed=0, clip_id="k/1:m2").mask
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(twice.mask, first | second)
    assert twice.tasks == ("inpainting",)


def test_task_views_config(tmp_path):
    node = OmegaConf.create({"views": 2, "combinations": [
        {"presets": ["vividface_bfr"], "weight": 1}, {"presets": ["svfr_colorization"]},
        {"presets": ["svfr_inpainting"], "weight": 1}, {"presets": ["vividface_bfr", "svfr_colorization"], "weight": 0.5},
    ]})
    views = task_views_from_config(node)
    assert views.views == 2 and views.weights == [1.0, 1.0, 1.0, 0.5]
    assert views.combinations[3] == ("vividface_bfr", "svfr_colorization")
    assert views.tasks == [("bfr",), ("colorization",), ("inpainting",), ("bfr", "colorization")]
    summary = json.loads(json.dumps(views.config()))
    assert summary["combinations"][3]["tasks"] == "bfr+colorization"
    with pytest.raises(ConfigError, match=r"no_such_preset.*no_such_preset\.yaml"):
        task_views_from_config({"combinations": [{"presets": ["no_such_preset"]}, {"presets": ["svfr_inpainting"]}]})
    with pytest.raises(ConfigError, match="3 views"):
        task_views_from_config({"views": 3, "combinations": [{"presets": ["svfr_inpainting"]}, {"presets": ["svfr_colorization"]}]})
    with pytest.raises(ConfigError, match="positive weight"):
        task_views_from_config({"combinations": [{"presets": ["svfr_inpainting"]}, {"presets": ["svfr_colorization"], "weight": 0}]})
    with pytest.raises(ConfigError, match="twice"):
        task_views_from_config({"combinations": [["svfr_inpainting"], ["svfr_inpainting"]]})
    with pytest.raises(ConfigError, match="unknown"):
        task_views_from_config({"combinations": [{"preset": ["svfr_inpainting"]}]})


# --------------------------------------------------------------------------- ClipWindows


def test_windows_with_views_have_the_documented_layout(tiny_data_dir):
    views = task_views_from_config({"views": 2, "combinations": [["svfr_colorization", "svfr_inpainting"],
                                                                 ["vividface_bfr"], ["svfr_inpainting"]]})
    windows = ClipWindows(sample_dataset(tiny_data_dir), ["carphone_000"], frames=3, size=32, degradation=None,
                          seed=1, augment=True, samples_per_epoch=4, views=views)
    item = windows[0]
    assert item["gt"].shape == (3, 3, 32, 32)
    assert item["lq"].shape == (2, 3, 3, 32, 32) and item["lq"].dtype == torch.float32
    assert 0 <= item["lq"].min() and item["lq"].max() <= 1
    assert item["mask"].shape == (2, 3, 1, 32, 32) and item["mask"].dtype == torch.float32
    assert item["tasks"].shape == (2, len(TASKS)) and item["tasks"].dtype == torch.float32
    assert "landmarks" not in item
    again = windows[0]
    assert torch.equal(item["lq"], again["lq"]) and torch.equal(item["mask"], again["mask"])
    for index in range(4):
        item = windows[index]
        for lq, mask, tasks in zip(item["lq"], item["mask"], item["tasks"]):
            if tasks[TASKS.index("inpainting")]:
                assert 0 < mask.mean() < 1 and (lq.permute(0, 2, 3, 1)[mask[:, 0] > 0] == 1).all()
            else:
                assert (mask == 0).all()
    batch = torch.utils.data.default_collate([windows[0], windows[1]])
    assert batch["lq"].shape == (2, 2, 3, 3, 32, 32) and batch["tasks"].shape == (2, 2, 4)
    with pytest.raises(ConfigError, match="not both"):
        ClipWindows(sample_dataset(tiny_data_dir), ["carphone_000"], frames=3, size=32,
                    degradation=preset("vividface_bfr"), views=views)
    with pytest.raises(ConfigError, match="landmarks"):
        ClipWindows(sample_dataset(tiny_data_dir), ["carphone_000"], frames=3, size=32, degradation=None,
                    landmarks="mediapipe")


def test_single_degradation_items_are_unchanged(tiny_data_dir):
    degradation = preset("vividface_bfr")
    windows = ClipWindows(sample_dataset(tiny_data_dir), ["carphone_000"], frames=3, size=32,
                          degradation=degradation, seed=3, augment=True, samples_per_epoch=2)
    item = windows[1]
    assert set(item) == {"gt", "lq", "clip_id", "key"} and item["lq"].shape == (3, 3, 32, 32)


@pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="dlib is not installed")
def test_windows_with_dlib_landmarks(tiny_data_dir):
    windows = ClipWindows(sample_dataset(tiny_data_dir), ["carphone_000", "carphone_001"], frames=4, size=128,
                          degradation=None, seed=0, augment=False, landmarks="dlib68")
    found = 0
    for index in (0, len(windows) - 1):
        item = windows[index]
        landmarks, valid = item["landmarks"], item["landmarks_valid"]
        assert landmarks.shape == (4, 68, 2) and landmarks.dtype == torch.float32
        assert valid.shape == (4,) and valid.dtype == torch.bool
        assert (landmarks[~valid] == 0).all()
        assert 0 <= landmarks.min() and landmarks.max() <= 1
        found += int(valid.sum())
        for points in landmarks[valid]:  # a face in the middle of an aligned crop, eyes above the mouth
            centre = points.mean(0)
            assert 0.3 < centre[0] < 0.7 and 0.3 < centre[1] < 0.75
            assert points[36:48, 1].mean() < points[48:68, 1].mean()
            assert points[36:42, 0].mean() < points[42:48, 0].mean()  # dlib's 36–41: the eye on the image's left
    assert found >= 8 - 2  # dlib may miss a frame or two
    # a flipped window: landmarks of the served (flipped) GT frame, cached per (clip, frame, flip)
    flipping = ClipWindows(sample_dataset(tiny_data_dir), ["carphone_000"], frames=4, size=128, degradation=None,
                           seed=0, augment=True, samples_per_epoch=6, landmarks="dlib68")
    for index in range(6):
        item = flipping[index]
        landmarks, valid = item["landmarks"], item["landmarks_valid"]
        assert landmarks.shape == (4, 68, 2) and int(valid.sum()) >= 2
        assert (landmarks[valid][:, 36:42, 0].mean(1) < landmarks[valid][:, 42:48, 0].mean(1)).all()
    assert any(flip for (_, _, flip) in flipping._landmarks)
