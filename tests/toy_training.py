"""A two-stage toy method for testing the ``train`` machinery apart from any real method."""

from __future__ import annotations

import torch
from torch import nn

from fvr_bench.methods.base import NetworkRestorer, TrainingModule


class ToyRestorer(NetworkRestorer):
    """Residual 3-D conv net."""

    name = "toy"

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.width = int(width)
        self.head = nn.Conv3d(3, width, 3, padding=1)
        self.tail = nn.Conv3d(width, 3, 3, padding=1)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        x = lq.transpose(1, 2)  # (B, 3, T, H, W)
        return (x + self.tail(torch.relu(self.head(x)))).transpose(1, 2)

    def export_config(self) -> dict:
        return {"method": "toy", "architecture": {"width": self.width}}

    def restore(self, lq, **kwargs):
        with torch.no_grad():
            return self(lq).clamp(0, 1)


class ToyTraining(TrainingModule):
    """Stage "1" trains everything; stage "2" (``freeze_head``) starts from stage 1 with ``head`` frozen."""

    def __init__(self, restorer: ToyRestorer, lr: float = 1e-2, freeze_head: bool = False,
                 interrupt_at_step: int | None = None) -> None:
        super().__init__()
        self.restorer = restorer
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.lr, self.freeze_head, self.interrupt_at_step = float(lr), bool(freeze_head), interrupt_at_step

    def training_step(self, batch, batch_idx):
        if self.interrupt_at_step is not None and self.global_step == self.interrupt_at_step:
            raise KeyboardInterrupt  # what Ctrl-C does mid-step
        self.seen += len(batch["gt"])
        loss = (self.restorer(batch["lq"]) - batch["gt"]).abs().mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)

    def init_from_previous_stage(self, state_dict, previous_stage):
        self.load_state_dict(state_dict)
        self.restorer.head.requires_grad_(not self.freeze_head)
        self.initialised_from = previous_stage
