"""VividFace at tiny size: mask alignment, the loss switch, one training step per stage,
checkpoints (full DiT and LoRA), restoration of odd lengths and sizes, the text-embedding
cache, windows without seams, the Wan-folder loading path, pre-extraction and the
face parsers. Random weights, CPU, one thread."""

from __future__ import annotations

import copy
import functools
import json

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from conftest import overrides
from omegaconf import OmegaConf

from fvr_bench import weights
from fvr_bench.config import CONF_DIR, compose
from fvr_bench.config import build
from fvr_bench.errors import ConfigError, WeightsMissingError
from fvr_bench.methods.vividface import restorer as restorer_module
from fvr_bench.methods.vividface.backbone import (
    EmptyPromptEmbedding,
    cast_transformer,
    empty_prompt_tokens,
    encode_empty_prompt,
    tiny_text_encoder,
)
from fvr_bench.methods.vividface.bisenet import BiSeNet, build_bisenet
from fvr_bench.methods.vividface.losses import MaskSwitch, face_focused_mse
from fvr_bench.methods.vividface.masks import (
    BiSeNetParser,
    MediaPipeHullParser,
    align_mask_to_latents,
)
from fvr_bench.methods.vividface.restorer import VividFaceRestorer, build_restorer, load_restorer
from fvr_bench.methods.vividface.training import VividFaceTraining
from fvr_bench.methods.vividface.windows import (
    pad_to_vae_length,
    restore_in_windows,
    window_spans,
)
from fvr_bench.training.checkpoints import load_weights
from fvr_bench.training.export import restorer_state, write_export
from fvr_bench.training.run import build_module, stage_options

UNUSED = ["paths.cache_dir=/unused", "paths.output_dir=/unused"]


@functools.cache
def _restorer_node() -> dict:
    """conf/method/vividface_tiny.yaml's ``restorer`` node as composed for ``run`` (composed once: ~0.5 s each)."""
    node = OmegaConf.to_container(compose("run", [*UNUSED, "method=vividface_tiny"]).method.restorer, resolve=True)
    node.pop("_target_")
    node.pop("checkpoint")  # the tests pass their own
    return node


@functools.cache
def _module_node(stage: str) -> dict:
    """The tiny config's training module of ``stage``, merged as the train command merges it."""
    cfg = compose("train", [*UNUSED, "method=vividface_tiny", f"stage={stage}"])
    options = stage_options(cfg)
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.to_container(cfg.method.train.module, resolve=True),
                                                  OmegaConf.to_container(options.module, resolve=True)))


def _changed(node: dict, tmp_path, backbone_key: str | None, changes: dict) -> dict:
    node = copy.deepcopy(node)
    backbone = node["restorer"]["backbone"] if backbone_key == "restorer" else node["backbone"]
    backbone["text_embedding_cache"] = str(tmp_path / "text.pt")
    cfg = OmegaConf.create(node)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True, merge=False)
    return OmegaConf.to_container(cfg)


def restorer_settings(tmp_path, **changes) -> dict:
    """The tiny ``run`` restorer's arguments as plain values (dotted keys change them), the text cache under tmp_path."""
    return _changed(_restorer_node(), tmp_path, None, changes)


def tiny_training(tmp_path, stage: str, **changes) -> VividFaceTraining:
    """The tiny config's training module of ``stage`` as the train command builds it (dotted keys change it)."""
    return build(OmegaConf.create(_changed(_module_node(stage), tmp_path, "restorer", changes)), f"stage {stage}")


def tiny_restorer(tmp_path, **changes) -> VividFaceRestorer:
    return load_restorer(**restorer_settings(tmp_path, **changes))


