"""The ``train`` machinery: windows, stage selection, checkpoints, resume, EMA, stage chaining."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from fvr_bench.config import compose
from fvr_bench.data.folder import ClipFolderDataset
from fvr_bench.errors import ConfigError
from fvr_bench.state_dicts import read_state
from fvr_bench.training.checkpoints import load_weights
from fvr_bench.training.data import ClipWindows, ping_pong
from fvr_bench.training.run import train

TOY_MODULE = {"_target_": "toy_training.ToyTraining", "restorer": {"_target_": "toy_training.ToyRestorer", "width": 4}}
TOY_STAGES = {
    "1": {"degradation": "vividface_bfr", "frames": 4, "size": 32, "batch_size": 2, "max_steps": 3,
          "init_from": None, "ema": 0.9, "precision": "32-true", "lr": 0.02, "module": {"lr": "${..lr}"}},
    "2": {"degradation": None, "frames": 4, "size": 32, "batch_size": 2, "max_steps": 2, "init_from": "1",
          "ema": None, "precision": "32-true", "lr": 0.01, "module": {"lr": "${..lr}", "freeze_head": True}},
}


def toy_cfg(data_dir, tmp_path, stage, *extra):
    cfg = compose("train", [f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path / 'outputs'}",
                            f"paths.cache_dir={tmp_path / 'cache'}", "method=bicubic", "trainer=cpu",
                            "trainer.enable_progress_bar=false", f"stage={stage}", "checkpoint_every=2", *extra])
    with open_dict(cfg):
        cfg.method.train = {"module": TOY_MODULE, "stages": TOY_STAGES}
    return cfg


def sample_dataset(data_dir):
    return ClipFolderDataset(name="sample", gt_root=data_dir / "sample" / "gt", manifest=data_dir / "sample" / "manifest.csv")


def test_ping_pong_extends_without_repeating_end_frames():
    frames = torch.arange(4.0)
    assert ping_pong(frames, 9).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert ping_pong(frames, 3).tolist() == [0, 1, 2, 3]  # long enough: untouched


def test_windows_are_reproducible_degraded_and_upsampled(tiny_data_dir):
    from fvr_bench.degradations import build_degradation
    from fvr_bench.config import CONF_DIR

    degradation = build_degradation(OmegaConf.load(CONF_DIR / "degradation" / "vividface_bfr.yaml"))
    windows = ClipWindows(sample_dataset(tiny_data_dir), ["carphone_000"], frames=12, size=32,
                          degradation=degradation, seed=3, augment=True, samples_per_epoch=4)
    a, b = windows[1], windows[1]
    assert a["gt"].shape == a["lq"].shape == (12, 3, 32, 32)  # 9-frame clip ping-ponged to 12; LQ resized back
    assert torch.equal(a["lq"], b["lq"]) and a["key"] == b["key"]
    assert not torch.equal(a["lq"], a["gt"])
    windows.set_epoch(1)
    assert windows[1]["key"] != a["key"]
    fixed = ClipWindows(sample_dataset(tiny_data_dir), ["carphone_000", "carphone_001"], frames=4, size=32,
                        degradation=None, augment=False)
    keys = [fixed[i]["key"] for i in range(len(fixed))]
    assert keys == ["carphone_000/t0/n4/s32", "carphone_000/t4/n4/s32", "carphone_000/t5/n4/s32",
                    "carphone_001/t0/n4/s32", "carphone_001/t4/n4/s32", "carphone_001/t5/n4/s32"]
    assert torch.equal(fixed[0]["lq"], fixed[0]["gt"])  # no degradation: LQ is GT


def test_train_resume_ema_and_stage_chaining(tiny_data_dir, tmp_path, one_torch_thread):
    run_dir = train(toy_cfg(tiny_data_dir, tmp_path, "1", "val_clips=[carphone_001]"))
    summary = json.loads((run_dir / "train.json").read_text())
    assert summary["global_step"] == 3 and summary["train_clips"] == ["carphone_000"]
    assert (run_dir / "loss_curves.png").stat().st_size > 1000
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    ema, raw = checkpoint["ema_state_dict"], checkpoint["state_dict"]
    assert set(ema) == set(raw) and not torch.equal(ema["restorer.head.weight"], raw["restorer.head.weight"])
    assert torch.equal(load_weights(run_dir / "checkpoints" / "last.ckpt")["restorer.head.weight"], ema["restorer.head.weight"])
    assert (run_dir / "checkpoints" / "step0000002.ckpt").is_file()
    # the weights-only export: the restorer's EMA weights and its architecture
    exported = read_state(run_dir / "restorer.safetensors")
    assert summary["export"] == str(run_dir / "restorer.safetensors")
    assert set(exported) == {"head.weight", "head.bias", "tail.weight", "tail.bias"}
    assert torch.equal(exported["head.weight"], ema["restorer.head.weight"])
    assert json.loads((run_dir / "restorer.json").read_text()) == {"method": "toy", "architecture": {"width": 4}}

    # started again with more steps: resumes at step 3, does not start over
    resumed = train(toy_cfg(tiny_data_dir, tmp_path, "1", "val_clips=[carphone_001]", "max_steps=5"))
    summary = json.loads((resumed / "train.json").read_text())
    assert summary["global_step"] == 5 and summary["resumed_from"].endswith("last.ckpt")
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]["seen"] == 10

    # stage 2 starts from stage 1's EMA weights with the head frozen; its options reach the module
    stage2 = train(toy_cfg(tiny_data_dir, tmp_path, "2", "val_clips=[carphone_001]"))
    after = torch.load(stage2 / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    stage1 = load_weights(resumed / "checkpoints" / "last.ckpt")
    assert torch.equal(after["restorer.head.weight"], stage1["restorer.head.weight"])
    assert not torch.equal(after["restorer.tail.weight"], stage1["restorer.tail.weight"])


def test_an_interrupted_stage_leaves_a_resumable_checkpoint(tiny_data_dir, tmp_path, one_torch_thread):
    cfg = toy_cfg(tiny_data_dir, tmp_path, "1", "max_steps=4", "checkpoint_every=1000")
    with open_dict(cfg):
        cfg.method.train.module.interrupt_at_step = 2
    with pytest.raises(SystemExit):  # Lightning shuts down gracefully, then exits
        train(cfg)
    last = tmp_path / "outputs" / "train" / "sample" / "bicubic" / "stage_1" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    cfg.method.train.module.interrupt_at_step = None
    run_dir = train(cfg)
    summary = json.loads((run_dir / "train.json").read_text())
    assert summary["global_step"] == 4 and summary["resumed_from"]


def test_stage_errors_name_the_fix(tiny_data_dir, tmp_path):
    with pytest.raises(ConfigError, match="no stage '3'"):
        train(toy_cfg(tiny_data_dir, tmp_path, "3"))
    with pytest.raises(ConfigError, match="stage=1"):
        train(toy_cfg(tiny_data_dir, tmp_path, "2"))
    with pytest.raises(ConfigError, match="both training and held-out"):
        train(toy_cfg(tiny_data_dir, tmp_path, "1", "train_clips=[carphone_000]", "val_clips=[carphone_000]"))
    cfg = compose("train", [f"paths.output_dir={tmp_path}", "method=bicubic", "stage=1"])
    with pytest.raises(ConfigError, match="cannot be trained"):
        train(cfg)


def test_lr_on_the_command_line_replaces_the_stage_lr():
    from fvr_bench.training.run import stage_options

    options = stage_options(compose("train", ["method=bfvr_stc_tiny", "stage=2a", "data=sample", "lr=3e-4"]))
    assert options.lr == 3e-4 and options.module.lr == 3e-4
    assert stage_options(compose("train", ["method=bfvr_stc_tiny", "stage=2a", "data=sample"])).lr != 3e-4
