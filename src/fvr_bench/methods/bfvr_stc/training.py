"""BFVR-STC training: one LightningModule for every stage, configured per stage.

:class:`BFVRSTCTraining` holds the restorer being trained (:class:`.restorer.BFVRSTCRestorer`),
the HQ encoder ``E_h`` (training only) and the stage's loss object (:mod:`.objectives`). What a
stage trains, what it takes from the previous stage and its objective come from
``train.stages.<s>.module`` of ``conf/method/bfvr_stc.yaml`` (Hydra-instantiated):

* ``trained``: the parts whose parameters this stage optimises; the others are frozen and kept
  in eval mode (stage II: ``hq_encoder``, ``restorer.quantizer``, ``restorer.decoder``).
* ``init_parts``: the parts copied from the previous stage's weights (each must be present);
  ``init_copies``: ``{target: source}`` parts initialised from another part (stage 2a:
  ``restorer.lq_encoder`` ← ``hq_encoder``).

Checkpoint keys: ``hq_encoder.*``, ``restorer.<part>.*``, ``objective.*`` (discriminator, LPIPS).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.methods.base import TrainingModule
from fvr_bench.methods.bfvr_stc.autoencoder import VideoEncoder
from fvr_bench.methods.bfvr_stc.quantizer import CodebookUsage
from fvr_bench.methods.bfvr_stc.restorer import PARTS, BFVRSTCRestorer, plain
from fvr_bench.state_dicts import EMA_KEY

log = logging.getLogger(__name__)

NETWORKS = ("hq_encoder", *(f"restorer.{part}" for part in PARTS))


def canonical_key(key: str) -> str | None:
    """A key of this module, of the former one-module checkpoints (``lq_encoder.*``, …) or of
    an official-layout view → this module's key; None for entries of no network here."""
    head = key.split(".")[0]
    if head in ("hq_encoder", "restorer", "objective"):
        return key
    if head in PARTS:
        return f"restorer.{key}"
    return None


