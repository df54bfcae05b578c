"""Reading weight files and loading them into networks: the one place that does it.

Bottom layer (imports torch, safetensors and :mod:`fvr_bench.errors` only), shared by the
metrics, the methods and the training code.

* :func:`read_file` — the raw object of a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.ckpt`` file,
  memory-mapped where the format allows (tensors are read from disk when used, not at load).
* :func:`read_state` — the state dict inside it: the EMA copy of a Lightning checkpoint
  (``ema_state_dict``), a BasicSR release's ``params_ema`` / ``params``, a Lightning
  ``state_dict``, or a plain state dict.
* :func:`load_state` — a strict load whose error names the first missing, unexpected and
  mis-shaped key (with both shapes) and the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from fvr_bench.errors import ConfigError, WeightsMissingError

EMA_KEY = "ema_state_dict"
SAFETENSORS_SUFFIX = ".safetensors"


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, memory-mapped (``safe_open`` on the CPU)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def _torch_load(path: Path, weights_only: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as error:  # legacy (non-zip) files cannot be memory-mapped
        if "mmap" not in str(error) and "zip" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def read_file(path: str | Path) -> dict:
    """The dict a weight file holds, tensors memory-mapped; a missing file is a
    :class:`WeightsMissingError`, an unreadable one or a non-dict a :class:`ConfigError`.

    Pickled files are read with ``weights_only=True``; a Lightning checkpoint whose saved
    hyperparameters need more (e.g. OmegaConf containers) is read again with
    ``weights_only=False`` — only for checkpoints this project wrote (``.ckpt``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsMissingError(f"checkpoint not found: {path}")
    try:
        if path.suffix == SAFETENSORS_SUFFIX:
            return read_safetensors(path)
        try:
            loaded = _torch_load(path, weights_only=True)
        except pickle.UnpicklingError:
            if path.suffix != ".ckpt":
                raise
            loaded = _torch_load(path, weights_only=False)
    except Exception as error:  # noqa: BLE001 - any read failure means the same thing
        raise ConfigError(f"checkpoint {path} cannot be read: {error}") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a state dict, got {type(loaded).__name__}")
    return loaded


def state_of(checkpoint: Mapping, source: str, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The weights inside a loaded checkpoint (see :func:`read_state`)."""
    if prefer_ema and isinstance(checkpoint.get(EMA_KEY), Mapping):
        return dict(checkpoint[EMA_KEY])
    for key in ("params_ema", "params") if prefer_ema else ("params", "params_ema"):
        if isinstance(checkpoint.get(key), Mapping):
            return dict(checkpoint[key])
    if isinstance(checkpoint.get("state_dict"), Mapping):
        return dict(checkpoint["state_dict"])
    if all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return dict(checkpoint)
    raise ConfigError(f"checkpoint {source} holds neither a Lightning 'state_dict' nor a plain state dict "
                      f"(top-level keys: {sorted(checkpoint)[:8]})")


def read_state(path: str | Path, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The module weights of a file, memory-mapped: the EMA copy when it has one and
    ``prefer_ema``; BasicSR releases (``params_ema`` / ``params``) in their own key layout;
    Lightning ``state_dict``; plain state dicts and safetensors files as they are."""
    return state_of(read_file(path), str(path), prefer_ema)


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def load_state(net: nn.Module, state: Mapping[str, torch.Tensor], source: str,
               key_map: Mapping[str, str] | Callable[[str], str | None] | None = None, *,
               dtype: torch.dtype | None = None, assign: bool = False) -> None:
    """Load ``state`` into ``net`` strictly; ``source`` names the weights in errors.

    ``key_map``: file key → ``net`` key (a mapping, or a function returning None to skip a
    key); keys absent from a mapping are taken as they are. ``dtype``: floating tensors are
    cast to it on the way in (from a memory-mapped file: one copy, at that dtype).
    ``assign``: the tensors replace ``net``'s (load into a network built on the meta device).
    A misfit raises :class:`ConfigError` naming the first missing key, the first unexpected
    key and the first key of another shape with both shapes.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key_map is None:
            target = key
        elif callable(key_map):
            target = key_map(key)
        else:
            target = key_map.get(key, key)
        if target is not None:
            mapped[target] = value
    own = net.state_dict(keep_vars=True)
    problems = []
    missing = [key for key in own if key not in mapped]
    unexpected = [key for key in mapped if key not in own]
    misfit = [key for key in mapped if key in own and _shape(mapped[key]) != _shape(own[key])]
    if missing:
        problems.append(f"{len(missing)} missing key(s), first {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
    if misfit:
        first = misfit[0]
        problems.append(f"{len(misfit)} tensor(s) of another shape, first {first!r}: file {_shape(mapped[first])}, "
                        f"network {_shape(own[first])}")
    if problems:
        raise ConfigError(f"{source}: weights do not fit this configuration: {'; '.join(problems)}")
    if dtype is not None:
        mapped = {k: v.to(dtype) if v.is_floating_point() else v for k, v in mapped.items()}
    net.load_state_dict(mapped, strict=True, assign=assign)
