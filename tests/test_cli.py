"""The command line as a user types it (subprocesses: exit codes and messages)."""

from __future__ import annotations

import pytest

import subprocess
import sys

import pandas as pd
from conftest import overrides

from fvr_bench.config import compose
from fvr_bench.evaluate import evaluate


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fvr_bench", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_list_groups():
    result = cli("list", "degradations")
    assert result.returncode == 0
    for preset in ("none", "vividface_bfr", "bfvr_stc_bfr", "ip_fvr_heavy", "svfr_inpainting"):
        assert preset in result.stdout
    assert "bicubic" in cli("list", "methods").stdout
    assert cli("list", "nonsense").returncode != 0


def test_unknown_option_fails_clearly(tmp_path):
    result = cli("run", "method=no_such_method", f"paths.output_dir={tmp_path}")
    assert result.returncode != 0
    assert "no_such_method" in result.stderr and "Available options" in result.stderr
    result = cli("frobnicate")
    assert result.returncode != 0 and "unknown command" in result.stderr


def test_missing_dataset_names_the_card(tmp_path):
    result = cli("run", "data=vfhq_test", f"paths.data_dir={tmp_path / 'nowhere'}", f"paths.output_dir={tmp_path}")
    assert result.returncode == 2
    assert "datasets/vfhq_test/README.md" in result.stderr
    assert "Traceback" not in result.stderr


def test_multirun_through_joblib_then_leaderboard(tiny_data_dir, tmp_path):
    """Two cells side by side in two joblib worker processes, then the leaderboard over them."""
    args = overrides(tiny_data_dir, tmp_path, "metrics=fidelity", "degradation=ip_fvr_light")
    result = cli("run", "-m", "method=identity,bicubic", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
                 *args)
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for method in ("identity", "bicubic"):
        run_dir = tmp_path / "outputs" / "sample" / "ip_fvr_light" / method
        assert pd.read_csv(run_dir / "summary.csv")["n_clips"].tolist() == [2, 2, 2, 2]
        assert pd.read_csv(run_dir / "per_clip.csv")["clip_id"].nunique() == 2
    result = cli("leaderboard", f"paths.output_dir={tmp_path / 'outputs'}")
    assert result.returncode == 0, result.stderr
    board = pd.read_csv(tmp_path / "outputs" / "leaderboard.csv")
    assert sorted(board["method"]) == ["bicubic", "identity"]
    assert {"psnr_y", "ssim_rgb"} <= set(board.columns)
    assert "| sample | ip_fvr_light | bicubic |" in result.stdout


def test_data_degrade_exports_the_cached_lq(tiny_data_dir, tmp_path):
    args = overrides(tiny_data_dir, tmp_path, "degradation=svfr_inpainting")
    result = cli("data", "degrade", *[a for a in args if not a.startswith("progress")], f"out={tmp_path / 'export'}")
    assert result.returncode == 0, result.stderr
    exported = sorted((tmp_path / "export" / "lq").rglob("*.png"))
    assert len(exported) == 18
    assert len(sorted((tmp_path / "export" / "mask").rglob("*.png"))) == 18


@pytest.mark.slow
def test_severity_sweep_is_restartable_and_merges(tiny_data_dir, tmp_path):
    args = [*overrides(tiny_data_dir, tmp_path, "metrics=fidelity"), "sweep=blur_severity",
            "degradation.ops.0.sigma=[1.0,1.0],[4.0,4.0]"]
    assert cli("run", "-m", *args).returncode == 0
    runs = sorted((tmp_path / "outputs" / "sample").glob("*/bicubic/per_clip.csv"))
    assert [p.parts[-3] for p in runs] == ["vividface_bfr_blur1.0", "vividface_bfr_blur4.0"]
    before = [p.read_bytes() for p in runs]
    again = cli("run", "-m", *args)  # a restarted sweep: finished cells are skipped, nothing rewritten
    assert again.returncode == 0, again.stderr
    assert [p.read_bytes() for p in runs] == before
    board = cli("leaderboard", f"paths.output_dir={tmp_path / 'outputs'}")
    psnr = pd.read_csv(tmp_path / "outputs" / "leaderboard.csv").set_index("condition")["psnr_y"]
    assert board.returncode == 0 and psnr["vividface_bfr_blur1.0"] > psnr["vividface_bfr_blur4.0"]


@pytest.mark.parametrize(("args", "key"), [(("data=folder",), "data.root"), (("method=precomputed",), "method.root")])
def test_a_required_setting_without_value_is_one_line(tmp_path, args, key):
    result = cli("run", *args, f"paths.output_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"fvr_bench: error: run needs {key}: add {key}=<value> "
                                     f"(the comments in conf/{key.split('.')[0]}/ say what it is)")


def test_output_into_a_closed_pipe_ends_quietly():
    shell = subprocess.run(f"{sys.executable} -m fvr_bench list methods | head -1", shell=True,
                           capture_output=True, text=True, timeout=120)
    assert shell.stdout.startswith("bfvr_stc") and "BrokenPipeError" not in shell.stderr and "Traceback" not in shell.stderr


def test_an_exported_lq_set_is_a_paired_lq_root(tiny_data_dir, tmp_path):
    """``data degrade`` writes LQ at the degraded size (a continuous scale: 192² → e.g.
    101²); ``data.lq_root`` takes it back, and the numbers equal those of the run that
    degraded on the fly."""
    args = [a for a in overrides(tiny_data_dir, tmp_path, "metrics=fidelity") if not a.startswith("progress")]
    assert cli("data", "degrade", *args, f"out={tmp_path / 'export'}").returncode == 0
    sizes = {path.parent.name: __import__("cv2").imread(str(path)).shape for path in (tmp_path / "export" / "lq").rglob("00000.png")}
    assert all(shape[0] != 192 and 192 % shape[0] != 0 for shape in sizes.values()), sizes  # not an integer scale
    # the two runs in this process (the export above went through the command line)
    evaluate(compose("run", args))
    evaluate(compose("run", [*args, "data=folder", f"data.root={tiny_data_dir / 'sample' / 'gt'}",
                             f"data.lq_root={tmp_path / 'export' / 'lq'}"]))
    a = pd.read_csv(tmp_path / "outputs" / "sample" / "vividface_bfr" / "bicubic" / "per_clip.csv")
    b = pd.read_csv(tmp_path / "outputs" / "folder" / "vividface_bfr" / "bicubic" / "per_clip.csv")
    assert a["value"].tolist() == b["value"].tolist()
