"""Reading the weights out of a training checkpoint (Lightning's format, EMA preferred)."""

from __future__ import annotations

from pathlib import Path

import torch

from fvr_bench.errors import ConfigError, WeightsMissingError

EMA_KEY = "ema_state_dict"


def load_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict; a missing or unreadable file names itself."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsMissingError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing
        raise ConfigError(f"checkpoint {path} cannot be read: {error}") from error


def load_weights(path: str | Path, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The module weights of a checkpoint: its EMA copy when it has one and ``prefer_ema``.

    Accepts Lightning checkpoints (``state_dict`` [+ ``ema_state_dict``]), BasicSR releases
    (``params_ema`` / ``params``, e.g. BFVR-STC's ``ckpt-bfvr.pth``: returned in their own key
    layout, which the method maps) and plain state dicts.
    """
    checkpoint = load_checkpoint(path)
    if prefer_ema and isinstance(checkpoint.get(EMA_KEY), dict):
        return checkpoint[EMA_KEY]
    for key in ("params_ema", "params") if prefer_ema else ("params", "params_ema"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if isinstance(checkpoint.get("state_dict"), dict):
        return checkpoint["state_dict"]
    if all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return checkpoint
    raise ConfigError(f"checkpoint {path} holds neither a Lightning 'state_dict' nor a plain state dict "
                      f"(top-level keys: {sorted(checkpoint)[:8]})")
