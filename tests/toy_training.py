"""A two-stage toy method for testing the ``train`` machinery apart from any real method."""

from __future__ import annotations

import torch
from torch import nn

from fvr_bench.methods.base import RestorerModule


class ToyRestorer(RestorerModule):
    """Residual 3-D conv net: stage "1" trains everything, stage "2" freezes ``head``."""

    name = "toy"

    def __init__(self, width: int = 4, lr: float = 1e-2, stage: str = "1", stage_options: dict | None = None,
                 interrupt_at_step: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.head = nn.Conv3d(3, width, 3, padding=1)
        self.tail = nn.Conv3d(width, 3, 3, padding=1)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.lr = float((stage_options or {}).get("lr", lr))
        self.received_options = stage_options

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        x = lq.transpose(1, 2)  # (B, 3, T, H, W)
        return (x + self.tail(torch.relu(self.head(x)))).transpose(1, 2)

    def training_step(self, batch, batch_idx):
        if self.hparams.interrupt_at_step is not None and self.global_step == self.hparams.interrupt_at_step:
            raise KeyboardInterrupt  # what Ctrl-C does mid-step
        self.seen += len(batch["gt"])
        loss = (self(batch["lq"]) - batch["gt"]).abs().mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)

    def init_from_previous_stage(self, state_dict, previous_stage):
        self.load_state_dict(state_dict)
        self.head.requires_grad_(False)
        self.initialised_from = previous_stage

    def restore(self, lq, **kwargs):
        with torch.no_grad():
            return self(lq).clamp(0, 1)
