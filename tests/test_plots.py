"""Figures from a real results tree: two runs on the tiny face set, then every plot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import overrides

from fvr_bench.errors import ConfigError, FvrBenchError
from fvr_bench.config import compose
from fvr_bench.evaluate import evaluate
from fvr_bench.tables.plots import (
    metric_distribution,
    plot_command,
    speed_quality_scatter,
    temporal_profile,
    temporal_profile_plot,
)
from fvr_bench.video import read_frame_folder

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "leaderboard.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tiny_data_dir, tmp_path_factory) -> Path:
    """``outputs/`` with identity and bicubic runs, restored frames saved as PNG."""
    root = tmp_path_factory.mktemp("plots")
    for method in ("identity", "bicubic"):
        evaluate(compose("run", overrides(tiny_data_dir, root, f"method={method}", "metrics=fidelity",
                                          "degradation=ip_fvr_light", "save_restored=png")))
    return root / "outputs"


def check_png(path: Path, min_side: int = 100) -> np.ndarray:
    assert path.exists() and path.read_bytes()[:8] == PNG_MAGIC
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.ndim == 3
    assert min(image.shape[:2]) >= min_side and max(image.shape[:2]) < 5000
    assert image.std() > 1.0  # not a blank canvas
    return image


def check_pdf(path: Path) -> None:
    assert path.exists() and path.read_bytes()[:5] == b"%PDF-" and path.stat().st_size > 1000


def test_speed_quality_scatter(results, tmp_path):
    paths = speed_quality_scatter(results, "psnr_y", tmp_path, params={"bicubic": 0, "identity": 1})
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[0].name == "scatter_sample_ip_fvr_light_psnr_y.png"
    check_png(paths[0], min_side=300)
    check_pdf(paths[1])
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_metric_distribution(results, tmp_path):
    paths = metric_distribution(results, "ssim_y", tmp_path, methods=["bicubic", "identity"])
    check_png(paths[0], min_side=300)
    check_pdf(paths[1])


def test_unknown_metric_names_the_available_ones(results, tmp_path):
    from fvr_bench.errors import ConfigError

    with pytest.raises(ConfigError, match="psnr_y"):
        speed_quality_scatter(results, "lpips_alex", tmp_path)


def test_temporal_profile_is_the_stacked_gt_column(results, tiny_data_dir, tmp_path):
    paths = temporal_profile_plot(results, "carphone_001", tmp_path, column=50)
    names = {p.name for p in paths}
    prefix = "profile_sample_ip_fvr_light_carphone_001_x50"
    assert {f"{prefix}_GT.png", f"{prefix}_bicubic.png", f"{prefix}_identity.png", f"{prefix}.png", f"{prefix}.pdf"} == names
    check_png(tmp_path / f"{prefix}.png", min_side=200)
    check_pdf(tmp_path / f"{prefix}.pdf")

    gt = read_frame_folder(tiny_data_dir / "sample" / "gt" / "carphone_001")
    expected = np.round(gt[:, :, 50, :] * 255).astype(np.uint8).transpose(1, 0, 2)  # (H, T, 3)
    profile = cv2.imread(str(tmp_path / f"{prefix}_GT.png"))[:, :, ::-1]
    assert profile.shape == (192, 9, 3)
    np.testing.assert_array_equal(profile, expected)

    restored = read_frame_folder(results / "sample" / "ip_fvr_light" / "bicubic" / "restored" / "carphone_001")
    bicubic = cv2.imread(str(tmp_path / f"{prefix}_bicubic.png"))[:, :, ::-1]
    np.testing.assert_array_equal(bicubic, np.round(restored[:, :, 50, :] * 255).astype(np.uint8).transpose(1, 0, 2))
    assert not np.array_equal(bicubic, profile)


def test_temporal_profile_function_and_bounds():
    frames = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    profile = temporal_profile(frames, 1)
    assert profile.shape == (3, 2, 3)
    np.testing.assert_array_equal(profile[:, 1], frames[1, :, 1])
    from fvr_bench.errors import ConfigError

    with pytest.raises(ConfigError):
        temporal_profile(frames, 4)


def test_plot_command(results, tmp_path, capsys):
    out = tmp_path / "figs"
    base = [f"paths.output_dir={results}", f"out={out}"]
    scatter = plot_command(["kind=scatter", "metric=psnr_y", *base])
    profile = plot_command(["kind=profile", "data=sample", *base])  # default clip and centre column
    assert all(p.exists() for p in scatter + profile)
    assert any(p.name.endswith("_x96.png") for p in profile)
    assert str(scatter[0]) in capsys.readouterr().out
    with pytest.raises(ConfigError, match="kind"):
        plot_command(["kind=histogram", *base])
    with pytest.raises(FvrBenchError):
        plot_command(["kind=distribution", "metric=nope", *base])


@pytest.mark.skipif(importlib.util.find_spec("nbclient") is None, reason="nbclient is not installed")
def test_notebook_executes(results, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("FVR_BENCH_OUTPUTS", str(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
                     for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "bicubic" in text and "identity" in text
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3
