"""Weights-only exports for inference: ``restorer.safetensors`` + ``restorer.json``.

The train command writes one at the end of each stage that yields a restorer
(``<stage dir>/restorer.safetensors``, from ``last.ckpt``'s EMA weights when kept);
:func:`export_command` (``python -m fvr_bench export``) writes one from any checkpoint a method's
restorer accepts. ``run`` loads an export through ``method.checkpoint=<…>/restorer.safetensors``:
memory-mapped, straight into the networks' dtype (built on the meta device).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fvr_bench.errors import ConfigError
from fvr_bench.io import atomic_write_with

WEIGHTS_FILE = "restorer.safetensors"
CONFIG_FILE = "restorer.json"
USAGE = ("usage: python -m fvr_bench export <checkpoint> [--out <folder>] method=<m> [<override> ...]\n"
         "  writes <folder>/restorer.safetensors + restorer.json (default folder: the stage directory of a\n"
         "  <stage dir>/checkpoints/*.ckpt, else the checkpoint's folder); overrides as for `run`.")


def restorer_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``restorer.*`` entries of a training module's state dict, prefix dropped."""
    return {key[len("restorer."):]: value for key, value in state.items() if key.startswith("restorer.")}


def write_export(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], folder: str | Path) -> Path:
    """Write ``state`` as ``<folder>/restorer.safetensors`` and ``config`` as ``restorer.json``
    (atomically); returns the weights file."""
    from safetensors.torch import save_file

    if not state:
        raise ConfigError(f"nothing to export to {folder}: the state holds no restorer weights")
    folder = Path(folder)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    weights_file = folder / WEIGHTS_FILE
    atomic_write_with(weights_file, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_with(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(dict(config), indent=2) + "\n"))
    return weights_file


def export_restorer(restorer: torch.nn.Module, folder: str | Path) -> Path:
    """Export a loaded restorer (its state dict and ``export_config()``)."""
    return write_export(restorer.state_dict(), restorer.export_config(), folder)


def export_command(args: list[str]) -> Path:
    """``python -m fvr_bench export <checkpoint> [--out <folder>] method=<m> [overrides]``: load
    the checkpoint through the method's ``restorer`` node (any file ``run`` accepts: a Lightning
    checkpoint, EMA preferred, an official release, an export) and write the export."""
    from omegaconf import OmegaConf

    from fvr_bench.config import build, compose
    from fvr_bench.methods.base import NetworkRestorer

    args = list(args)
    out: Path | None = None
    if "--out" in args:
        at = args.index("--out")
        if at + 1 >= len(args):
            raise ConfigError(USAGE)
        out = Path(args[at + 1])
        del args[at:at + 2]
    positional = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(positional) != 1 or not any(a.startswith("method=") for a in overrides):
        raise ConfigError(USAGE)
    checkpoint = Path(positional[0]).expanduser()
    if not checkpoint.is_file():
        raise ConfigError(f"export: checkpoint not found: {checkpoint}\n{USAGE}")
    if out is None:
        out = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    cfg = compose("run", overrides)
    if OmegaConf.select(cfg, "method.restorer.checkpoint") is None and "checkpoint" not in cfg.method:
        raise ConfigError(f"method {cfg.method.name!r} reads no checkpoint: nothing to export")
    OmegaConf.update(cfg, "method.checkpoint", str(checkpoint), force_add=True)
    restorer = build(cfg.method.restorer, f"method {cfg.method.name}")
    if not isinstance(restorer, NetworkRestorer):
        raise ConfigError(f"method {cfg.method.name!r}: its restorer is not a network restorer; nothing to export")
    path = export_restorer(restorer, out)
    print(f"exported {checkpoint} → {path} (+ {CONFIG_FILE})")
    return path
