"""Paper tables: published numbers reproduced exactly; measured rows, scale, provenance, compat."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from fvr_bench.tables.paper import (
    REPORTED_CSV,
    build_table,
    load_spec,
    table_command,
    table_ids,
    to_csv,
    to_latex,
    to_markdown,
)

REPORTED = pd.read_csv(REPORTED_CSV, dtype=str, keep_default_na=False)
TABLES = list(dict.fromkeys(REPORTED["table"]))


def _markdown_rows(text: str) -> list[list[str]]:
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    return [[c.strip().strip("*").strip("_") if c.strip() not in ("",) else "" for c in l.strip("|").split("|")]
            for l in lines]


def test_shared_csv_is_the_project_copy():
    assert len(TABLES) == 17
    assert table_ids() == TABLES


@pytest.mark.parametrize("table_id", TABLES)
def test_reported_table_reproduced_exactly(table_id):
    table = build_table(table_id, output_dir=None)
    spec = table.spec
    rows = REPORTED[REPORTED["table"] == table_id]
    names = {c["reported"]: c["name"] for c in spec["columns"]}
    assert set(names) == set(rows["metric"])  # every reported metric has a column

    parsed = pd.read_csv(io.StringIO(to_csv(table)), dtype=str, keep_default_na=False)
    assert set(parsed["source"]) == {"reported"}
    markdown = _markdown_rows(to_markdown(table))
    header = markdown[0]
    body = markdown[1:]
    for rec in rows.itertuples(index=False):
        csv_row = parsed[(parsed["task"] == rec.task) & (parsed["method"] == rec.method)]
        assert len(csv_row) == 1
        assert csv_row.iloc[0][names[rec.metric]] == rec.value  # the printed string, digit for digit
        col = next(i for i, h in enumerate(header) if h.rsplit(" ", 1)[0] == names[rec.metric])
        arrow = header[col].rsplit(" ", 1)[1]
        assert arrow == ("↑" if rec.higher_is_better == "True" else "↓")
        md_rows = [r for r in body if rec.method in r and (not table.multi_task or r[0] == rec.task)]
        assert len(md_rows) == 1 and md_rows[0][col] == rec.value
    # no value invented: every non-empty cell is a reported value
    assert len(body) == len(rows.groupby(["task", "method"]))
    latex = to_latex(table)
    assert r"\toprule" in latex and r"\bottomrule" in latex


def test_latex_best_bold_second_underlined():
    table = build_table("vividface_t6", output_dir=None)  # two rows: LPIPS ↓, IDS ↑
    rows = REPORTED[REPORTED["table"] == "vividface_t6"].set_index(["method", "metric"])["value"]
    latex = to_latex(table)
    for metric, higher in (("lpips", False), ("ids", True)):
        a, b = (float(rows[(m, metric)]) for m in ("VFHQ-3K", "VFHQ-3K+MLLM-Face90"))
        best, second = ("VFHQ-3K", "VFHQ-3K+MLLM-Face90") if (a > b) == higher else ("VFHQ-3K+MLLM-Face90", "VFHQ-3K")
        assert rf"\textbf{{{rows[(best, metric)]}}}" in latex
        assert rf"\underline{{{rows[(second, metric)]}}}" in latex
    # per-direction within svfr_t2's BFR block: SVFR best everywhere, FVD lower is better
    svfr = to_latex(build_table("svfr_t2", output_dir=None))
    assert r"\textbf{89.316}" in svfr and r"\underline{154.857}" in svfr


def _fake_run(root, condition="vividface_t1", method="mymethod", compat=False, data="vfhq_test", protocol="vividface_t1",
              psnr=27.123456, akd=0.0041234):
    run_dir = root / data / condition / method
    run_dir.mkdir(parents=True)
    identity = {"method": {"name": method}, "data": {"name": data}, "degradation": {"name": "vividface_bfr", "task": "bfr"},
                "protocol": protocol, "compat": compat, "seed": 0}
    (run_dir / "run.json").write_text(json.dumps(identity))
    pd.DataFrame([
        {"metric": "psnr_y", "value": psnr, "std": 1.0, "n_clips": 2, "higher_is_better": True,
         "provenance_id": "psnr_y@abc12345", "note": ""},
        {"metric": "akd_mediapipe", "value": akd, "std": 0.001, "n_clips": 2, "higher_is_better": False,
         "provenance_id": "akd_mediapipe@deadbeef", "note": ""},
        {"metric": "lpips_alex", "value": float("nan"), "std": float("nan"), "n_clips": 0, "higher_is_better": None,
         "provenance_id": "unavailable", "note": "unavailable"},
    ]).to_csv(run_dir / "summary.csv", index=False)
    (run_dir / "provenance.json").write_text(json.dumps({
        "psnr_y@abc12345": {"implementation": "fvr_bench.metrics.fidelity.PSNR", "backend_version": "numpy 2",
                            "weights": None, "weights_sha256": None, "settings": {"crop_border": 0, "color": "y"}},
        "akd_mediapipe@deadbeef": {"implementation": "fvr_bench.metrics.face.AKDMediaPipe", "backend_version": "mediapipe 0.10",
                                   "weights": "face_landmark.tflite", "weights_sha256": "e06a804e0144f99", "settings": {"points": 478}},
    }))
    return run_dir


def test_measured_row_scaled_with_provenance(tmp_path):
    _fake_run(tmp_path)
    _fake_run(tmp_path, condition="vividface_bfr", method="other", protocol=None)  # not the protocol
    _fake_run(tmp_path, method="onsample", data="sample")  # another dataset
    table = build_table("vividface_t1", tmp_path)
    measured = [r for r in table.rows if r.source == "measured"]
    assert [r.method for r in measured] == ["mymethod"]
    row = measured[0]
    assert row.cells["PSNR"] == "27.12"          # psnr -> psnr_y, paper's 2 decimals
    assert row.cells["AKD×10³"] == "4.1234"      # akd_x1000: ×1000 applied, the paper's 4 decimals
    assert row.cells["LPIPS"] == ""              # unavailable -> empty
    markdown = to_markdown(table)
    line = next(l for l in markdown.splitlines() if "| measured | mymethod |" in l)
    assert "27.12" in line and "4.1234" in line and "–" in line
    assert "psnr_y@abc12345" in markdown and "crop_border=0" in markdown
    assert "akd_mediapipe@deadbeef" in markdown and "AKD×10³ (×1000)" in markdown
    assert "compat=off" in markdown
    parsed = pd.read_csv(io.StringIO(to_csv(table)), dtype=str, keep_default_na=False)
    assert parsed[parsed["source"] == "measured"].iloc[0]["PSNR"] == "27.12"
    assert r"\toprule" in to_latex(table) and "psnr\\_y@abc12345" in to_latex(table)
    assert any(r.method == "onsample (sample)" for r in build_table("vividface_t1", tmp_path, any_data=True).rows)


def test_compat_flag_shown(tmp_path):
    _fake_run(tmp_path, condition="bfvr_stc_t1_compat", protocol="bfvr_stc_t1", compat=True)
    table = build_table("bfvr_stc_t1", tmp_path)
    row = next(r for r in table.rows if r.source == "measured")
    assert row.compat is True and row.method == "mymethod [compat]"
    assert row.cells["PSNR"] == ""  # BFVR-STC reports RGB PSNR; the fake run has only psnr_y
    assert "compat=on" in to_markdown(table)


def test_table_command_writes_files(tmp_path, capsys):
    _fake_run(tmp_path)
    table_command(["table=vividface_t1", f"paths.output_dir={tmp_path}", "format=all"])
    out = capsys.readouterr().out
    assert "| measured | mymethod |" in out
    for suffix in ("md", "tex", "csv"):
        assert (tmp_path / "tables" / f"vividface_t1.{suffix}").exists()
    assert load_spec("vividface_t1")["protocol"] == "vividface_t1"


def _reported_best_two(table_id, metric):
    rows = REPORTED[(REPORTED["table"] == table_id) & (REPORTED["metric"] == metric)]
    higher = rows["higher_is_better"].iloc[0] == "True"
    ordered = sorted(rows.itertuples(index=False), key=lambda r: float(r.value), reverse=higher)
    return ordered[0], ordered[1]


def test_rows_of_other_datasets_are_shown_but_never_ranked(tmp_path):
    # a 1-clip sample-set run that beats every VFHQ-test row of the paper on PSNR (↑) and AKD (↓)
    _fake_run(tmp_path, method="onsample", data="sample", psnr=99.0, akd=0.0000001)
    table = build_table("vividface_t1", tmp_path, any_data=True)
    assert [r.method for r in table.rows if r.source == "measured"] == ["onsample (sample)"]
    markdown = to_markdown(table)
    latex = to_latex(table)
    line = next(l for l in markdown.splitlines() if "| measured | onsample (sample) |" in l)
    assert "| 99.00 |" in line and "| 0.0001 |" in line  # shown, plain
    assert "**" not in line and "_" not in line.replace("onsample (sample)", "")
    latex_line = next(l for l in latex.splitlines() if "onsample (sample)" in l)
    assert "& 99.00 &" in latex_line and "& 0.0001 &" in latex_line
    assert r"\textbf" not in latex_line and r"\underline" not in latex_line
    # the papers' own best and second keep their marks
    for metric, column in (("psnr", "PSNR"), ("akd_x1000", "AKD×10³")):
        best, second = _reported_best_two("vividface_t1", metric)
        col = 2 + [c["name"] for c in table.columns].index(column)  # after Source, Method
        md_best = next(l for l in markdown.splitlines() if f"| reported | {best.method} |" in l)
        md_second = next(l for l in markdown.splitlines() if f"| reported | {second.method} |" in l)
        assert md_best.strip("|").split("|")[col].strip() == f"**{best.value}**"
        assert md_second.strip("|").split("|")[col].strip() == f"_{second.value}_"
        tex_best = next(l for l in latex.splitlines() if l.startswith(f"reported & {best.method} &"))
        tex_second = next(l for l in latex.splitlines() if l.startswith(f"reported & {second.method} &"))
        assert tex_best.split(" & ")[col] == rf"\textbf{{{best.value}}}"
        assert tex_second.split(" & ")[col] == rf"\underline{{{second.value}}}"
    # the footnote says why the row has no mark
    assert "among rows on vfhq_test" in markdown
    assert "Rows on other datasets than vfhq_test (sample" in markdown and "not ranked" in markdown
    assert "not ranked" in latex and r"vfhq\_test" in latex
    # a run on the table's own dataset with the same numbers does rank
    _fake_run(tmp_path, method="onvfhq", psnr=99.0, akd=0.0000001)
    table = build_table("vividface_t1", tmp_path, any_data=True)
    markdown = to_markdown(table)
    assert "**99.00**" in next(l for l in markdown.splitlines() if "| measured | onvfhq |" in l)
    assert "**" not in next(l for l in markdown.splitlines() if "| measured | onsample (sample) |" in l)
    assert "not ranked" not in to_markdown(build_table("vividface_t1", tmp_path))  # no other-data row, no note


def test_one_latex_escape_for_the_paper_tables_and_the_leaderboard():
    """tables.render.latex_escape is the only escape. The paper tables' former escape left
    $ { } ~ ^ raw (a caption with "$" or "~" broke the .tex); the leaderboard's left σ, ×, ²
    and – raw (pdflatex stops on them). Both now get the union, one character at a time."""
    from fvr_bench.tables.render import latex_escape

    assert latex_escape("σIDS×10²") == r"$\sigma$IDS$\times10^2$"
    assert latex_escape("E*warp×10³ – 512²") == r"E*warp$\times10^3$ -- 512$^2$"
    assert latex_escape("a_b & 5% #1 $x$ {y} ~z^2 \\") == (
        r"a\_b \& 5\% \#1 \$x\$ \{y\} \textasciitilde{}z\textasciicircum{}2 \textbackslash{}")
    table = build_table("svfr_t2", output_dir=None)
    table.spec["caption"] = "cost in $ ~{k}"
    assert r"\caption{cost in \$ \textasciitilde{}\{k\}}" in to_latex(table)