TINY = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "vividface_tiny.yaml").backbone)
TINY_TRANSFORMER, TINY_VAE, TINY_UMT5 = TINY["transformer"], TINY["vae"], TINY["text_encoder"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def face_batch(carphone, frames: int = 9, size: int = 32, batch: int = 2) -> dict:
    """Real face windows (carphone's face square) as GT, a 2× smaller blurred copy as LQ."""
    clips = []
    for b in range(batch):
        window = carphone[b * 3: b * 3 + frames, 10:130, 40:160]
        clips.append(np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in window]))
    gt = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float().contiguous()
    lq = torch.nn.functional.avg_pool2d(gt.flatten(0, 1), 2).reshape(batch, frames, 3, size // 2, size // 2)
    return {"gt": gt, "lq": lq, "clip_id": ["carphone"] * batch, "key": [f"carphone_{b}" for b in range(batch)]}


# --------------------------------------------------------------------------- masks and losses


def test_latent_mask_alignment_on_hand_made_masks():
    mask = torch.zeros(1, 9, 1, 16, 16, dtype=torch.bool)
    mask[0, 0, 0, 0, 0] = True    # frame 0, top-left pixel of block (0, 0)     → latent frame 0, (0, 0)
    mask[0, 0, 0, 3, 3] = True    # not a block's top-left pixel: nearest sampling drops it
    mask[0, 3, 0, 8, 0] = True    # frame 3 (group 1-4), block (1, 0)            → latent frame 1, (1, 0)
    mask[0, 8, 0, 8, 8] = True    # frame 8 (group 5-8), block (1, 1)            → latent frame 2, (1, 1)
    mask[0, 5, 0, 0, 8] = True    # frame 5 (group 5-8), block (0, 1)            → latent frame 2, (0, 1)
    latent = align_mask_to_latents(mask)
    expected = torch.zeros(3, 2, 2)
    expected[0, 0, 0] = expected[1, 1, 0] = expected[2, 1, 1] = expected[2, 0, 1] = 1
    assert latent.shape == (1, 16, 3, 2, 2)
    for channel in range(16):
        assert torch.equal(latent[0, channel], expected)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        align_mask_to_latents(torch.zeros(1, 8, 1, 16, 16))


def test_mask_switch_statistics_and_the_two_terms():
    draws = 4000
    switch = MaskSwitch(0.5, seed=3)
    fraction = sum(switch.draw() for _ in range(draws)) / draws
    assert abs(fraction - 0.5) < 4 * (0.25 / draws) ** 0.5
    assert not any(MaskSwitch(0.0, seed=1).draw() for _ in range(500))
    assert all(MaskSwitch(1.0, seed=1).draw() for _ in range(500))
    first, second = MaskSwitch(0.5, seed=7), MaskSwitch(0.5, seed=7)
    assert [first.draw() for _ in range(64)] == [second.draw() for _ in range(64)]
    with pytest.raises(ConfigError, match="mask_probability"):
        MaskSwitch(1.5)

    pred, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert face_focused_mse(pred, target, mask, use_mask=True).item() == pytest.approx((1 + 16) / 4)
    assert face_focused_mse(pred, target, mask, use_mask=False).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


# --------------------------------------------------------------------------- training


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("stage", ["1", "2"])
def test_one_step_of_each_stage_lowers_its_loss(stage, tmp_path, carphone):
    frames = 9 if stage == "1" else 5
    # stage 2 goes through a random VAE decoder and a random DISTS on 32² frames, a loss
    # surface that is only smooth over tiny steps: its step is smaller
    module = tiny_training(tmp_path, stage, lr=1e-3 if stage == "1" else 1e-5, **{"objective.mask_probability": 1.0},
                           gradient_checkpointing=stage == "1")
    assert not isinstance(module.restorer, L.LightningModule)
    batch = face_batch(carphone, frames=frames)
    module.pre_extract([batch], tmp_path / "latents")  # the three loss evaluations below read it
    inputs = module.training_inputs(batch)
    face_fraction = inputs["mask"].float().mean().item()
    assert 0.05 < face_fraction < 0.95, "MediaPipe finds carphone's face: the mask is neither empty nor full"
    if stage == "2":
        assert inputs["mask"].shape == (2, frames, 1, 32, 32)
        assert module.objective.dists(torch.device("cpu")) is not None and "dists" not in "".join(module.state_dict())
    with torch.no_grad():
        before = module.compute_loss(batch, use_mask=True)[0].item()
    optimizer = module.configure_optimizers()
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == \
        {id(p) for p in module.restorer.transformer.parameters()}
    loss = module.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is None for p in module.restorer.vae.parameters()), "the VAE stays frozen"
    optimizer.step()
    with torch.no_grad():
        after = module.compute_loss(batch, use_mask=True)[0].item()
    assert after < before


