"""Leaderboard: bootstrap intervals, paired comparison, filters and exports (fake runs)."""

import math

import numpy as np
import pandas as pd
import pytest

from fvr_bench.errors import FvrBenchError
from fvr_bench.results import ResultStore
from fvr_bench.tables.leaderboard import build_leaderboard
from fvr_bench.tables.stats import bootstrap_mean_ci, paired_comparison

PSNR = "psnr_y@aaaa"
NIQE = "niqe@bbbb"


def make_run(root, method, values, data="sample", condition="ip_fvr_light", metric="psnr_y",
             provenance=PSNR, higher=True, protocol=None, extra=None, set_level=None, unavailable=()):
    """A finished run directory ``root/<data>/<condition>/<method>`` with per-clip values.

    ``values``: {clip: value} for ``metric``; ``extra``: more (metric, provenance, higher,
    {clip: value}) tuples; ``set_level``: (metric, value) with NaN per-clip values (FVD);
    ``unavailable``: metric ids reported unavailable."""
    store = ResultStore(root / data / condition / method)
    store.open({"method": {"name": method}, "data": {"name": data}, "degradation": {"name": condition},
                "seed": 0, "protocol": protocol, "compat": False}, "seed: 0\n")
    series = [(metric, provenance, higher, values)] + list(extra or [])
    clips = sorted({clip for *_, vals in series for clip in vals})
    for clip in clips:
        rows = [{"metric": m, "value": vals[clip], "higher_is_better": h, "provenance_id": p, "frames": 3}
                for m, p, h, vals in series if clip in vals]
        if set_level:
            rows.append({"metric": set_level[0], "value": float("nan"), "higher_is_better": False,
                         "provenance_id": f"{set_level[0]}@cccc", "frames": 3})
        store.append_clip(clip, rows)
    extra_rows = []
    if set_level:
        extra_rows.append({"metric": set_level[0], "value": set_level[1], "std": 0.0, "n_clips": len(clips),
                           "higher_is_better": False, "provenance_id": f"{set_level[0]}@cccc"})
    for metric_id in unavailable:
        extra_rows.append({"metric": metric_id, "value": float("nan"), "std": float("nan"), "n_clips": 0,
                           "higher_is_better": True, "provenance_id": "unavailable", "note": "weights missing"})
    store.write_summary(extra_rows)
    return store.run_dir


def clips(values):
    return {f"c{i:02d}": float(v) for i, v in enumerate(values)}


# ----------------------------------------------------------------------------- statistics


def test_bootstrap_matches_direct_numpy_and_contains_mean():
    values = np.random.default_rng(1).normal(30, 3, size=25)
    lo, hi = bootstrap_mean_ci(values, n_boot=500, seed=7)
    rng = np.random.default_rng(7)
    means = values[rng.integers(0, len(values), size=(500, len(values)))].mean(axis=1)
    assert (lo, hi) == tuple(np.percentile(means, [2.5, 97.5]))
    assert lo < values.mean() < hi
    # non-finite values are left out, like summary.csv's mean
    assert bootstrap_mean_ci(np.r_[values, np.inf, np.nan], n_boot=500, seed=7) == (lo, hi)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([np.nan, np.nan]))


