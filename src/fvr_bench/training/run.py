"""``python -m fvr_bench train method=<m> stage=<s> data=<GT set>``: one training stage with Lightning.

What runs comes from the config (see :mod:`fvr_bench.training`): the method's ``train.module``,
its ``train.stages.<s>`` (degradation — or ``task_views`` for multi-task training, see
:mod:`fvr_bench.training.views` — optional ``landmarks: dlib68``, window, batch, steps,
precision, EMA, which earlier stage initialises it) and ``trainer`` (devices, strategy). The run directory
``<output_dir>/train/<data>/<method>/stage_<s>/`` holds ``checkpoints/`` (``last.ckpt`` and
periodic ones), ``logs/`` (CSV), ``loss_curves.png``, ``config.yaml``, ``train.json`` and, unless
the stage sets ``export: false``, the weights-only export ``restorer.safetensors`` + ``restorer.json``.
Started again, a stage resumes from ``last.ckpt`` (optimiser, step counter and EMA included).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from fvr_bench.errors import ConfigError

log = logging.getLogger(__name__)


def stage_options(cfg: DictConfig) -> DictConfig:
    stage = str(cfg.stage)
    stages = OmegaConf.select(cfg, "method.train.stages")
    if stages is None:
        raise ConfigError(f"method {cfg.method.name!r} has no train.stages in conf/method/{cfg.method.name}.yaml: "
                          "it cannot be trained")
    if stage not in stages:
        raise ConfigError(f"method {cfg.method.name!r} has no stage {stage!r}; stages: {', '.join(map(str, stages))}")
    options = stages[stage]
    if cfg.get("lr") is not None:  # `lr=` on the command line replaces the stage's (its module reads ${..lr})
        with open_dict(options):
            options.lr = float(cfg.lr)
    return options


def stage_dir(cfg: DictConfig, stage: str) -> Path:
    """Run directory of ``stage`` for the same method, data and run name."""
    return Path(cfg.paths.output_dir) / "train" / cfg.data.name / cfg.run_name / f"stage_{stage}"


def split_clips(cfg: DictConfig, dataset) -> list[str]:
    """Training clip ids: ``train_clips`` when given, else every clip not in ``val_clips``."""
    every = dataset.clip_ids()
    held_out = set(cfg.val_clips or [])
    unknown = sorted((held_out | set(cfg.train_clips or [])) - set(every))
    if unknown:
        raise ConfigError(f"clips {unknown} are not in dataset {dataset.name!r} (it has {len(every)} clips)")
    chosen = list(cfg.train_clips) if cfg.train_clips else [c for c in every if c not in held_out]
    overlap = sorted(set(chosen) & held_out)
    if overlap:
        raise ConfigError(f"clips {overlap} are both training and held-out clips")
    return chosen


def build_module(cfg: DictConfig, options: DictConfig):
    """The method's training module for this stage: ``method.train.module`` with the stage's
    ``train.stages.<s>.module`` merged over it (both resolved in place, so a stage's
    ``${..lr}`` is its own), instantiated by Hydra (nested ``_target_`` nodes included)."""
    from fvr_bench.config import build
    from fvr_bench.methods.base import TrainingModule

    common = OmegaConf.select(cfg, "method.train.module")
    if common is None:
        raise ConfigError(f"method {cfg.method.name!r} has no train.module in conf/method/{cfg.method.name}.yaml")
    node = OmegaConf.merge(OmegaConf.to_container(common, resolve=True),
                           OmegaConf.to_container(options.get("module") or {}, resolve=True))
    module = build(node, f"method {cfg.method.name} stage {cfg.stage} training module")
    if not isinstance(module, TrainingModule):
        raise ConfigError(f"method.train.module of {cfg.method.name!r} builds a {type(module).__name__}, "
                          "not a fvr_bench.methods.base.TrainingModule")
    return module


def train(cfg: DictConfig) -> Path:
    """Fit one stage; returns the run directory."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from fvr_bench.config import build
    from fvr_bench.degradations import build_degradation
    from fvr_bench.io import atomic_write_text
    from fvr_bench.training.checkpoints import load_weights
    from fvr_bench.training.curves import plot_curves
    from fvr_bench.training.data import ClipWindowDataModule, ClipWindows
    from fvr_bench.training.ema import EMA
    from fvr_bench.training.export import restorer_state, write_export

    options = stage_options(cfg)
    stage = str(cfg.stage)
    run_dir = Path(cfg.run_dir)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    dataset = build(cfg.data, "data")
    degradation = None
    if options.get("degradation"):
        from fvr_bench.config import CONF_DIR

        preset = CONF_DIR / "degradation" / f"{options.degradation}.yaml"
        if not preset.is_file():
            raise ConfigError(f"stage {stage}: degradation preset {options.degradation!r} not found ({preset})")
        degradation = build_degradation(OmegaConf.load(preset))
    views = None
    if options.get("task_views") is not None:  # multi-task training (SVFR): several degraded views per window
        from fvr_bench.training.views import task_views_from_config

        if degradation is not None:
            raise ConfigError(f"stage {stage}: set either degradation ({options.degradation}) or task_views, not both")
        views = task_views_from_config(options.task_views)
    windows = ClipWindows(
        dataset, split_clips(cfg, dataset), frames=int(cfg.frames or options.frames), size=int(cfg.size or options.size),
        degradation=degradation, seed=int(cfg.seed), augment=bool(cfg.augment and not options.get("pre_extract")),
        samples_per_epoch=cfg.samples_per_epoch, views=views, landmarks=options.get("landmarks"),
    )
    datamodule = ClipWindowDataModule(windows, batch_size=int(cfg.batch_size or options.batch_size),
                                      num_workers=int(cfg.num_workers))

    module = build_module(cfg, options)
    last = run_dir / "checkpoints" / "last.ckpt"
    resuming = bool(cfg.resume) and last.is_file()
    previous = options.get("init_from")
    if previous is not None:
        init_path = Path(cfg.init_checkpoint) if cfg.init_checkpoint else stage_dir(cfg, str(previous)) / "checkpoints" / "last.ckpt"
        if not init_path.is_file():
            raise ConfigError(
                f"stage {stage} starts from stage {previous}'s weights, but {init_path} does not exist: train it first "
                f"(python -m fvr_bench train method={cfg.method.name} stage={previous} data={cfg.data.name}) "
                "or pass init_checkpoint=<path>")
        # also on resume: the hook freezes what the stage keeps fixed; the resumed weights then overwrite
        module.init_from_previous_stage(load_weights(init_path), str(previous))
        log.info("stage %s initialised from %s", stage, init_path)

    if options.get("pre_extract"):
        module.prepare(datamodule.ordered_dataloader(), run_dir.parent / "latents")

    callbacks = [ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=-1,
                                 every_n_train_steps=int(cfg.checkpoint_every), filename="step{step:07d}",
                                 auto_insert_metric_name=False, enable_version_counter=False),
                 # Ctrl-C, a SLURM preemption signal or a crash still leaves a resumable last.ckpt
                 OnExceptionCheckpoint(dirpath=run_dir / "checkpoints", filename="last")]
    if options.get("ema"):
        callbacks.append(EMA(float(options.ema)))
    max_steps = int(cfg.max_steps or options.max_steps)
    trainer = instantiate(cfg.trainer, max_steps=max_steps, precision=cfg.precision or options.get("precision", "32-true"),
                          callbacks=callbacks, logger=CSVLogger(run_dir, name="logs"), default_root_dir=str(run_dir),
                          limit_val_batches=0, num_sanity_val_steps=0)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resuming else None)
    # the final step is rarely a multiple of checkpoint_every: last.ckpt must hold it (all ranks call this)
    trainer.save_checkpoint(last)

    if trainer.is_global_zero:
        exported = None
        if options.get("export", True):  # the stage's restorer, weights only (EMA when kept)
            exported = write_export(restorer_state(load_weights(last)), module.restorer.export_config(), run_dir)
        curves = plot_curves(run_dir / "logs", run_dir / "loss_curves.png")
        summary = {"method": cfg.method.name, "stage": stage, "data": cfg.data.name, "train_clips": windows.clip_ids,
                   "val_clips": list(cfg.val_clips or []), "global_step": trainer.global_step, "max_steps": max_steps,
                   "resumed_from": str(last) if resuming else None, "init_from": previous,
                   "degradation": options.get("degradation"),
                   "task_views": views.config() if views is not None else None,
                   "landmarks": options.get("landmarks"), "loss_curves": str(curves) if curves else None,
                   "last_checkpoint": str(last), "export": str(exported) if exported else None}
        atomic_write_text(run_dir / "train.json", json.dumps(summary, indent=2))
    return run_dir