def _fit_one_step(module, batch, tmp_path) -> L.Trainer:
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    return trainer


@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode", "ignore:`isinstance\\(treespec, LeafSpec\\)`")
@pytest.mark.parametrize("lora_rank", [None, 2])
def test_checkpoint_round_trip_full_and_lora(lora_rank, tmp_path, carphone):
    module = tiny_training(tmp_path, "1", **{"restorer.lora.rank": lora_rank, "objective.mask_probability": 0.0})
    trainer = _fit_one_step(module, face_batch(carphone, batch=1), tmp_path)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)

    saved = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    dit = [key for key in saved if key.startswith("restorer.transformer.")]
    vae = {key for key in saved if key.startswith("restorer.vae.")}
    assert dit and len(dit) + len(vae) == len(saved)
    assert vae == {f"restorer.vae.{k}" for k in module.restorer.vae.state_dict()}, \
        "a constructor-built VAE is not in the Wan folder: it is saved"
    assert all(".lora_" in key for key in dit) == (lora_rank is not None)
    assert set(saved) == set(module.saved_weight_names())

    settings = restorer_settings(tmp_path, **{"lora.rank": lora_rank})
    restorer = load_restorer(**settings, checkpoint=str(path))
    assert not restorer.training and not any(p.requires_grad for p in restorer.parameters())
    trained = module.state_dict()
    for key, value in saved.items():
        assert torch.equal(restorer.state_dict()[key.removeprefix("restorer.")], value)
        assert torch.equal(trained[key], value)
    if lora_rank:
        lora_b = [v for k, v in saved.items() if ".lora_B." in k]
        assert any(v.abs().sum() > 0 for v in lora_b), "one step moved the zero-initialised LoRA B matrices"

    lq = torch.rand(1, 5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = module.restorer.for_inference("float32", "float32").restore(lq, out_size=(32, 32))
    assert torch.allclose(restorer.restore(lq, out_size=(32, 32)), expected, atol=1e-5)

    other = restorer_settings(tmp_path, **{"lora.rank": None if lora_rank else 2})
    with pytest.raises(ConfigError, match="lora.rank"):
        load_restorer(**other, checkpoint=str(path))


@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode", "ignore:`isinstance\\(treespec, LeafSpec\\)`",
                            "ignore:You are trying to `self.log\\(\\)`")
