import os

import pandas as pd
import pytest

from fvr_bench import results
from fvr_bench.errors import ResultsMismatchError
from fvr_bench.results import ResultStore

IDENTITY = {"method": {"name": "bicubic"}, "data": {"name": "sample"}, "seed": 0, "code_version": "0.1.0"}


def rows(value):
    return [
        {"metric": "psnr_y", "value": value, "higher_is_better": True, "provenance_id": "psnr_y@1", "frames": 9},
        {"metric": "niqe", "value": 2 * value, "higher_is_better": False, "provenance_id": "niqe@2", "frames": 9},
    ]


def test_append_resume_and_summary(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open(IDENTITY, "seed: 0\n")
    store.append_clip("a", rows(30.0), seconds=0.5)
    store.append_clip("b", rows(20.1), seconds=0.5)
    # a new store on the same directory sees the finished clips (what a restarted run does)
    again = ResultStore(tmp_path / "run")
    again.open(IDENTITY, "seed: 0\n")
    assert again.finished_clips() == {"a", "b"}
    with pytest.raises(ValueError, match="already"):
        again.append_clip("a", rows(1.0))
    summary = again.write_summary().set_index("metric")
    assert summary.loc["psnr_y", "value"] == pytest.approx(25.05)
    assert summary.loc["niqe", "n_clips"] == 2
    assert not summary.loc["niqe", "higher_is_better"]
    # floats round-trip exactly through the CSV
    assert again.per_clip().query("clip_id == 'b' and metric == 'psnr_y'")["value"].item() == 20.1


def test_mismatched_config_is_refused(tmp_path):
    store = ResultStore(tmp_path)
    store.open(IDENTITY, "")
    store.append_clip("a", rows(30.0))
    other = dict(IDENTITY, seed=1)
    with pytest.raises(ResultsMismatchError, match="seed"):
        ResultStore(tmp_path).open(other, "")
    # overwrite=true starts afresh
    fresh = ResultStore(tmp_path)
    fresh.open(other, "", overwrite=True)
    assert fresh.finished_clips() == set()


def test_killed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.open(IDENTITY, "")
    store.append_clip("a", rows(30.0))
    before = (tmp_path / "per_clip.csv").read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies between writing the temp file and the rename

    monkeypatch.setattr(results.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.append_clip("b", rows(10.0))
    monkeypatch.undo()
    assert (tmp_path / "per_clip.csv").read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".per_clip")], "temporary file left behind"
    assert ResultStore(tmp_path).finished_clips() == {"a"}


def test_infinite_values_stay_out_of_the_mean(tmp_path):
    store = ResultStore(tmp_path)
    store.open(IDENTITY, "")
    store.append_clip("a", rows(float("inf")))
    store.append_clip("b", rows(40.0))
    summary = store.write_summary().set_index("metric")
    assert summary.loc["psnr_y", "value"] == 40.0
    assert summary.loc["psnr_y", "n_clips"] == 1
    assert pd.read_csv(tmp_path / "summary.csv").shape[0] == 2


def test_run_dir_is_shared_by_the_result_and_curation_stores(tmp_path):
    """One RunDir: run.json bytes, the identity check and its has_results rule."""
    from fvr_bench.curation.run import CurationStore
    from fvr_bench.results import RunDir

    assert isinstance(ResultStore(tmp_path / "a").dir, RunDir) and isinstance(CurationStore(tmp_path / "b").dir, RunDir)
    run = RunDir(tmp_path / "c")
    run.write_identity({"b": 1, "a": [1, 2]})
    assert run.run_json_path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    run.check({"b": 2}, overwrite=False, elsewhere="x", has_results=False)  # nothing to mix: no conflict
    run.check({"b": 2}, overwrite=True, elsewhere="x")
    with pytest.raises(ResultsMismatchError, match=r"\(differs in: a, b\)\. Results are never mixed: pass "
                                                   r"overwrite=true to replace them, or x\.$"):
        run.check({"b": 2}, overwrite=False, elsewhere="x")
