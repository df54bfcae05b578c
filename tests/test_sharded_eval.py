"""Sharded evaluation: ``devices=2`` (two processes, gloo on the CPU) leaves the run
directory one process leaves; part files of killed processes resume on any device count;
an error in any process reaches the caller as itself."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import overrides

from fvr_bench.config import compose
from fvr_bench.config import build
from fvr_bench.errors import ConfigError, DataError
from fvr_bench.cli import evaluate_cell
from fvr_bench.results import ResultStore

PSNR_SSIM = ("metrics=fidelity", "~metrics.items.psnr_rgb", "~metrics.items.ssim_rgb")
PSNR_ONLY = ("metrics=fidelity", "~metrics.items.psnr_rgb", "~metrics.items.ssim_y", "~metrics.items.ssim_rgb")
CLIPS = ["carphone_000", "carphone_001"]


def files(run_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if path.is_file())


def metric_rows(value: float) -> list[dict]:
    return [{"metric": "psnr_y", "value": value, "higher_is_better": True, "provenance_id": "psnr_y@1", "frames": 9}]


def leave_part(run_dir: Path, shard: str, clip_id: str, value: float) -> None:
    """What a process of a PSNR_ONLY run leaves when killed after finishing ``clip_id``."""
    metric = build(compose("run", list(PSNR_ONLY)).metrics["items"].psnr_y, "psnr_y")
    rows = [{**row, "provenance_id": metric.provenance().provenance_id} for row in metric_rows(value)]
    ResultStore(run_dir, shard=shard).append_clip(clip_id, rows, seconds=0.5)


def test_two_processes_write_what_one_process_writes(tiny_data_dir, tmp_path):
    """Each process restores and scores one clip; rank 0 merges. PSNR/SSIM only: every
    further network costs its load in three processes. The one-process runs use 1 and 2
    threads, the shard processes whatever Lightning gives them: values must not care
    (see test_thread_independence.py for every offline metric)."""
    before = torch.get_num_threads()
    singles = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            singles.append(evaluate_cell(compose("run", overrides(tiny_data_dir, tmp_path / f"one{threads}", *PSNR_SSIM))))
    finally:
        torch.set_num_threads(before)
    two = evaluate_cell(compose("run", overrides(tiny_data_dir, tmp_path / "two", *PSNR_SSIM, "devices=2")))
    for threads, one in zip((1, 2), singles, strict=True):
        assert one.relative_to(tmp_path / f"one{threads}") == two.relative_to(tmp_path / "two")
        assert files(two) == files(one)  # no part files left behind
        for name in ("per_clip.csv", "summary.csv", "run.json", "provenance.json"):
            assert (two / name).read_bytes() == (one / name).read_bytes(), (threads, name)
    assert pd.read_csv(two / "per_clip.csv")["clip_id"].unique().tolist() == CLIPS
    assert pd.read_csv(two / "summary.csv")["n_clips"].tolist() == [2, 2]
    assert pd.read_csv(two / "timing.csv")["clip_id"].tolist() == CLIPS


@pytest.mark.slow
def test_killed_shards_are_skipped_on_every_rank_and_errors_reach_the_caller(tiny_data_dir, tmp_path):
    """Rank 1 of a killed run finished carphone_000. The new two-process run merges that,
    leaves carphone_000 alone, and fails on carphone_001 (no saved output): the caller gets
    the DataError of the rank that failed, not a process launcher traceback."""
    no_outputs = tmp_path / "no_outputs"
    no_outputs.mkdir()
    cfg = compose("run", overrides(tiny_data_dir, tmp_path, *PSNR_ONLY, "method=precomputed",
                                   f"method.root={no_outputs}", "devices=2"))
    run_dir = Path(cfg.run_dir)
    leave_part(run_dir, "rank1", "carphone_000", 12.5)
    with pytest.raises(DataError, match="carphone_001") as error:
        evaluate_cell(cfg)
    assert "carphone_000" not in str(error.value)
    assert not (run_dir / "parts").exists()
    per_clip = pd.read_csv(run_dir / "per_clip.csv")
    assert per_clip["clip_id"].tolist() == ["carphone_000"] and per_clip["value"].tolist() == [12.5]


def test_one_process_resumes_what_killed_shards_left(tiny_data_dir, tmp_path):
    cfg = compose("run", overrides(tiny_data_dir, tmp_path, *PSNR_ONLY))
    run_dir = Path(cfg.run_dir)
    leave_part(run_dir, "rank3", "carphone_001", 12.5)  # from a run with more processes than now
    evaluate_cell(cfg)
    per_clip = pd.read_csv(run_dir / "per_clip.csv")
    assert per_clip["clip_id"].tolist() == ["carphone_001", "carphone_000"]  # resumed rows first, as always
    assert per_clip["value"].iloc[0] == 12.5 and 15 < per_clip["value"].iloc[1] < 45
    assert pd.read_csv(run_dir / "summary.csv")["n_clips"].tolist() == [2]
    assert sorted(pd.read_csv(run_dir / "timing.csv")["clip_id"]) == sorted(CLIPS)
    assert not (run_dir / "parts").exists()


def test_merge_orders_clips_and_survives_being_killed_half_way(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.open({"seed": 0}, "")
    store.append_clip("b", metric_rows(2.0), seconds=0.1)
    for shard, clip_id, value in (("rank0", "e", 5.0), ("rank0", "c", 3.0), ("rank1", "d", 4.0)):
        ResultStore(tmp_path, shard=shard).append_clip(clip_id, metric_rows(value), seconds=0.1)
    assert ResultStore(tmp_path).finished_clips() == {"b", "c", "d", "e"}
    assert ResultStore(tmp_path, shard="rank2").finished_clips() == {"b", "c", "d", "e"}

    unlink = Path.unlink

    def killed_before_removing_parts(path, *args, **kwargs):
        if path.parent.name == "parts":
            raise KeyboardInterrupt
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", killed_before_removing_parts)
    with pytest.raises(KeyboardInterrupt):
        ResultStore(tmp_path).merge_shards(["a", "b", "c", "d", "e"])
    monkeypatch.undo()
    assert ResultStore(tmp_path).merge_shards(["a", "b", "c", "d", "e"]) == []  # finishes, adds nothing twice
    per_clip = pd.read_csv(tmp_path / "per_clip.csv")
    assert per_clip["clip_id"].tolist() == ["b", "c", "d", "e"]
    assert per_clip["value"].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert pd.read_csv(tmp_path / "timing.csv")["clip_id"].tolist() == ["b", "c", "d", "e"]
    assert not (tmp_path / "parts").exists()
    with pytest.raises(ValueError, match="main store"):
        ResultStore(tmp_path, shard="rank0").write_summary()


@pytest.mark.parametrize(
    "extra, message",
    [
        (("devices=0",), "devices=0"),
        (("devices=[0,0]",), "distinct"),
        (("devices=[1]",), "device=cuda:1"),
        (("devices=2", "device=cuda:1"), "device=cuda:1"),
        (("devices=[0,1]", "device=cpu"), "names GPUs"),
        (("devices=2", "strategy=dp"), "strategy=dp"),
        (("devices=2", "strategy=ddp"), "torchrun"),
    ],
)
def test_bad_device_settings_are_named(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        evaluate_cell(compose("run", overrides(tmp_path, tmp_path, "device=cpu", *extra)))
