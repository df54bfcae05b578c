"""Degradation ops, the paper presets, seeding and the LQ cache.

Small clips (9 × 64² frames of a real photo with a little motion) keep this file fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fvr_bench.degradations import (
    BrightnessFlicker,
    BrushStrokeMask,
    Compose,
    DegradedClip,
    Downsample,
    GaussianBlur,
    GaussianNoise,
    LQCache,
    RandomApply,
    Resize,
    VideoCodec,
    build_degradation,
    clip_hash,
    encode_decode,
)
from fvr_bench.degradations.cache import EntryKey
from fvr_bench.errors import ConfigError, DataError
from fvr_bench.video import as_uint8

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = sorted(p.stem for p in (CONF / "degradation").glob("*.yaml"))
REQUIRED = {
    "none",
    "vividface_bfr",
    "bfvr_stc_bfr",
    "bfvr_stc_flicker_brightness",
    "ip_fvr_light",
    "ip_fvr_heavy",
    "svfr_colorization",
    "svfr_inpainting",
}


def _clip(frames: int = 9, size: int = 64) -> np.ndarray:
    """float32 (T, size, size, 3) in [0, 1]: the astronaut photo, panning 1 px per frame."""
    from skimage import data

    image = cv2.resize(data.astronaut(), (size + frames, size + frames), interpolation=cv2.INTER_AREA)
    clip = np.stack([image[t : t + size, t : t + size] for t in range(frames)])
    return clip.astype(np.float32) / np.float32(255.0)


@pytest.fixture(scope="module")
def gt() -> np.ndarray:
    return _clip()


def _preset(name: str, **overrides) -> Compose:
    cfg = OmegaConf.load(CONF / "degradation" / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return build_degradation(cfg)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


# --------------------------------------------------------------------------- presets


def test_all_required_presets_exist():
    assert REQUIRED <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_instantiates_and_runs(name, gt):
    deg = instantiate(OmegaConf.load(CONF / "degradation" / f"{name}.yaml"))
    assert isinstance(deg, Compose)
    assert deg.name == name
    assert set(deg.task.split("+")) <= {"bfr", "colorization", "inpainting", "deflicker"}
    key = deg.key()
    assert isinstance(key, str) and len(key) == 16

    out = deg(gt, seed=0, clip_id="clip_0001")
    assert isinstance(out, DegradedClip)
    assert out.lq.dtype == np.uint8 and out.lq.ndim == 4 and out.lq.shape[0] == 9 and out.lq.shape[-1] == 3
    json.dumps(out.params)  # JSON-serialisable for logging
    assert out.params["preset"] == name and out.params["key"] == key

    T, H, W = gt.shape[:3]
    if name == "none":
        np.testing.assert_array_equal(out.lq, as_uint8(gt))
    if name.startswith("bfvr_stc"):
        assert out.lq.shape[1:3] == (H, W)  # upsampled back to the input size
    if name.startswith("ip_fvr"):
        assert out.lq.shape[1:3] == (H // 4, W // 4)
    if name == "vividface_bfr":
        r = out.params["ops"][1]["factor"]
        assert 1.0 <= r <= 4.0 and out.lq.shape[1:3] == (int(H // r), int(W // r))
    if name == "svfr_colorization":
        assert deg.task == "colorization"
        assert (out.lq[..., 0] == out.lq[..., 1]).all() and (out.lq[..., 1] == out.lq[..., 2]).all()
    if name == "svfr_inpainting":
        assert deg.task == "inpainting"
        assert out.mask is not None and out.mask.dtype == np.bool_ and out.mask.shape == (T, H, W)
        assert 0 < out.mask.mean() < 1
        assert (out.lq[out.mask] == 255).all()
        assert (out.mask == out.mask[0]).all()  # one mask for the video, as SVFR
    elif name == "svfr_colorization_inpainting":
        assert deg.task == "colorization+inpainting"
        assert out.mask is not None and out.mask.shape == (T, H, W) and 0 < out.mask.mean() < 1
        assert (out.lq[out.mask] == 255).all() and (out.mask == out.mask[0]).all()
        assert (out.lq[..., 0] == out.lq[..., 1]).all() and (out.lq[..., 1] == out.lq[..., 2]).all()
    else:
        assert out.mask is None


def test_hydra_config_group_composes():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=["+degradation=bfvr_stc_bfr", "degradation.per_frame=true"])
    deg = instantiate(cfg.degradation)
    assert isinstance(deg, Compose) and deg.name == "bfvr_stc_bfr" and deg.per_frame
    assert deg.key() != _preset("bfvr_stc_bfr").key()  # per_frame is part of the key


def test_ip_fvr_heavy_second_round(gt):
    deg = _preset("ip_fvr_heavy")
    rounds = [deg(gt[:3], seed=0, clip_id=f"c{i}").params["ops"][-1] for i in range(12)]
    applied = [r["applied"] for r in rounds]
    assert any(applied)  # p = 0.9
    first = next(r for r in rounds if r["applied"])
    assert [op["op"] for op in first["ops"]] == ["GaussianBlur", "GaussianNoise", "VideoCodec"]


# --------------------------------------------------------------------------- seeding


def test_same_seed_and_clip_is_bit_identical(gt):
    deg = _preset("vividface_bfr")
    a = deg(gt, seed=0, clip_id="clip_0001")
    b = _preset("vividface_bfr")(gt, seed=0, clip_id="clip_0001")  # a fresh instance too
    assert a.lq.tobytes() == b.lq.tobytes() and a.params == b.params
    c = deg(gt, seed=0, clip_id="clip_0002")
    d = deg(gt, seed=1, clip_id="clip_0001")
    assert c.params != a.params and d.params != a.params
    assert c.lq.shape != a.lq.shape or c.lq.tobytes() != a.lq.tobytes()


def test_bit_identical_across_processes(gt):
    """Different PYTHONHASHSEED: the clip-id hash must not depend on Python's hash()."""
    deg = _preset("bfvr_stc_bfr")
    here = hashlib.sha256(deg(gt, seed=5, clip_id="vfhq/clip 7").lq.tobytes()).hexdigest()
    script = (
        "import hashlib, sys; sys.path.insert(0, %r)\n"
        "from test_degradations import _clip, _preset\n"
        "out = _preset('bfvr_stc_bfr')(_clip(), seed=5, clip_id='vfhq/clip 7')\n"
        "print(hashlib.sha256(out.lq.tobytes()).hexdigest())\n"
    ) % str(Path(__file__).parent)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    there = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert there.stdout.strip() == here