def test_vae_stage_trains_the_vae_and_stage_one_carries_it_to_run(tmp_path, carphone):
    batch = face_batch(carphone, frames=5, batch=1)
    vae_stage = tiny_training(tmp_path, "vae", lr=1e-3)
    optimizer = vae_stage.configure_optimizers()
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == \
        {id(p) for p in vae_stage.restorer.vae.parameters()}
    initial_vae = copy.deepcopy(vae_stage.restorer.vae.state_dict())

    def reconstruction_loss() -> float:
        torch.manual_seed(0)  # the same posterior sample before and after the step
        with torch.no_grad():
            return vae_stage.compute_loss(batch, use_mask=False)[0].item()

    before = reconstruction_loss()
    trainer = _fit_one_step(vae_stage, batch, tmp_path)
    assert reconstruction_loss() < before
    assert all(p.grad is None for p in vae_stage.restorer.transformer.parameters()), "stage vae leaves the DiT alone"
    vae_path = tmp_path / "vae.ckpt"
    trainer.save_checkpoint(vae_path)
    vae_weights = load_weights(vae_path)
    assert set(vae_weights) == {f"restorer.vae.{k}" for k in initial_vae}, "a stage-vae checkpoint holds the VAE only"
    trained_vae = {k: v.clone() for k, v in vae_stage.restorer.vae.state_dict().items()}
    assert not all(torch.equal(trained_vae[k], initial_vae[k]) for k in initial_vae)
    settings = restorer_settings(tmp_path)
    with pytest.raises(ConfigError, match="stage-vae checkpoint"):
        load_restorer(**settings, checkpoint=str(vae_path))
    with pytest.raises(ConfigError, match="trains nothing|pre_extract"):
        vae_stage.pre_extract([batch], tmp_path / "latents")

    first = tiny_training(tmp_path, "1", **{"objective.mask_probability": 0.0})
    first.init_from_previous_stage(vae_weights, "vae")
    assert all(torch.equal(first.restorer.vae.state_dict()[k], v) for k, v in trained_vae.items())
    assert not any(p.requires_grad for p in first.restorer.vae.parameters()), "stage 1 keeps the VAE frozen"
    trainer = _fit_one_step(first, face_batch(carphone, frames=5, batch=1), tmp_path)
    stage1_path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(stage1_path)
    saved = load_weights(stage1_path)
    assert all(torch.equal(saved[f"restorer.vae.{k}"], v) for k, v in trained_vae.items()), \
        "stage 1's checkpoint carries the trained VAE"
    restorer = load_restorer(**settings, checkpoint=str(stage1_path))
    assert all(torch.equal(restorer.vae.state_dict()[k], v) for k, v in trained_vae.items())
    assert torch.equal(restorer.transformer.patch_embedding.weight, first.restorer.transformer.patch_embedding.weight)

    wan_vae = tiny_training(tmp_path, "vae").restorer
    wan_vae.vae_from_wan = True  # as if backbone.vae were null (the Wan folder's VAE)
    with pytest.raises(ConfigError, match="pretrained Wan VAE"):
        VividFaceTraining(wan_vae, vae_stage.objective, lr=1e-3, trained=["vae"], stage="vae")
    with pytest.raises(ConfigError, match="no VAE weights"):
        first.init_from_previous_stage({k: v for k, v in saved.items() if k.startswith("restorer.transformer.")}, "vae")


def test_stage_two_starts_from_stage_one_weights(tmp_path):
    first = tiny_training(tmp_path, "1")
    with torch.no_grad():
        for parameter in first.restorer.transformer.parameters():
            parameter.add_(0.01)
    state = {k: v for k, v in first.state_dict().items() if k in set(first.saved_weight_names())}
    second = tiny_training(tmp_path, "2", **{"restorer.lora.rank": 2})  # full-DiT stage 1 → LoRA stage 2: base layers
    second.init_from_previous_stage(state, "1")
    base = second.restorer.transformer.blocks[0].attn1.to_q.base_layer.weight
    assert torch.equal(base, first.restorer.transformer.blocks[0].attn1.to_q.weight)
    with pytest.raises(ConfigError, match="does not have"):
        second.init_from_previous_stage({"restorer.transformer.nonexistent": torch.zeros(1)}, "1")
    with pytest.raises(ConfigError, match="no DiT weights"):
        second.init_from_previous_stage({k: v for k, v in state.items() if k.startswith("restorer.vae.")}, "1")
    # the former one-module layout (transformer.* / vae.*) is read too
    second.init_from_previous_stage({k.removeprefix("restorer."): v for k, v in state.items()}, "1")


