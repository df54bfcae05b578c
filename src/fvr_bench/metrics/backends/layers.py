"""Small network pieces shared by several metric backbones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """Transformer feed-forward block ``fc2(GELU(fc1(x)))``; parameter names ``fc1``/``fc2``
    match the MUSIQ (pyiqa) and Video Swin (FasterVQA) checkpoints."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