def test_clip_hash_is_stable():
    assert clip_hash("clip_0001") == clip_hash("clip_0001") != clip_hash("clip_0002")
    # sha256-derived: a fixed value forever (a changed value would invalidate every cache)
    assert clip_hash("") == int("e3b0c44298fc1c149afbf4c8996fb924", 16)


def test_key_is_stable_and_normalised():
    a = Compose("x", ops=[GaussianBlur(sigma=[1, 4])])
    b = Compose("x", ops=[GaussianBlur(sigma=[1.0, 4.0])])
    c = Compose("x", ops=[GaussianBlur(sigma=[1.0, 5.0])])
    d = Compose("y", ops=[GaussianBlur(sigma=[1.0, 4.0])])
    assert a.key() == b.key() != c.key() != d.key()
    assert a.key() != Compose("x", ops=[GaussianBlur(sigma=[1, 4])], per_frame=True).key()


def test_per_frame_draws_every_frame(gt):
    deg = Compose(
        "pf",
        per_frame=True,
        ops=[GaussianBlur(sigma=[0.5, 3.0]), GaussianNoise(sigma=[0, 10]), VideoCodec(crf=[18, 40], fps=25)],
    )
    out = deg(gt, seed=0, clip_id="a")
    blur, noise, codec = out.params["ops"]
    sigmas = [p["sigma"] for p in blur["per_frame"]]
    assert len(sigmas) == 9 and len(set(sigmas)) == 9
    assert len({p["sigma"] for p in noise["per_frame"]}) == 9
    assert len(codec["crf"]) == 9 and len(set(codec["crf"])) > 1
    assert codec["per_frame_mode"] == "clip encode per distinct crf"
    assert out.lq.shape == as_uint8(gt).shape

    # per video: one value each
    video = Compose("pv", ops=[GaussianBlur(sigma=[0.5, 3.0])])(gt, seed=0, clip_id="a")
    assert isinstance(video.params["ops"][0]["sigma"], float)


def test_per_frame_bfvr_stc_resizes_back(gt):
    out = _preset("bfvr_stc_bfr", per_frame=True)(gt, seed=0, clip_id="a")
    assert out.lq.shape == as_uint8(gt).shape
    factors = [p["factor"] for p in out.params["ops"][1]["per_frame"]]
    assert len(set(factors)) == 9