def test_interval_shrinks_with_more_clips():
    rng = np.random.default_rng(0)
    widths = []
    for n in (8, 200):
        lo, hi = bootstrap_mean_ci(rng.normal(0, 1, size=n), n_boot=1000, seed=0)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_paired_difference_and_win_rate_by_hand():
    method = {"a": 31.0, "b": 30.0, "c": 25.0, "d": 40.0, "only_method": 99.0}
    baseline = {"a": 30.0, "b": 30.0, "c": 26.0, "d": 38.0, "only_base": 0.0}
    stats = paired_comparison(method, baseline, higher_is_better=True, n_boot=300, seed=3)
    diffs = np.array([1.0, 0.0, -1.0, 2.0])  # clips a, b, c, d
    assert stats["n_paired"] == 4
    assert stats["diff"] == pytest.approx(0.5) and stats["gain"] == pytest.approx(0.5)
    assert stats["win_rate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    rng = np.random.default_rng(3)
    expected = np.percentile(diffs[rng.integers(0, 4, size=(300, 4))].mean(axis=1), [2.5, 97.5])
    assert (stats["diff_ci_low"], stats["diff_ci_high"]) == pytest.approx(tuple(expected))
    # lower is better: the same numbers mean the method is worse
    lower = paired_comparison(method, baseline, higher_is_better=False, n_boot=300, seed=3)
    assert lower["diff"] == pytest.approx(0.5) and lower["gain"] == pytest.approx(-0.5)
    assert (lower["gain_ci_low"], lower["gain_ci_high"]) == pytest.approx((-expected[1], -expected[0]))
    assert lower["win_rate"] == pytest.approx((0 + 0.5 + 1 + 0) / 4)


# ----------------------------------------------------------------------------- leaderboard


def test_default_call_keeps_the_old_files_and_adds_intervals(tmp_path):
    psnr = [30, 32, 28, 31, 29, 33]
    make_run(tmp_path, "bicubic", clips(psnr))
    make_run(tmp_path, "identity", clips([v - 2 for v in psnr]))
    board = build_leaderboard(tmp_path, n_boot=400)
    assert list(board.columns[:5]) == ["data", "degradation", "method", "n_clips", "psnr_y"]
    assert {"psnr_y_ci_low", "psnr_y_ci_high", "condition"} <= set(board.columns)
    row = board.set_index("method").loc["bicubic"]
    assert row["psnr_y"] == pytest.approx(np.mean(psnr))
    assert row["psnr_y_ci_low"] < row["psnr_y"] < row["psnr_y_ci_high"]
    lo, hi = bootstrap_mean_ci(psnr, n_boot=400, seed=0)
    assert (row["psnr_y_ci_low"], row["psnr_y_ci_high"]) == pytest.approx((lo, hi))
    assert pd.read_csv(tmp_path / "leaderboard.csv").shape == board.shape
    long = pd.read_csv(tmp_path / "leaderboard_long.csv")
    assert set(long["method"]) == {"bicubic", "identity"}
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert f"| sample | ip_fvr_light | bicubic | 6 | **30.5000 [{lo:.4f}, {hi:.4f}]** |" in markdown  # both ends
    assert "±" not in markdown and "half-width" not in markdown
    assert not (tmp_path / "leaderboard.tex").exists()


def test_baseline_comparison_only_over_common_clips(tmp_path):
    make_run(tmp_path, "bicubic", {"a": 30.0, "b": 30.0, "c": 26.0, "d": 38.0, "e": 10.0})
    make_run(tmp_path, "ours", {"a": 31.0, "b": 30.0, "c": 25.0, "d": 40.0})
    make_run(tmp_path, "niqe_only", {"a": 5.0}, metric="niqe", provenance=NIQE, higher=False)
    board = build_leaderboard(tmp_path, baseline="bicubic", n_boot=300, seed=3, formats=["csv", "md", "latex"])
    long = pd.read_csv(tmp_path / "leaderboard_long.csv").set_index(["method", "column"])
    ours = long.loc[("ours", "psnr_y")]
    assert ours["n_paired"] == 4
    assert ours["diff"] == pytest.approx(0.5) and ours["gain"] == pytest.approx(0.5)
    assert ours["win_rate"] == pytest.approx(0.625)
    assert math.isnan(long.loc[("bicubic", "psnr_y"), "gain"])  # the baseline is not compared to itself
    assert "no bicubic run" in long.loc[("niqe_only", "niqe"), "note"]
    assert board.set_index("method").loc["ours", "psnr_y_win_rate"] == pytest.approx(0.625)
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "### vs bicubic" in markdown
    assert "| sample | ip_fvr_light | ours | – | +0.5000 [" in markdown and "62% (n=4)" in markdown
    latex = (tmp_path / "leaderboard.tex").read_text()
    assert latex.count("\\toprule") == 2 and "\\bottomrule" in latex
    lo, hi = bootstrap_mean_ci([31.0, 30.0, 25.0, 40.0], n_boot=300, seed=3)
    assert f"sample & ip\\_fvr\\_light & ours & 4 & -- & {{\\boldmath $31.5000$ $[{lo:.4f}, {hi:.4f}]$}}" in latex
    assert "\\pm" not in latex
    assert "psnr\\_y $\\uparrow$" in latex
    assert "62\\%" in latex


def test_different_provenance_is_never_paired_or_merged(tmp_path):
    make_run(tmp_path, "bicubic", clips([30, 31, 32]), provenance="psnr_y@old")
    make_run(tmp_path, "ours", clips([33, 34, 35]), provenance="psnr_y@new")
    board = build_leaderboard(tmp_path, baseline="bicubic", n_boot=100)
    assert {"psnr_y [psnr_y@old]", "psnr_y [psnr_y@new]"} <= set(board.columns)
    assert "psnr_y" not in board.columns
    long = pd.read_csv(tmp_path / "leaderboard_long.csv")
    ours = long[long["method"] == "ours"].iloc[0]
    assert math.isnan(ours["gain"]) and "no bicubic run" in ours["note"]


def test_filters(tmp_path):
    for data in ("sample", "vfhq"):
        for condition, protocol in (("ip_fvr_light", None), ("vividface_t1", "vividface_t1")):
            for method, offset in (("bicubic", 0), ("identity", -1), ("ours", 2)):
                make_run(tmp_path, method, clips([30 + offset, 31 + offset]), data=data, condition=condition,
                         protocol=protocol, extra=[("niqe", NIQE, False, clips([5, 6]))])
    board = build_leaderboard(tmp_path, data="vfhq", condition="vividface_t1", metrics=["niqe"],
                              methods="ours", baseline="bicubic", n_boot=100)
    assert set(board["data"]) == {"vfhq"} and set(board["condition"]) == {"vividface_t1"}
    assert sorted(board["method"]) == ["bicubic", "ours"]  # the baseline is kept
    assert "niqe" in board.columns and "psnr_y" not in board.columns
    # a comma-separated string works like a list; condition also matches run.json's protocol
    board = build_leaderboard(tmp_path, data="sample,vfhq", metrics="[psnr_y]", methods=["identity", "ours"],
                              n_boot=100)
    assert len(board) == 8
    with pytest.raises(FvrBenchError, match="available: sample, vfhq"):
        build_leaderboard(tmp_path, data="ffhq")
    with pytest.raises(FvrBenchError, match="no metric fvd"):
        build_leaderboard(tmp_path, metrics=["fvd"])
    with pytest.raises(FvrBenchError, match="baseline codeformer"):
        build_leaderboard(tmp_path, baseline="codeformer")
    with pytest.raises(FvrBenchError, match="unknown format"):
        build_leaderboard(tmp_path, formats="pdf")


def test_set_level_and_unavailable_metrics(tmp_path):
    make_run(tmp_path, "bicubic", clips([30, 31, 32]), set_level=("fvd", 120.0), unavailable=("musiq",))
    make_run(tmp_path, "ours", clips([31, 33, 32]), set_level=("fvd", 100.0), unavailable=("musiq",))
    board = build_leaderboard(tmp_path, baseline="bicubic", n_boot=100, ci_style="bracket")
    assert not any(column.startswith("musiq") for column in board.columns)
    row = board.set_index("method").loc["ours"]
    assert row["fvd"] == 100.0 and math.isnan(row["fvd_ci_low"]) and math.isnan(row["fvd_gain"])
    long = pd.read_csv(tmp_path / "leaderboard_long.csv")
    assert long.loc[long["column"] == "fvd", "note"].str.contains("no bootstrap interval").all()
    assert (long.loc[long["column"] == "fvd", "metric_level"] == "set").all()
    assert (long.loc[long["column"] == "psnr_y", "metric_level"] == "clip").all()
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "**100.0000** |" in markdown  # no interval, best (lower) in bold
    assert "No interval for fvd" in markdown
    assert "musiq" not in markdown
    assert "| sample | ip_fvr_light | ours | 3 | 120.0000" not in markdown
    assert "32.0000 [" in markdown  # bracket style


# ----------------------------------------------------------------------------- interval display


def test_asymmetric_interval_shows_both_ends(tmp_path):
    # one clip far above the rest: the percentile interval of the mean is skewed upwards
    values = [20.0, 20.5, 21.0, 21.5, 22.0, 40.0]
    make_run(tmp_path, "ours", clips(values))
    build_leaderboard(tmp_path, n_boot=500, seed=1, formats=["csv", "md", "latex"], digits=2)
    lo, hi = bootstrap_mean_ci(values, n_boot=500, seed=1)
    mean = float(np.mean(values))
    up, down = round(hi, 2) - round(mean, 2), round(mean, 2) - round(lo, 2)
    assert abs(up - down) > 0.5  # asymmetric: one half-width would misstate either side
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert (board.loc[0, "psnr_y_ci_low"], board.loc[0, "psnr_y_ci_high"]) == pytest.approx((lo, hi))
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert f"| {mean:.2f} [{lo:.2f}, {hi:.2f}] |" in markdown  # the default: the interval itself
    assert "±" not in markdown and "the two ends of its 95% percentile bootstrap interval" in markdown
    latex = (tmp_path / "leaderboard.tex").read_text()
    assert f"${mean:.2f}$ $[{lo:.2f}, {hi:.2f}]$" in latex and "\\pm" not in latex
    # pm: the two distances to the ends, each from the printed digits, so both ends are exact
    build_leaderboard(tmp_path, n_boot=500, seed=1, formats=["md", "latex"], digits=2, ci_style="pm")
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert f"| {mean:.2f} +{up:.2f}/-{down:.2f} |" in markdown
    assert f"{round(mean, 2) + up:.2f}" == f"{hi:.2f}" and f"{round(mean, 2) - down:.2f}" == f"{lo:.2f}"
    assert "value +a/-b" in markdown and "runs from value - b to value + a" in markdown
    latex = (tmp_path / "leaderboard.tex").read_text()
    assert f"${mean:.2f}^{{+{up:.2f}}}_{{-{down:.2f}}}$" in latex
    with pytest.raises(FvrBenchError, match="ci_style"):
        build_leaderboard(tmp_path, ci_style="halfwidth")


# ----------------------------------------------------------------------------- cells without an interval


def _set_summary_note(run_dir, metric, note):
    summary = pd.read_csv(run_dir / "summary.csv", keep_default_na=False, dtype=str)
    summary.loc[summary["metric"] == metric, "note"] = note
    summary.to_csv(run_dir / "summary.csv", index=False)


def test_only_set_level_metrics_are_called_set_level(tmp_path):
    nan = float("nan")
    ids = ("ids_arcface", "ids@eeee", True)
    # bicubic: no face in any clip, ids all NaN, with the evaluator's reason in summary.csv
    bicubic = make_run(tmp_path, "bicubic", clips([30, 31, 32]), set_level=("fvd", 120.0),
                       extra=[(*ids, clips([nan, nan, nan]))])
    _set_summary_note(bicubic, "ids_arcface", "no face detected in 27 of 27 frames")
    # identity: the same without a summary note; the per-clip notes say why
    identity = make_run(tmp_path, "identity", clips([28, 29, 30]), set_level=("fvd", 150.0),
                        extra=[(*ids, clips([nan, nan, nan]))])
    per_clip = pd.read_csv(identity / "per_clip.csv", dtype={"clip_id": str})
    per_clip["note"] = np.where(per_clip["metric"] == "ids_arcface", "no face in 9 of 9 frames", "")
    per_clip.to_csv(identity / "per_clip.csv", index=False)
    # ours: faces found, musiq computed; bicubic could not compute musiq (weights missing)
    make_run(tmp_path, "ours", clips([31, 33, 32]), set_level=("fvd", 100.0),
             extra=[(*ids, clips([0.5, 0.6, 0.7])), ("musiq", "musiq@ffff", True, clips([50, 51, 52]))])
    build_leaderboard(tmp_path, n_boot=100, formats=["csv", "md", "latex"])
    long = pd.read_csv(tmp_path / "leaderboard_long.csv", keep_default_na=False).set_index(["method", "column"])
    assert long.loc[("bicubic", "fvd"), "metric_level"] == "set"
    assert long.loc[("bicubic", "ids_arcface"), "metric_level"] == "clip"
    assert long.loc[("bicubic", "ids_arcface"), "no_interval"] == "no face detected in 27 of 27 frames"
    assert "set-level" not in long.loc[("bicubic", "ids_arcface"), "note"]
    assert "no face detected in 27 of 27 frames" in long.loc[("bicubic", "ids_arcface"), "note"]
    assert long.loc[("identity", "ids_arcface"), "no_interval"] == "no face in 9 of 9 frames"
    markdown = (tmp_path / "leaderboard.md").read_text()
    footnote = markdown.strip().splitlines()[-1]
    assert "No interval for fvd: set-level metric(s)" in footnote  # fvd alone: ids_arcface is not set-level
    assert "No interval for ids_arcface (bicubic): no face detected in 27 of 27 frames." in footnote
    assert "No interval for ids_arcface (identity): no face in 9 of 9 frames." in footnote
    latex = (tmp_path / "leaderboard.tex").read_text()
    assert "No interval for ids\\_arcface (bicubic): no face detected in 27 of 27 frames." in latex


def test_cells_without_interval_give_their_own_reason(tmp_path):
    nan = float("nan")
    # a per-clip metric with no finite value anywhere and no note: a neutral reason
    make_run(tmp_path, "bicubic", clips([30, 31, 32]), extra=[("ids_arcface", "ids@eeee", True, clips([nan, nan, nan]))],
             unavailable=("musiq",))
    make_run(tmp_path, "ours", clips([31, 33, 32]),
             extra=[("ids_arcface", "ids@eeee", True, clips([0.5, 0.6, 0.7])), ("musiq", "musiq@ffff", True, clips([50, 51, 52]))])
    build_leaderboard(tmp_path, n_boot=100, formats=["csv", "md"])
    markdown = (tmp_path / "leaderboard.md").read_text()
    footnote = markdown.strip().splitlines()[-1]
    assert "set-level" not in footnote
    assert "No interval for ids_arcface (bicubic): no per-clip value in any of its 3 clip(s)." in footnote
    # a metric unavailable in one run (weights missing) and computed in another: the "–" says why
    assert "– in musiq for bicubic: not computed (weights missing)." in footnote
    assert "| sample | ip_fvr_light | bicubic | 3 | – | – |" in markdown
    long = pd.read_csv(tmp_path / "leaderboard_long.csv", keep_default_na=False)
    assert set(long["metric_level"]) == {"clip"}
    assert "musiq" not in set(long.loc[long["method"] == "bicubic", "column"])  # unavailable: still no row


def test_latex_escapes_signs_in_names(tmp_path):
    """Names with σ or × are written in math mode (the one escape of tables.render)."""
    make_run(tmp_path, "σ-net×2", clips([30, 31, 32]))
    build_leaderboard(tmp_path, n_boot=100, seed=0, formats=["latex"])
    assert r"& $\sigma$-net$\times$2 &" in (tmp_path / "leaderboard.tex").read_text()
