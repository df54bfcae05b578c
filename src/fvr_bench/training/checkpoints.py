"""Reading the weights out of a training checkpoint (Lightning's format, EMA preferred).

Thin names over :mod:`fvr_bench.state_dicts` (which does the reading, memory-mapped), kept
for the ``train`` command and its callers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fvr_bench.state_dicts import EMA_KEY, read_file, read_state

__all__ = ["EMA_KEY", "load_checkpoint", "load_weights"]


def load_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict; a missing or unreadable file names itself."""
    return read_file(path)


def load_weights(path: str | Path, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The module weights of a checkpoint: its EMA copy when it has one and ``prefer_ema``
    (see :func:`fvr_bench.state_dicts.read_state`)."""
    return read_state(path, prefer_ema)