def test_pre_extraction_is_resumable_and_feeds_training(tmp_path, carphone, monkeypatch):
    module = tiny_training(tmp_path, "1")
    batches = [face_batch(carphone)]
    assert module.pre_extract(batches, tmp_path / "latents") == 2
    files = sorted((tmp_path / "latents" / "stage1").glob("*.pt"))
    assert len(files) == 2 and (tmp_path / "latents" / "stage1" / "meta.json").is_file()
    assert module.pre_extract(batches, tmp_path / "latents") == 0, "keys already on disk are skipped"
    fresh = module.extract(batches[0]["gt"], batches[0]["lq"])

    monkeypatch.setattr(module, "extract", lambda *a: pytest.fail("a cached key was extracted again"))
    cached = module.training_inputs(batches[0])
    assert torch.allclose(cached["lq_latent"], fresh["lq_latent"], atol=2e-3)
    assert torch.allclose(cached["gt_latent"], fresh["gt_latent"], atol=2e-3)
    assert torch.equal(cached["mask"], fresh["mask"])

    with pytest.raises(ConfigError, match="other settings"):
        _ = tiny_training(tmp_path, "1", **{"face_parser.face_classes": [1]},
                          latent_cache_dir=str(tmp_path / "latents")).latent_cache
    # same architecture and seed, other weights (a VAE trained further in stage vae): refused too
    other_vae = tiny_training(tmp_path, "1", latent_cache_dir=str(tmp_path / "latents"))
    with torch.no_grad():
        next(other_vae.restorer.vae.parameters()).add_(1e-3)
    with pytest.raises(ConfigError, match="vae_weights_sha1"):
        _ = other_vae.latent_cache


# --------------------------------------------------------------------------- exports and run


@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")
def test_export_reloads_into_bf16_on_meta_networks(tmp_path, monkeypatch):
    module = tiny_training(tmp_path, "1")
    with torch.no_grad():
        for parameter in module.restorer.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    checkpoint_state = {k: v for k, v in module.state_dict().items() if k in set(module.saved_weight_names())}
    path = write_export(restorer_state(checkpoint_state), module.restorer.export_config(), tmp_path / "export")
    assert json.loads((tmp_path / "export" / "restorer.json").read_text())["backbone"]["vae"] == TINY_VAE

    # every network of the export is built on the meta device: no random (float32) initialisation
    monkeypatch.setattr(restorer_module, "build_transformer", lambda *a, **k: pytest.fail("DiT built, not on meta"))
    monkeypatch.setattr(restorer_module, "build_vae", lambda *a, **k: pytest.fail("VAE built, not on meta"))
    built = []
    empty_transformer = restorer_module.empty_transformer
    monkeypatch.setattr(restorer_module, "empty_transformer",
                        lambda *a: built.append(empty_transformer(*a)) or built[-1])
    loaded = load_restorer(**restorer_settings(tmp_path, dtype="bfloat16", vae_dtype="bfloat16"), checkpoint=str(path))
    assert built and built[0] is loaded.transformer

    reference = copy.deepcopy(module.restorer).for_inference(torch.bfloat16, torch.bfloat16)
    expected = reference.state_dict()
    state = loaded.state_dict()
    assert set(state) == set(expected)
    keep = tuple(loaded.transformer._keep_in_fp32_modules)
    for key, value in state.items():
        island = key.startswith("transformer.") and any(part in keep for part in key.split("."))
        assert value.dtype == (torch.float32 if island else torch.bfloat16), key  # Wan's float32 islands stay float32
        assert value.dtype == expected[key].dtype and torch.equal(value, expected[key]), key
    assert sum(v.dtype == torch.bfloat16 for v in state.values()) > len(state) // 2
    lq = torch.rand(1, 5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(loaded.restore(lq), reference.restore(lq))

    with pytest.raises(ConfigError, match="lora.rank"):
        load_restorer(**restorer_settings(tmp_path, **{"lora.rank": 2}), checkpoint=str(path))
    with pytest.raises(ConfigError, match="backbone.transformer"):
        load_restorer(**restorer_settings(tmp_path, **{"backbone.transformer.num_layers": 1}), checkpoint=str(path))


@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode", "ignore:`isinstance\\(treespec, LeafSpec\\)`",
                            "ignore:The '.*dataloader' does not have many workers", "ignore:.*LeafSpec")
