"""Exponential moving average of a module's weights, kept in the checkpoint.

BFVR-STC keeps an EMA copy (decay 0.995) and releases it as ``params_ema``; restorers load
the EMA copy when a checkpoint has one (:func:`fvr_bench.training.checkpoints.load_weights`).
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from fvr_bench.training.checkpoints import EMA_KEY


class EMA(Callback):
    """After every optimisation step: ``ema ← decay·ema + (1 − decay)·w`` for floating-point
    parameters and buffers; other buffers (counters, index tables) are copied. Kept on the
    module's device; written to each checkpoint as ``ema_state_dict`` (on the CPU)."""

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow: dict[str, torch.Tensor] | None = None

    def _init(self, pl_module) -> None:
        self.shadow = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.shadow is None:
            self._init(pl_module)
        else:  # restored from a checkpoint: follow the module onto its device
            device = next(iter(pl_module.state_dict().values())).device
            self.shadow = {k: v.to(device) for k, v in self.shadow.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.shadow is None:
            self._init(pl_module)
        for key, value in pl_module.state_dict().items():
            shadow = self.shadow.get(key)
            if shadow is None or shadow.shape != value.shape:
                self.shadow[key] = value.detach().clone()
            elif value.is_floating_point():
                shadow.lerp_(value.detach().to(shadow.dtype), 1.0 - self.decay)
            else:
                shadow.copy_(value)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.shadow is not None:
            checkpoint[EMA_KEY] = {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if isinstance(checkpoint.get(EMA_KEY), dict):
            self.shadow = {k: v.clone() for k, v in checkpoint[EMA_KEY].items()}