def test_per_frame_sizes_must_meet_again(gt):
    with pytest.raises(ConfigError, match="per_frame"):
        _preset("vividface_bfr", per_frame=True)(gt, seed=0, clip_id="a")
    pinned = _preset("vividface_bfr", per_frame=True, **{"ops.1.per_frame": False})  # pin the downscale
    assert pinned.key() != _preset("vividface_bfr", per_frame=True).key()
    out = pinned(gt, seed=0, clip_id="a")
    assert isinstance(out.params["ops"][1]["factor"], float)
    assert len(out.params["ops"][0]["per_frame"]) == 9


# --------------------------------------------------------------------------- ops


def test_h264_really_compresses(gt):
    frames = as_uint8(gt)
    fine = encode_decode(frames, crf=12, fps=25)
    coarse = encode_decode(frames, crf=40, fps=25)
    assert fine.shape == coarse.shape == frames.shape and fine.dtype == np.uint8
    assert not np.array_equal(fine, frames) and not np.array_equal(coarse, frames)
    assert _psnr(fine, frames) > _psnr(coarse, frames) + 3.0
    assert _psnr(fine, frames) > 30.0


def test_codec_handles_odd_sizes(gt):
    frames = as_uint8(gt[:4, :31, :47])
    out = encode_decode(frames, crf=18, fps=25)
    assert out.shape == frames.shape and _psnr(out, frames) > 28.0


def test_mpeg4_compat_ignores_crf(gt):
    """BFVR-STC's official script: crf passed to mpeg4 has no effect (documented bug)."""
    frames = as_uint8(gt[:4])
    a = encode_decode(frames, codec="mpeg4", crf=18, fps=1)
    b = encode_decode(frames, codec="mpeg4", crf=45, fps=1)
    assert np.array_equal(a, b)
    params = VideoCodec(codec="mpeg4", crf=[18, 24]).run(list(gt[:4]), np.random.SeedSequence(0), _ctx(gt[:4]))[1]
    assert params["crf_ignored"] is True


def _ctx(clip):
    from fvr_bench.degradations.base import Context

    return Context(input_size=clip.shape[1:3], n_frames=len(clip))


def test_noise_same_pattern_on_every_frame():
    flat = np.full((4, 16, 16, 3), 0.5, np.float32)
    same = Compose("n", ops=[GaussianNoise(sigma=8, same_pattern=True)])(flat, seed=0, clip_id="a").lq.astype(int)
    own = Compose("n", ops=[GaussianNoise(sigma=8, same_pattern=False)])(flat, seed=0, clip_id="a").lq.astype(int)
    assert (same != 128).any()
    assert (same == same[0]).all()
    assert not (own == own[0]).all()
    # unit: sigma 8 on the 0–255 scale
    assert 6.0 < own.std() < 10.0


