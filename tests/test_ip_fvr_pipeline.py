"""IP-FVR end to end at test size: guidance streams, references, identity LoRA training and use, the CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import overrides
from omegaconf import OmegaConf

from fvr_bench.config import build, compose
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.ip_fvr.restorer import IPFVRRestorer
from fvr_bench.methods.ip_fvr.training import IPFVRTraining
from fvr_bench.training.run import stage_options

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_restorer(tmp_path, *extra: str) -> IPFVRRestorer:
    return build(compose("run", overrides(tmp_path, tmp_path, "method=ip_fvr_tiny", *extra)).method.restorer, "ip_fvr_tiny")


def test_three_guidance_streams_with_a_reference_and_two_without(tmp_path, monkeypatch):
    restorer = tiny_restorer(tmp_path)
    seen = []
    original = IPFVRRestorer.velocity

    def velocity(self, x_t, t, contexts, hint):
        seen.append(len(contexts))
        return original(self, x_t, t, contexts, hint)

    monkeypatch.setattr(IPFVRRestorer, "velocity", velocity)
    lq = torch.rand(1, 6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with_ref = restorer.restore(lq, reference=reference, out_size=(32, 32), clip_ids=["a"])
    assert with_ref.shape == (1, 6, 3, 32, 32) and torch.isfinite(with_ref).all() and set(seen) == {3}
    seen.clear()
    without = restorer.restore(lq, out_size=(32, 32), clip_ids=["a"])
    assert set(seen) == {2} and not torch.equal(with_ref, without)
    notes = [note for _, note in restorer.take_notes()]
    assert any("no reference image" in note for note in notes) and any("Face2Text" in note for note in notes)
    assert torch.equal(without, restorer.restore(lq, out_size=(32, 32), clip_ids=["a"]))  # seeded per clip


def test_streams_one_at_a_time_give_the_batched_result(tmp_path):
    lq = torch.rand(1, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batched = tiny_restorer(tmp_path).restore(lq, reference=reference, out_size=(32, 32), clip_ids=["s"])
    one_by_one = tiny_restorer(tmp_path, "method.restore.batch_streams=false").restore(
        lq, reference=reference, out_size=(32, 32), clip_ids=["s"])
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-5)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_any_length_in_same_length_out(tmp_path, frames):
    out = tiny_restorer(tmp_path, "method.restore.blending=aligned").restore(torch.rand(1, frames, 3, 6, 10),
                                                                              out_size=(24, 40))
    assert out.shape == (1, frames, 3, 24, 40) and torch.isfinite(out).all()


def test_only_blind_restoration():
    with pytest.raises(ConfigError, match="bfr"):
        IPFVRRestorer.restore(None, torch.rand(1, 2, 3, 8, 8), task="colorization")


def test_paper_configuration_lists_every_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "nothing"))
    with pytest.raises(WeightsMissingError) as error:
        tiny = compose("run", overrides(tmp_path, tmp_path, "method=ip_fvr", "method.architecture.svd_dir=/nonexistent"))
        build(tiny.method.restorer, "ip_fvr")
    for name in ("venhancer_v2.pt", "open_clip_pytorch_model.bin", "ip_fvr_image_prompt.safetensors"):
        assert name in str(error.value)


# ---------------------------------------------------------------------- identity LoRA


def training_module(tmp_path, stage: str) -> IPFVRTraining:
    cfg = compose("train", [f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}", "method=ip_fvr_tiny",
                            f"stage={stage}", "identity=someone"])
    node = OmegaConf.merge(OmegaConf.to_container(cfg.method.train.module, resolve=True),
                           OmegaConf.to_container(stage_options(cfg).module, resolve=True))
    return build(node, "ip_fvr_tiny training")


@pytest.mark.parametrize("term", ["rec", "reward"])
def test_a_lora_step_on_each_loss_lowers_it(tmp_path, term):
    module = training_module(tmp_path, "identity")
    trained = [name for name, p in module.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in name for name in trained)
    g = torch.Generator().manual_seed(3)
    batch = {"gt": torch.rand(1, 4, 3, 32, 32, generator=g), "lq": torch.rand(1, 4, 3, 32, 32, generator=g)}
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=5e-3)
    before = module.losses(batch, torch.Generator().manual_seed(0))
    for _ in range(3):
        optimizer.zero_grad()
        module.losses(batch, torch.Generator().manual_seed(0))[term].backward()
        optimizer.step()
    assert module.losses(batch, torch.Generator().manual_seed(0))[term] < before[term]


def test_image_prompt_stage_trains_only_the_decoupled_attention(tmp_path):
    module = training_module(tmp_path, "image_prompt")
    trained = [name for name, p in module.named_parameters() if p.requires_grad]
    assert trained and all("_ip." in name or "image_encoder.projection" in name for name in trained)
    path = module.save_trained(tmp_path)
    restorer = tiny_restorer(tmp_path, f"method.image_prompt={path}")
    assert restorer.provenance()["weights"]["image_prompt"] == str(path)


def test_train_identity_then_run_it_through_the_cli_with_a_reference(tiny_data_dir, tmp_path, capsys):
    from fvr_bench.cli import main
    from fvr_bench.training.run import train

    references = tmp_path / "refs"
    references.mkdir()
    frame = cv2.imread(str(next((tiny_data_dir / "sample" / "gt" / "carphone_000").glob("*.png"))))
    cv2.imwrite(str(references / "carphone.png"), frame)
    paths = overrides(tiny_data_dir, tmp_path)[:3]
    cfg = compose("train", [*paths, "method=ip_fvr_tiny", "stage=identity", "identity=carphone", "trainer=cpu",
                            "trainer.enable_progress_bar=false", "max_steps=1", "frames=3", "train_clips=[carphone_000]"])
    train(cfg)
    lora = tmp_path / "outputs" / "ip_fvr" / "identities" / "carphone"
    assert (lora / "lora.safetensors").is_file() and json.loads((lora / "lora.json").read_text())["rank"] == 16

    data = ["data=folder", f"data.root={tiny_data_dir / 'sample' / 'gt'}", f"data.ref_root={references}", "data.name=refset"]
    extra = ("method=ip_fvr_tiny", "protocol=ip_fvr_t1", "metrics=fidelity", "limit_clips=1", "data.max_frames=3",
             "data.resize=32")
    main(["run", *overrides(tiny_data_dir, tmp_path, *extra, *data, "method.identity=carphone")])
    run_dir = tmp_path / "outputs" / "refset" / "ip_fvr_t1" / "ip_fvr_tiny"
    provenance = json.loads((run_dir / "provenance.json").read_text())["restorer"]
    assert provenance["image_prompt"] and provenance["weights"]["identity_lora"].endswith("carphone")
    rows = (run_dir / "per_clip.csv").read_text()
    assert "no reference image" not in rows and "Face2Text" in rows
    capsys.readouterr()
    main(["table", "table=ip_fvr_t1", "any_data=true", f"paths.output_dir={tmp_path / 'outputs'}"])
    assert any("| measured |" in line and "ip_fvr_tiny (refset)" in line for line in capsys.readouterr().out.splitlines())

    with pytest.raises(ConfigError, match="carphone"):  # an unknown identity lists the ones there are
        tiny_restorer(tmp_path / "outputs", "method.identity=nobody", f"method.identity_dir={lora.parent}")
    assert np.isfinite(float(rows.splitlines()[1].split(",")[2]))


def test_the_reward_encoder_is_differentiable_for_the_arcface_embedder():
    from types import SimpleNamespace

    from fvr_bench.methods.ip_fvr.training import AlignedFrameArcFace, reward_embedder

    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=4), torch.nn.Flatten(), torch.nn.Linear(4 * 28 * 28, 512))
    arcface_like = SimpleNamespace(_backend=lambda: SimpleNamespace(network=lambda device: network))
    encoder = reward_embedder(arcface_like)
    assert isinstance(encoder, AlignedFrameArcFace) and not any(p.requires_grad for p in encoder.parameters())
    frames = torch.rand(3, 3, 40, 40, requires_grad=True)
    embeddings = encoder(frames)
    assert embeddings.shape == (3, 512) and torch.allclose(embeddings.norm(dim=-1), torch.ones(3))
    embeddings.sum().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0