class BFVRSTCTraining(TrainingModule):
    """``restorer``: the networks ``run`` uses; ``hq_encoder``: ``E_h``; ``objective``: the stage's
    loss (:class:`.objectives.CodebookLearning` / :class:`.objectives.CodeLookup`); ``lr``,
    ``betas``: Adam; ``usage_log_every``: steps between codebook-usage histograms."""

    def __init__(self, restorer: BFVRSTCRestorer, hq_encoder: VideoEncoder, objective: nn.Module, lr: float,
                 trained: Sequence[str], init_parts: Sequence[str] = (), init_copies: Mapping[str, str] | None = None,
                 betas: Sequence[float] = (0.9, 0.99), usage_log_every: int = 100, frames_multiple: int = 2) -> None:
        super().__init__()
        self.restorer, self.hq_encoder, self.objective = restorer, hq_encoder, objective
        self.lr, self.betas = float(lr), tuple(float(b) for b in plain(betas))
        self.trained, self.init_parts = list(plain(trained)), list(plain(init_parts))
        self.init_copies = dict(plain(init_copies) or {})
        for name in (*self.trained, *self.init_parts, *self.init_copies, *self.init_copies.values()):
            if name not in NETWORKS:
                raise ConfigError(f"bfvr_stc training: unknown part {name!r}; parts: {', '.join(NETWORKS)}")
        self.usage_log_every = int(usage_log_every)
        self.automatic_optimization = not objective.manual_optimization
        for part in NETWORKS:
            self.part(part).requires_grad_(part in self.trained)
        self.usage = CodebookUsage(restorer.quantizer.spatial_codebook.num_embeddings)
        # parts neither trained nor taken from an earlier stage hold random weights: never checkpointed
        # (a stage-1 checkpoint must not pass for a restorer), so resuming does not ask them back
        self.untouched = [p for p in NETWORKS if p not in (*self.trained, *self.init_parts, *self.init_copies)]
        self.strict_loading = not self.untouched

    def part(self, name: str) -> nn.Module:
        return self.get_submodule(name)

    def train(self, mode: bool = True) -> BFVRSTCTraining:
        """Frozen parts stay in eval mode."""
        super().train(mode)
        for part in NETWORKS:
            if part not in self.trained:
                self.part(part).eval()
        return self

    # ------------------------------------------------------------------ networks

    def reconstruct(self, video: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Stage I: ``(B, 3, T, H, W)`` → reconstruction ``(B, 3, T, H, W)`` and the quantizer output."""
        quantized = self.restorer.quantizer(self.hq_encoder(video))
        return self.restorer.decoder(quantized.latent), quantized

    def videos(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """GT and LQ as ``(B, 3, T, H, W)``."""
        gt, lq = batch["gt"], batch["lq"]
        factor, frames = self.restorer.spatial_factor, self.restorer.temporal_factor
        if gt.shape[-1] % factor or gt.shape[-2] % factor or gt.shape[1] % frames:
            raise ConfigError(f"BFVR-STC trains on {frames}k frames of multiples of {factor} pixels, got "
                              f"{tuple(gt.shape[1:])} (train.stages.<s>.frames / size)")
        return gt.transpose(1, 2), lq.transpose(1, 2)

    # ------------------------------------------------------------------ Lightning

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        return self.objective.step(self, batch)

    def configure_optimizers(self):
        return self.objective.optimizers(self, self.lr, self.betas)

    def on_train_start(self) -> None:
        self.objective.check_precision(self.trainer)

    def track_usage(self, spatial_indices: torch.Tensor, temporal_indices: torch.Tensor) -> None:
        """Log the share of each codebook used in this batch, and every ``usage_log_every``
        steps the share used over the window and its histogram (``codebook_usage/step_N.pt``
        in the logger's folder) — the quantity of the paper's codebook-utilisation figures."""
        size = self.usage.counts.shape[1]
        self.log_dict({"train/codes_used_spatial": spatial_indices.unique().numel() / size,
                       "train/codes_used_temporal": temporal_indices.unique().numel() / size})
        self.usage.update(spatial_indices, temporal_indices)
        if self.usage_log_every <= 0 or (self.global_step + 1) % self.usage_log_every:
            return
        spatial, temporal = self.usage.fraction_used()
        self.log_dict({"train/codebook_usage_spatial": spatial, "train/codebook_usage_temporal": temporal})
        log_dir = getattr(self.trainer, "log_dir", None) if self._trainer is not None else None
        if log_dir and self.trainer.is_global_zero:
            folder = Path(log_dir) / "codebook_usage"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"step": self.global_step + 1, "spatial": self.usage.counts[0].cpu(),
                        "temporal": self.usage.counts[1].cpu()}, folder / f"step_{self.global_step + 1:07d}.pt")
        self.usage.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for entry in ("state_dict", EMA_KEY):
            if isinstance(checkpoint.get(entry), dict):
                checkpoint[entry] = {k: v for k, v in checkpoint[entry].items()
                                     if not any(k.startswith(p + ".") for p in self.untouched)}

    # ------------------------------------------------------------------ stage handover

    def _official_view(self) -> nn.Module:
        """The networks under the names of the former one-module layout, for :mod:`.official`."""
        view = nn.Module()
        view.hq_encoder = self.hq_encoder
        for part in PARTS:
            setattr(view, part, getattr(self.restorer, part))
        view.architecture = self.restorer.architecture
        return view

    def init_from_previous_stage(self, state_dict: Mapping[str, torch.Tensor], previous_stage: str) -> None:
        """Copy ``init_parts`` from the previous stage's weights (or the official release's),
        then ``init_copies``. Parts of another shape mean another configuration and stop with
        the list; an ``init_parts`` entry the weights lack stops too."""
        from fvr_bench.methods.bfvr_stc.official import from_official, is_official_layout

        state = dict(state_dict)
        if is_official_layout(state):
            state, _ = from_official(state, self._official_view())
        state = {canonical_key(k): v for k, v in state.items() if canonical_key(k) is not None}
        own = self.state_dict()
        wanted = {k: v for k, v in state.items() if k in own and any(k.startswith(p + ".") for p in self.init_parts)}
        mismatched = sorted(k for k in wanted if wanted[k].shape != own[k].shape)
        if mismatched:
            raise ConfigError(f"weights of stage {previous_stage} do not fit this configuration: "
                              f"{[(k, tuple(wanted[k].shape), tuple(own[k].shape)) for k in mismatched[:4]]}")
        absent = [p for p in self.init_parts if not any(k.startswith(p + ".") for k in wanted)]
        if absent:
            raise ConfigError(f"the weights of stage {previous_stage} hold no {', '.join(absent)}; this stage "
                              f"starts from a trained stage-1 network")
        self.load_state_dict(wanted, strict=False)
        for target, source in self.init_copies.items():
            self.part(target).load_state_dict(self.part(source).state_dict())
        fresh = sorted({p for p in NETWORKS if p not in self.init_parts and p not in self.init_copies})
        log.info("BFVR-STC initialised from stage %s (%d tensors); copied %s; newly initialised: %s", previous_stage,
                 len(wanted), self.init_copies or "nothing", ", ".join(fresh) or "nothing")