def test_grayscale_weights(gt):
    out = Compose("g", task="colorization", ops=[_preset("svfr_colorization").ops[0]])(gt, seed=0, clip_id="a").lq
    expected = as_uint8(np.repeat(cv2.cvtColor(gt[0], cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2))
    assert np.abs(out[0].astype(int) - expected).max() <= 1


def test_brightness_flicker(gt):
    out = Compose("f", task="deflicker", ops=[BrightnessFlicker(p=0.5, alpha=[0.5, 1.5])])(gt, seed=0, clip_id="a")
    params = out.params["ops"][0]
    assert len(params["alpha"]) == 9 and any(params["flickered"]) and not all(params["flickered"])
    base = as_uint8(gt)
    for t, (flick, alpha) in enumerate(zip(params["flickered"], params["alpha"])):
        if flick:
            expected = cv2.convertScaleAbs(gt[t] * np.float32(255.0), alpha=alpha)
            assert np.array_equal(out.lq[t], expected)
        else:
            assert np.array_equal(out.lq[t], base[t])


def test_random_apply_probability(gt):
    never = Compose("r", ops=[RandomApply(p=0.0, ops=[GaussianBlur(sigma=3)])])(gt, seed=0, clip_id="a")
    always = Compose("r", ops=[RandomApply(p=1.0, ops=[GaussianBlur(sigma=3)])])(gt, seed=0, clip_id="a")
    assert np.array_equal(never.lq, as_uint8(gt)) and never.params["ops"][0]["applied"] is False
    assert not np.array_equal(always.lq, as_uint8(gt)) and always.params["ops"][0]["applied"] is True


def test_resize_and_downsample(gt):
    down = Compose("d", ops=[Downsample(factor=2.5, interpolation="area")])(gt, seed=0, clip_id="a")
    assert down.lq.shape[1:3] == (25, 25)
    both = Compose("d", ops=[Downsample(factor=3), Resize(size=None)])(gt, seed=0, clip_id="a")
    assert both.lq.shape == as_uint8(gt).shape
    fixed = Compose("d", ops=[Resize(size=[20, 30])])(gt, seed=0, clip_id="a")
    assert fixed.lq.shape[1:3] == (20, 30)


def test_brush_mask_per_frame(gt):
    out = Compose("m", task="inpainting", per_frame=True, ops=[BrushStrokeMask()])(gt, seed=0, clip_id="a")
    assert out.mask.shape == gt.shape[:3] and not (out.mask == out.mask[0]).all()
    assert (out.lq[out.mask] == 255).all()


def test_mask_before_resize_is_rejected(gt):
    with pytest.raises(ConfigError, match="mask"):
        Compose("m", task="inpainting", ops=[BrushStrokeMask(), Downsample(factor=2)])(gt, seed=0, clip_id="a")


# --------------------------------------------------------------------------- errors


def test_reversed_range_is_a_config_error():
    cfg = OmegaConf.load(CONF / "degradation" / "vividface_bfr.yaml")
    cfg.ops[0].sigma = [10.0, 0.1]
    with pytest.raises(ConfigError, match=r"GaussianBlur\.sigma.*reversed"):
        build_degradation(cfg)
    with pytest.raises(ConfigError, match="reversed"):
        GaussianBlur(sigma=[10.0, 0.1])


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: GaussianBlur(sigma=[0, 2]), "> 0"),
        (lambda: GaussianBlur(sigma=2, kernel_size=10), "odd"),
        (lambda: Downsample(factor=[0.5, 2]), ">= 1"),
        (lambda: Downsample(interpolation="sinc"), "sinc"),
        (lambda: VideoCodec(crf=[18, 60]), "<= 51"),
        (lambda: VideoCodec(crf=[18.5, 20]), "integers"),
        (lambda: VideoCodec(codec="h265"), "h265"),
        (lambda: GaussianNoise(sigma=[0, 10], sigma_unit="0-1"), "sigma_unit"),
        (lambda: GaussianNoise(sigma="ten"), "number"),
        (lambda: RandomApply(p=1.5, ops=[GaussianBlur(sigma=1)]), "<= 1"),
        (lambda: RandomApply(p=0.5, ops=[]), "empty"),
        (lambda: Compose("x", task="deblur"), "task"),
        (lambda: Compose("x", ops=["blur"]), "degradation op"),
    ],
)
def test_bad_options_are_config_errors(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_bad_input_is_a_data_error(gt):
    deg = _preset("none")
    with pytest.raises(DataError, match="T, H, W, 3"):
        deg(gt[0], seed=0, clip_id="a")
    with pytest.raises(ConfigError, match="seed"):
        deg(gt, seed=-1, clip_id="a")


# --------------------------------------------------------------------------- cache


def test_cache_round_trip_is_bit_exact(tmp_path, gt):
    cache = LQCache(tmp_path)
    deg = _preset("svfr_inpainting")
    out = deg(gt, seed=3, clip_id="vfhq/Clip 01")
    key = EntryKey.of(deg, 3, "vfhq/Clip 01", gt)
    assert cache.load(key) is None
    path = cache.save(key, out)
    assert path == cache.path(key) and path.is_dir()
    back = cache.load(key)
    assert back is not None
    assert back.lq.dtype == np.uint8 and back.lq.tobytes() == out.lq.tobytes()
    assert back.mask.dtype == np.bool_ and np.array_equal(back.mask, out.mask)
    assert back.params == out.params
    # no collisions between ids that sanitise alike, nor between seeds/keys
    assert cache.load(EntryKey.of(deg, 3, "vfhq_Clip_01", gt)) is None
    assert cache.load(EntryKey.of(deg, 4, "vfhq/Clip 01", gt)) is None

    plain = _preset("ip_fvr_light")
    small = plain(gt, seed=0, clip_id="c")
    cache.save(EntryKey.of(plain, 0, "c", gt), small)
    again = cache.load(EntryKey.of(plain, 0, "c", gt))
    assert again.mask is None and again.lq.tobytes() == small.lq.tobytes()


def test_cache_key_covers_the_ground_truth_content_and_the_code(tmp_path, gt, monkeypatch):
    """Same degradation, seed and clip id, but other GT frames (another dataset's clip of
    the same name, another resize, another frame count): never the same entry."""
    from fvr_bench.degradations import cache as cache_module

    cache = LQCache(tmp_path)
    deg = _preset("none")
    base = EntryKey.of(deg, 0, "clip", gt)
    cache.save(base, deg(gt, seed=0, clip_id="clip"))
    other_face = gt[:, ::-1].copy()
    other_size = np.ascontiguousarray(gt[:, :32, :32])
    fewer = gt[:5]
    for frames in (other_face, other_size, fewer, gt.astype(np.float64)):
        key = EntryKey.of(deg, 0, "clip", frames)
        assert key.digest != base.digest and cache.path(key) != cache.path(base)
        assert cache.load(key) is None
    # a change of the degradation code or of a library that makes LQ bytes: another key
    monkeypatch.setattr(cache_module, "ops_code_version", lambda: "0" * 16)
    changed = EntryKey.of(deg, 0, "clip", gt)
    assert changed != base and cache.load(changed) is None
    monkeypatch.undo()
    # the code version is a hash of the degradation modules' source and library versions
    cache_module.ops_code_version.cache_clear()
    assert cache_module.ops_code_version() == base.code and len(base.code) == 16


def test_cache_never_serves_an_entry_written_under_another_key(tmp_path, gt):
    """An entry copied under another key's folder (e.g. by hand) is refused."""
    cache = LQCache(tmp_path)
    deg = _preset("none")
    key_a, key_b = EntryKey.of(deg, 0, "c", gt), EntryKey.of(deg, 0, "c", gt[:, ::-1].copy())
    cache.save(key_a, deg(gt, seed=0, clip_id="c"))
    shutil.copytree(cache.path(key_a), cache.path(key_b))
    assert cache.load(key_b) is None


def test_cache_ignores_partial_entries(tmp_path, gt):
    cache = LQCache(tmp_path)
    deg = _preset("none")
    out = deg(gt, seed=0, clip_id="c")
    key = EntryKey.of(deg, 0, "c", gt)

    def fresh():
        shutil.rmtree(cache.path(key), ignore_errors=True)
        return cache.save(key, out)

    # a killed writer leaves only its temp folder: not an entry
    cache.path(key).parent.mkdir(parents=True, exist_ok=True)
    stray = cache.path(key).parent / f".{key.digest}.tmp-dead"
    (stray / "lq").mkdir(parents=True)
    assert cache.load(key) is None

    entry = fresh()
    (entry / "entry.json").unlink()  # manifest missing (interrupted copy)
    assert cache.load(key) is None

    entry = fresh()
    (entry / "lq" / "00004.png").unlink()  # a frame missing
    assert cache.load(key) is None

    entry = fresh()
    png = entry / "lq" / "00002.png"
    png.write_bytes(png.read_bytes()[:40])  # truncated frame
    assert cache.load(key) is None

    entry = fresh()
    frame = cv2.imread(str(entry / "lq" / "00001.png"))
    frame[0, 0] ^= 1
    cv2.imwrite(str(entry / "lq" / "00001.png"), frame)  # silently altered pixel
    assert cache.load(key) is None

    entry = fresh()  # one frame more, the manifest edited to match: not the GT's frame count
    meta = json.loads((entry / "entry.json").read_text())
    shutil.copy(entry / "lq" / "00000.png", entry / "lq" / f"{len(gt):05d}.png")
    meta["lq_shape"][0] += 1
    (entry / "entry.json").write_text(json.dumps(meta))
    assert cache.load(key) is None

    # save over a broken entry rebuilds it
    cache.save(key, out)
    assert cache.load(key).lq.tobytes() == out.lq.tobytes()
    os.utime(stray, (0, 0))
    assert cache.remove_stale_temp() == 1 and not stray.exists()


def test_get_or_compute_degrades_once_and_recomputes_a_corrupt_entry(tmp_path, gt, monkeypatch):
    cache = LQCache(tmp_path)
    deg = _preset("bfvr_stc_flicker_brightness")
    calls = []
    real_call = Compose.__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(Compose, "__call__", counting)
    first = cache.get_or_compute(deg, 0, "c", gt)
    second = cache.get_or_compute(deg, 0, "c", gt)
    assert len(calls) == 1 and first.lq.tobytes() == second.lq.tobytes()
    png = cache.path(EntryKey.of(deg, 0, "c", gt)) / "lq" / "00003.png"
    png.write_bytes(png.read_bytes()[:50])
    third = cache.get_or_compute(deg, 0, "c", gt)
    assert len(calls) == 2 and third.lq.tobytes() == first.lq.tobytes()
    assert cache.load(EntryKey.of(deg, 0, "c", gt)) is not None
