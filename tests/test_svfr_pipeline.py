"""SVFR end to end at test size: the two passes, no-face clips, training, export → run → table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import overrides
from omegaconf import OmegaConf

from fvr_bench.config import build, compose
from fvr_bench.methods.svfr.restorer import SVFRRestorer
from fvr_bench.methods.svfr.sampling import WindowedSampler
from fvr_bench.methods.svfr.training import SVFRTraining
from fvr_bench.training.run import stage_options

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_restorer(tmp_path, *extra: str) -> SVFRRestorer:
    return build(compose("run", overrides(tmp_path, tmp_path, "method=svfr_tiny", *extra)).method.restorer, "svfr_tiny")


def fixed_points(image: np.ndarray) -> np.ndarray:
    """A stand-in detector: the ArcFace template placed in the middle of the frame."""
    h, w = image.shape[:2]
    return np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * [w, h]


class Spy:
    """Records the conditioning of every sampler call and the frame the ID tokens come from."""

    def __init__(self, monkeypatch, restorer: SVFRRestorer) -> None:
        self.conds, self.outputs, self.frames = [], [], []
        original_sample, original_tokens = WindowedSampler.sample, restorer.identity.tokens

        def sample(sampler, cond, *args, **kwargs):
            out = original_sample(sampler, cond, *args, **kwargs)
            self.conds.append(cond)
            self.outputs.append(out)
            return out

        def tokens(frame):
            self.frames.append(frame.clone())
            return original_tokens(frame)

        monkeypatch.setattr(WindowedSampler, "sample", sample)
        monkeypatch.setattr(restorer.identity, "tokens", tokens)


def test_second_pass_is_conditioned_on_the_first_pass_output(tmp_path, monkeypatch):
    restorer = tiny_restorer(tmp_path)
    restorer.identity.detector = fixed_points
    spy = Spy(monkeypatch, restorer)
    lq = torch.rand(1, 7, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    out = restorer.restore(lq, task="bfr", out_size=(32, 32), clip_ids=["c"])
    assert out.shape == (1, 7, 3, 32, 32) and torch.isfinite(out).all()
    first, second = spy.conds
    assert first.reference is None and first.id_tokens is None and first.lq_latents.shape[1] == 4  # the first window
    assert second.lq_latents.shape[1] == 7
    pass_one_frames = restorer.decode(spy.outputs[0][0])
    reference = pass_one_frames[-1]  # the official choice: pass 1's last frame
    torch.testing.assert_close(spy.frames[0], ((reference + 1) / 2).clamp(0, 1))
    torch.testing.assert_close(second.reference, restorer.encode(reference[None]))
    assert second.id_tokens is not None and second.id_tokens.shape == (1, 49, 32)
    assert restorer.take_notes() == []


@pytest.mark.parametrize("no_face,kept", [("zero_id", True), ("no_reference", False)])
def test_a_clip_without_a_face_runs_and_says_so(tmp_path, monkeypatch, no_face, kept):
    restorer = tiny_restorer(tmp_path, f"method.restore.no_face={no_face}")
    restorer.identity.detector = lambda image: None
    spy = Spy(monkeypatch, restorer)
    out = restorer.restore(torch.rand(1, 3, 3, 16, 16), task="inpainting", mask=torch.ones(1, 3, 1, 16, 16, dtype=torch.bool),
                           clip_ids=["noface"])
    assert out.shape == (1, 3, 3, 16, 16) and torch.isfinite(out).all()
    assert spy.conds[1].id_tokens is None and (spy.conds[1].reference is not None) == kept
    [(clip, note)] = restorer.take_notes()
    assert clip == "noface" and "no face" in note


@pytest.mark.parametrize("frames,task", [(1, "bfr"), (5, "colorization+inpainting")])
def test_any_length_in_same_length_out(tmp_path, frames, task):
    restorer = tiny_restorer(tmp_path, "method.restore.srr=false")
    out = restorer.restore(torch.rand(1, frames, 3, 20, 28), task=task, out_size=(20, 28))
    assert out.shape == (1, frames, 3, 20, 28) and torch.isfinite(out).all()


def test_the_noise_depends_on_the_clip_not_on_the_batch(tmp_path):
    restorer = tiny_restorer(tmp_path, "method.restore.srr=false")
    lq = torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    both = restorer.restore(lq, clip_ids=["a", "b"])
    assert torch.equal(both[1:], restorer.restore(lq[1:], clip_ids=["b"]))


# ---------------------------------------------------------------------- training


def training_module(tmp_path, **changes) -> SVFRTraining:
    cfg = compose("train", [f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}", "method=svfr_tiny", "stage=1"])
    options = stage_options(cfg)
    node = OmegaConf.merge(OmegaConf.to_container(cfg.method.train.module, resolve=True),
                           OmegaConf.to_container(options.module, resolve=True))
    for key, value in changes.items():
        OmegaConf.update(node, key, value, merge=False)
    return build(node, "svfr_tiny training")


def fixed_batch(clips: int = 2, views: int = 2, frames: int = 3, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(7)
    gt = torch.rand(clips, frames, 3, size, size, generator=g)
    lq = (gt[:, None] + 0.1 * torch.randn(clips, views, frames, 3, size, size, generator=g)).clamp(0, 1)
    tasks = torch.zeros(clips, views, 4)
    for view in range(views):
        tasks[:, view, view % 3] = 1
    landmarks = torch.rand(clips, frames, 68, 2, generator=g)
    return {"gt": gt, "lq": lq, "tasks": tasks, "mask": torch.zeros(clips, views, frames, 1, size, size),
            "landmarks": landmarks, "landmarks_valid": torch.ones(clips, frames, dtype=torch.bool)}


@pytest.mark.parametrize("term", ["noise", "ulr", "prior"])
def test_a_training_step_on_each_loss_lowers_it(tmp_path, term):
    module = training_module(tmp_path, reference_dropout=0.0)
    module.restorer.identity.detector = fixed_points
    batch = fixed_batch()
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    before = module.losses(batch, torch.Generator().manual_seed(0))
    assert set(before) >= {"loss", "noise", "ulr", "prior"} and before["faces_found"] == 1
    for _ in range(3):
        optimizer.zero_grad()
        module.losses(batch, torch.Generator().manual_seed(0))[term].backward()
        optimizer.step()
    after = module.losses(batch, torch.Generator().manual_seed(0))
    assert after[term] < before[term]


def test_ablation_switches_remove_their_terms(tmp_path):
    module = training_module(tmp_path, **{"objective.ulr": False, "objective.prior": False})
    batch = fixed_batch(clips=1, views=1)  # without ULR one clip under one task is a valid batch
    del batch["landmarks"]
    parts = module.losses(batch, torch.Generator().manual_seed(0))
    assert "ulr" not in parts and "prior" not in parts and torch.equal(parts["loss"], parts["noise"])


def test_train_export_run_and_table(tiny_data_dir, tmp_path, capsys):
    from fvr_bench.cli import main
    from fvr_bench.tables.paper import build_table
    from fvr_bench.training.checkpoints import load_weights
    from fvr_bench.training.run import train

    paths = overrides(tiny_data_dir, tmp_path)[:3]
    cfg = compose("train", [*paths, "method=svfr_tiny", "stage=1", "trainer=cpu", "trainer.enable_progress_bar=false",
                            "max_steps=1", "frames=3"])
    run_dir = train(cfg)
    export = run_dir / "restorer.safetensors"
    exported = load_weights(export)
    assert exported and all(k.startswith(("unet.", "identity.projection.")) for k in exported)

    extra = ("method=svfr_tiny", "protocol=svfr_t2", "metrics=fidelity", "limit_clips=1", "data.max_frames=5",
             "method.restore.steps=1", "method.restore.first_pass_steps=1")
    from_export = build(compose("run", overrides(tiny_data_dir, tmp_path, *extra, f"method.checkpoint={export}")).method.restorer, "e")
    from_ckpt = build(compose("run", overrides(tiny_data_dir, tmp_path, *extra,
                                               f"method.checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}")).method.restorer, "c")
    for name, value in from_export.unet.state_dict().items():
        assert torch.equal(value, exported[f"unet.{name}"].to(value.dtype))
    lq = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    # equal weights; memory-mapped safetensors vs pickled tensors may take other SIMD paths (≈1e-5)
    torch.testing.assert_close(from_export.restore(lq, clip_ids=["x"]), from_ckpt.restore(lq, clip_ids=["x"]),
                               rtol=0, atol=1e-4)

    main(["run", *overrides(tiny_data_dir, tmp_path, *extra, f"method.checkpoint={export}")])  # the CLI, in-process
    run_dir = tmp_path / "outputs" / "sample" / "svfr_t2_bfr" / "svfr_tiny"
    assert json.loads((run_dir / "provenance.json").read_text())["restorer"]["restore"]["id_crop"] == "svfr_official"
    capsys.readouterr()
    main(["table", "table=svfr_t2", "any_data=true", f"paths.output_dir={tmp_path / 'outputs'}"])
    [line] = [line for line in capsys.readouterr().out.splitlines() if "| measured |" in line]
    assert "svfr_tiny (sample)" in line
    [row] = [r for r in build_table("svfr_t2", tmp_path / "outputs", any_data=True).rows if r.source == "measured"]
    assert row.cells["PSNR"] not in ("", None)


@pytest.mark.gpu
def test_half_precision_on_the_gpu_follows_float32_on_the_cpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    lq = torch.rand(1, 9, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    cpu = tiny_restorer(tmp_path).restore(lq, clip_ids=["g"])
    gpu = tiny_restorer(tmp_path, "method.restorer.dtype=float16", "method.restorer.vae_dtype=float16",
                        "method.restore.window_batch=4").to("cuda")
    out = gpu.restore(lq.cuda(), clip_ids=["g"]).cpu()
    assert out.shape == cpu.shape and torch.isfinite(out).all()
    assert (out - cpu).abs().mean() < 0.02