def test_train_stage_writes_its_export_and_run_restores_from_it(tiny_data_dir, tmp_path, monkeypatch):
    from fvr_bench.training.run import train

    paths = [f"paths.data_dir={tiny_data_dir}", f"paths.output_dir={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    cfg = compose("train", [*paths, "method=vividface_tiny", "trainer=cpu", "trainer.enable_progress_bar=false", "stage=2",
                            "method.train.stages.2.init_from=null", "method.train.stages.2.pre_extract=false",
                            "max_steps=1", "batch_size=1", "method.train.objectives.pixel.dists_weight=0"])
    run_dir = train(cfg)
    export = run_dir / "restorer.safetensors"
    assert json.loads((run_dir / "train.json").read_text())["export"] == str(export)
    last = load_weights(run_dir / "checkpoints" / "last.ckpt")
    exported = load_weights(export)
    assert set(exported) == {k.removeprefix("restorer.") for k in last}
    assert all(torch.equal(exported[k.removeprefix("restorer.")], v) for k, v in last.items())

    # `run` builds the restorer only (never a LightningModule) and restores with the export
    monkeypatch.setattr(VividFaceTraining, "__init__", lambda *a, **k: pytest.fail("run built a training module"))
    run_cfg = compose("run", overrides(tiny_data_dir, tmp_path, "method=vividface_tiny", f"method.checkpoint={export}"))
    restorer = build(run_cfg.method.restorer, "vividface_tiny")
    assert isinstance(restorer, VividFaceRestorer) and not isinstance(restorer, L.LightningModule)
    assert restorer.name == "vividface_tiny"
    from_checkpoint = build(compose("run", overrides(tiny_data_dir, tmp_path, "method=vividface_tiny",
                                                     f"method.checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}")).method.restorer,
                            "vividface_tiny")
    lq = torch.rand(1, 5, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    out = restorer.restore(lq, out_size=(32, 32))
    assert out.shape == (1, 5, 3, 32, 32) and torch.equal(out, from_checkpoint.restore(lq, out_size=(32, 32)))


# --------------------------------------------------------------------------- inference


def test_restore_through_the_config_for_odd_lengths_and_upscaling(tmp_path):
    restorer = build(compose("run", overrides(tmp_path, tmp_path, "method=vividface_tiny")).method.restorer, "vividface_tiny")
    assert isinstance(restorer, VividFaceRestorer) and not isinstance(restorer, L.LightningModule)
    generator = torch.Generator().manual_seed(1)
    for frames in (1, 7, 11):  # 11 > window_frames = 9: two windows
        lq = torch.rand(1, frames, 3, 20, 24, generator=generator)
        out = restorer.restore(lq, out_size=(40, 48))
        assert out.shape == (1, frames, 3, 40, 48)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert restorer.restore(torch.rand(2, 3, 3, 16, 16)).shape == (2, 3, 3, 16, 16)
    with pytest.raises(ConfigError, match="bfr"):
        restorer.restore(torch.rand(1, 3, 3, 16, 16), task="inpainting")


def test_windows_cover_every_frame_and_blend_without_seams():
    assert window_spans(7, 9, 4) == [(0, 7)]
    spans = window_spans(23, 9, 4)
    assert spans == [(0, 9), (5, 14), (10, 19), (14, 23)]
    with pytest.raises(ConfigError, match="1 \\+ 4k"):
        window_spans(20, 8, 2)
    padded = pad_to_vae_length(torch.arange(6.0).view(1, 6, 1))
    assert padded.flatten().tolist() == [0, 1, 2, 3, 4, 5, 5, 5, 5]

    # identical frames in; each window's output is offset by its index, so a hard cut would
    # jump by 1 at every boundary
    def offset_by_window(frames: torch.Tensor, calls: list) -> torch.Tensor:
        calls.append(frames.shape[1])
        return frames + float(len(calls))

    for total, bound in ((19, 1 / 5), (23, 2 / 5)):  # regular windows; the last one overlapping 5 > 4 frames
        calls = []
        frames = torch.full((1, total, 3, 2, 2), 0.25)
        out = restore_in_windows(frames, lambda f, calls=calls: offset_by_window(f, calls), window=9, overlap=4)
        assert out.shape == frames.shape and calls == [9] * len(window_spans(total, 9, 4))
        steps = (out[0, 1:, 0, 0, 0] - out[0, :-1, 0, 0, 0]).abs()
        assert steps.max() <= bound + 1e-6, f"{total} frames: a ramp of 4 frames moves at most {bound} per frame"
        assert torch.allclose(out[0, :5], frames[0, :5] + 1) and torch.allclose(out[0, -4:], frames[0, -4:] + len(calls))


def test_long_clip_through_the_restorer_is_the_blend_of_its_windows(tmp_path):
    module = tiny_restorer(tmp_path)
    lq = torch.rand(1, 1, 3, 16, 16, generator=torch.Generator().manual_seed(2)).expand(1, 14, 3, 16, 16)
    out = module.restore(lq)
    first, second = module.restore_window(lq[:, 0:9]), module.restore_window(lq[:, 5:14])
    assert out.shape == lq.shape
    assert torch.allclose(out[:, :5], first[:, :5], atol=1e-6) and torch.allclose(out[:, 9:], second[:, 4:], atol=1e-6)
    ramp = torch.arange(1, 5, dtype=torch.float32).view(1, 4, 1, 1, 1) / 5
    assert torch.allclose(out[:, 5:9], (1 - ramp) * first[:, 5:9] + ramp * second[:, :4], atol=1e-5)


# --------------------------------------------------------------------------- text embedding and the Wan folder


def test_text_embedding_cache_is_used_instead_of_the_encoder(tmp_path, monkeypatch):
    cache = tmp_path / "empty_prompt.pt"
    loads = []

    def load_encoder():
        loads.append(1)
        return tiny_text_encoder(TINY_UMT5)

    first = EmptyPromptEmbedding(cache, 16, 32, load_encoder).get()
    assert loads == [1] and cache.is_file() and first.shape == (1, 16, 32)
    assert first[0, 0].abs().sum() > 0 and first[0, 1:].abs().sum() == 0, "one real token (</s>), zeros after it"
    second = EmptyPromptEmbedding(cache, 16, 32, lambda: pytest.fail("encoder loaded although cached")).get()
    assert torch.equal(first, second)
    with pytest.raises(ConfigError, match="text_embedding_cache"):
        EmptyPromptEmbedding(cache, 16, 64, load_encoder).get()

    # the trimmed encoding equals WanPipeline's: all 16 positions encoded with a mask, then zeroed after the real tokens
    _, encoder = tiny_text_encoder(TINY_UMT5)
    ids = torch.zeros(1, 16, dtype=torch.long)
    ids[0, 0] = encoder.config.eos_token_id
    mask = torch.zeros(1, 16, dtype=torch.long)
    mask[0, 0] = 1
    with torch.no_grad():
        padded = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(encode_empty_prompt(None, encoder, 16)[0, 0], padded[0, 0], atol=1e-6)

    # a restorer built with the cache present never builds the text encoder
    monkeypatch.setattr(restorer_module, "tiny_text_encoder", lambda *a: pytest.fail("text encoder built"))
    restorer = tiny_restorer(tmp_path, **{"backbone.text_embedding_cache": str(cache)})
    assert torch.equal(restorer.text_embedding, first)
    assert "text_embedding" not in restorer.state_dict(), "built from the cache, never part of the weights"



def _fake_wan_folder(root):
    """A Wan2.1-Diffusers-layout folder holding tiny networks and a word-level T5-style tokenizer."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    WanTransformer3DModel(**{**TINY_TRANSFORMER, "patch_size": (1, 2, 2)}).save_pretrained(root / "transformer")
    AutoencoderKLWan(**TINY_VAE).save_pretrained(root / "vae")
    tiny_text_encoder(TINY_UMT5)[1].save_pretrained(root / "text_encoder")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "face": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>") \
        .save_pretrained(root / "tokenizer")
    return root


def test_wan_folder_loading_path_and_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(weights, "USER_CACHE", tmp_path / "user_cache")
    folder = _fake_wan_folder(tmp_path / "weights" / "Wan2.1-T2V-1.3B-Diffusers")
    assert weights.locate("wan21_t2v_1_3b_diffusers") == folder
    with pytest.raises(WeightsMissingError, match="does not exist"):
        weights.locate("wan21_t2v_1_3b_diffusers", folder / "transformer" / "config.json")  # a file is not the folder

    settings = restorer_settings(tmp_path, backbone={"max_sequence_length": 16, "text_embedding_cache": str(tmp_path / "t.pt")})
    module = load_restorer(**settings)  # the registry finds the folder; tokenizer + UMT5 run once, then the cache
    assert module.backbone_source == str(folder)
    from safetensors.torch import load_file

    saved = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(module.transformer.state_dict()["patch_embedding.weight"], saved["patch_embedding.weight"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    assert empty_prompt_tokens(tokenizer, 1, 16).tolist() == [[1]], "'' tokenizes to the lone </s> the id path feeds"
    _, encoder = tiny_text_encoder(TINY_UMT5)
    reference = encode_empty_prompt(None, encoder, 16)  # float32; the folder's encoder runs in bf16 as Wan's does
    assert torch.allclose(module.text_embedding, reference, atol=0.05) and module.text_embedding[0, 1:].abs().sum() == 0
    assert module.restore(torch.rand(1, 3, 3, 16, 16)).shape == (1, 3, 3, 16, 16)

    # paper scale without the folder or a checkpoint: one message, and nothing is built
    for builder in ("build_transformer", "empty_transformer", "build_vae", "empty_vae"):
        monkeypatch.setattr(restorer_module, builder, lambda *a, **k: pytest.fail("built before the check"))
    monkeypatch.setenv("FVR_BENCH_WEIGHTS", str(tmp_path / "empty"))
    cfg = compose("run", overrides(tmp_path, tmp_path, "method=vividface"))
    with pytest.raises(WeightsMissingError) as error:
        build(cfg.method.restorer, "vividface")
    message = str(error.value)
    assert "method.checkpoint" in message and "Wan2.1-T2V-1.3B-Diffusers" in message and "huggingface.co/Wan-AI" in message
    with pytest.raises(ConfigError, match="allow_random_weights"):
        build_restorer(backbone=TINY, allow_random_weights=False)


# --------------------------------------------------------------------------- face parsers


def test_bisenet_has_the_release_layout_and_parses(tmp_path):
    net = BiSeNet()
    keys = set(net.state_dict())
    for key in ("cp.resnet.conv1.weight", "cp.resnet.layer1.0.bn1.running_mean", "cp.resnet.layer2.0.downsample.0.weight",
                "cp.arm16.conv_atten.weight", "cp.arm32.bn_atten.bias", "cp.conv_avg.conv.weight", "cp.conv_head16.bn.weight",
                "ffm.convblk.conv.weight", "ffm.conv1.weight", "ffm.conv2.weight", "conv_out.conv_out.weight",
                "conv_out16.conv.conv.weight", "conv_out32.conv_out.weight"):
        assert key in keys, key
    assert not any(key.startswith(("cp.resnet.fc", "sp.")) for key in keys)
    released = {f"module.{k}": v for k, v in net.state_dict().items()}  # as saved from DataParallel
    loaded = build_bisenet(released)
    frames = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        assert torch.equal(loaded(frames), net.eval()(frames))
        assert loaded(frames).shape == (2, 19, 48, 40)
    parser = BiSeNetParser(None, input_size=64)
    masks = parser(frames)
    assert masks.shape == (2, 1, 48, 40) and masks.dtype == torch.bool
    with pytest.raises(ConfigError, match="face_classes"):
        BiSeNetParser(None, face_classes=[19])


def test_mediapipe_hull_covers_the_face_only(carphone):
    frames = torch.from_numpy(carphone[:2]).permute(0, 3, 1, 2).float()
    masks = MediaPipeHullParser()(frames)
    assert masks.shape == (2, 1, 144, 176)
    ys, xs = torch.nonzero(masks[0, 0], as_tuple=True)
    assert 0.04 < masks[0].float().mean() < 0.2
    assert 30 < ys.float().mean() < 90 and 60 < xs.float().mean() < 110, "centred on carphone's face"
    assert not masks[:, :, :10].any() and not masks[:, :, -10:].any()
