"""IP-FVR's personalised LoRA ψ_id (Han et al., §3.2): per-identity low-rank adapters on the
spatial and temporal attention layers of the video UNet, stored per identity and applied
plug-and-play.

The paper: "we fine-tune the spatial and temporal layers of the vanilla VLDM using trainable
LoRA linear layers". Here, on a diffusers ``UNet3DConditionModel`` (module names relative
to the UNet itself):

* ``spatial`` — the Q/K/V/out projections of both attentions of every spatial transformer:
  ``{down_blocks.i,up_blocks.i,mid_block}.attentions.j.transformer_blocks.k.attn{1,2}.{to_q,to_k,to_v,to_out.0}``
* ``temporal`` — the same projections of every temporal transformer, including the one
  after ``conv_in``: ``{…}.temp_attentions.j.transformer_blocks.k.attn{1,2}.…`` and
  ``transformer_in.transformer_blocks.k.attn{1,2}.…``

Nothing else (no resnets, convolutions, feed-forwards, proj_in/proj_out, time embedding),
and only the UNet: whether the ControlNet is tuned is not stated in the paper.

Not in the paper, chosen here: rank 16 (a common LoRA size for per-subject diffusion
fine-tuning, small enough for 100 steps on four scenes), alpha = rank (scale alpha/rank =
1, so the learning rate does not depend on the rank), no dropout, peft's default init
(A Kaiming-uniform, B = 0: an added adapter leaves the UNet's output unchanged).

On disk, one folder per identity: ``<folder>/<name>/lora.safetensors`` (the adapter's
weights under peft-agnostic keys ``<module>.lora_A.weight`` ``(rank, in)`` and
``<module>.lora_B.weight`` ``(out, rank)``) and ``lora.json`` (rank, alpha, targets, base
model id, training summary). Both are written atomically, the json last: a folder is an
identity when both files exist.

Training: ``params = add_identity_lora(unet, name, lora_config())`` (only those train), then
``save_identity_lora(folder, name, lora_state(unet, name), lora_meta(config, base_id, summary))``.
Inference: ``load_identity_lora(unet, folder, name)``; ``set_active_identity`` switches
between loaded identities or back to the vanilla UNet (``None``).
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fvr_bench.errors import ConfigError
from fvr_bench.io import atomic_write_bytes, atomic_write_text
from fvr_bench.state_dicts import read_safetensors

DEFAULT_RANK = 16
WEIGHTS_FILE = "lora.safetensors"
META_FILE = "lora.json"
TRAIN_COMMAND = "python -m fvr_bench train method=ip_fvr stage=identity identity={name}"

_PROJECTIONS = r"transformer_blocks\.\d+\.attn[12]\.(?:to_q|to_k|to_v|to_out\.0)"
_BLOCKS = r"(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)"

# target group → regex that ``re.fullmatch``es the module names (relative to the UNet) of its Linear layers
LORA_TARGETS: dict[str, str] = {
    "spatial": rf"{_BLOCKS}\.attentions\.\d+\.{_PROJECTIONS}",
    "temporal": rf"(?:{_BLOCKS}\.temp_attentions\.\d+|transformer_in)\.{_PROJECTIONS}",
}
DEFAULT_TARGETS = ("spatial", "temporal")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LORA_KEY = re.compile(r"(.+)\.lora_([AB])\.weight")


def _check_targets(targets: Iterable[str]) -> tuple[str, ...]:
    targets = tuple(targets)
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown or not targets or len(set(targets)) != len(targets):
        raise ConfigError(f"LoRA targets must be distinct names among {sorted(LORA_TARGETS)}, got {list(targets)}")
    return targets


def target_regex(targets: Iterable[str] = DEFAULT_TARGETS) -> str:
    """One regex (for ``re.fullmatch``, as peft uses a string ``target_modules``) selecting
    the Linear layers of the given target groups."""
    return "(?:" + "|".join(LORA_TARGETS[t] for t in _check_targets(targets)) + ")"


def _target_linears(unet: nn.Module, regex: str) -> dict[str, nn.Linear]:
    """``{module name: nn.Linear}`` that ``regex`` fullmatches; a Linear already wrapped by a
    peft LoRA layer (another identity) counts under the wrapper's name."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    pattern = re.compile(regex)
    found = {}
    for name, module in unet.named_modules():
        if not pattern.fullmatch(name):
            continue
        if isinstance(module, nn.Linear):
            found[name] = module
        elif isinstance(module, BaseTunerLayer) and isinstance(getattr(module, "base_layer", None), nn.Linear):
            found[name] = module.base_layer
    return found


def lora_target_names(unet: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``unet`` that :func:`lora_config` selects."""
    return list(_target_linears(unet, target_regex(targets)))


def lora_config(rank: int = DEFAULT_RANK, alpha: float | None = None,
                targets: Iterable[str] = DEFAULT_TARGETS):
    """peft ``LoraConfig`` of an identity adapter: rank ``rank``, ``lora_alpha`` = ``alpha``
    (default: ``rank``, i.e. scale 1), ``target_modules`` = :func:`target_regex` of
    ``targets``, no dropout, no bias, B initialised to 0."""
    from peft import LoraConfig

    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}")
    alpha = rank if alpha is None else alpha
    if alpha <= 0:
        raise ConfigError(f"LoRA alpha must be positive, got {alpha!r}")
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_regex(targets), lora_dropout=0.0,
                      bias="none", init_lora_weights=True)


def config_targets(config: Any) -> tuple[str, ...]:
    """The target groups a config of :func:`lora_config` was built from (ConfigError if its
    ``target_modules`` is not one of them)."""
    for size in range(1, len(LORA_TARGETS) + 1):
        for combo in itertools.permutations(LORA_TARGETS, size):
            if target_regex(combo) == config.target_modules:
                return combo
    raise ConfigError(f"LoRA target_modules {config.target_modules!r} is not built from {sorted(LORA_TARGETS)}")


def lora_meta(config: Any, base_model: str, training: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``lora.json`` content for an adapter of ``config`` on ``base_model`` (an id of
    the base UNet weights), with a free-form ``training`` summary (steps, lr, scenes…)."""
    return {"rank": int(config.r), "alpha": config.lora_alpha, "targets": list(config_targets(config)),
            "base_model": base_model, "training": dict(training or {})}


def _tuner_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, module) for name, module in unet.named_modules() if isinstance(module, BaseTunerLayer)]


def _adapter_layers(unet: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    return [(path, module) for path, module in _tuner_layers(unet)
            if hasattr(module, "lora_A") and name in module.lora_A]


def _same_config(a: Any, b: Any) -> bool:
    """Same rank, alpha and target groups (in any order)."""
    return ((int(a.r), float(a.lora_alpha), frozenset(config_targets(a)))
            == (int(b.r), float(b.lora_alpha), frozenset(config_targets(b))))


def identity_parameters(unet: nn.Module, name: str) -> list[nn.Parameter]:
    """The LoRA parameters (A and B of every layer) of adapter ``name``."""
    params = []
    for _, module in _adapter_layers(unet, name):
        params += [module.lora_A[name].weight, module.lora_B[name].weight]
    return params


def set_active_identity(unet: nn.Module, name: str | None) -> None:
    """Make adapter ``name`` the only active one (plug-and-play), or none (``None``: the
    vanilla UNet). Does not change which parameters require grad."""
    layers = _tuner_layers(unet)
    if name is not None and not _adapter_layers(unet, name):
        raise ConfigError(f"no LoRA adapter {name!r} in the UNet")
    flags = {id(p): p.requires_grad for p in unet.parameters()}
    for _, module in layers:
        if name is None:
            module.enable_adapters(False)
        else:
            module.enable_adapters(True)
            module.set_adapter(name)
    # peft's set_adapter / enable_adapters also toggle requires_grad; keep the caller's choice
    for p in unet.parameters():
        p.requires_grad_(flags[id(p)])


def add_identity_lora(unet: nn.Module, name: str, config: Any) -> list[nn.Parameter]:
    """Inject a new LoRA adapter ``name`` (peft ``inject_adapter_in_model``) and make it the
    active one. Every other parameter of ``unet`` (base weights and other identities) is
    frozen, this adapter's are trainable — the per-identity stage trains only ψ_id (peft
    itself already freezes the base on injection). Returns this adapter's parameters."""
    from peft import inject_adapter_in_model

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"identity name {name!r} must be letters, digits, '_', '.', '-' (it names a folder)")
    if _adapter_layers(unet, name):
        raise ConfigError(f"the UNet already has a LoRA adapter {name!r}")
    if not isinstance(config.target_modules, str) or not _target_linears(unet, config.target_modules):
        raise ConfigError(f"LoRA target_modules {config.target_modules!r} selects no Linear layer of the UNet")
    with warnings.catch_warnings():
        # a second identity on the same UNet is intended (plug-and-play), not a mistake
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, unet, adapter_name=name)
    set_active_identity(unet, name)
    params = identity_parameters(unet, name)
    unet.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state(unet: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s weights only, under peft-agnostic keys ``<module>.lora_A.weight``
    ``(rank, in)`` and ``<module>.lora_B.weight`` ``(out, rank)`` (detached CPU copies)."""
    layers = _adapter_layers(unet, name)
    if not layers:
        raise ConfigError(f"no LoRA adapter {name!r} in the UNet")
    state = {}
    for path, module in layers:
        state[f"{path}.lora_A.weight"] = module.lora_A[name].weight.detach().cpu().contiguous().clone()
        state[f"{path}.lora_B.weight"] = module.lora_B[name].weight.detach().cpu().contiguous().clone()
    return state


def _check_state(state: Mapping[str, torch.Tensor], rank: int, where: str) -> None:
    for key, tensor in state.items():
        match = _LORA_KEY.fullmatch(key)
        if match is None or tensor.ndim != 2:
            raise ConfigError(f"{where}: {key!r} {tuple(tensor.shape)} is not a LoRA weight "
                              "(<module>.lora_A.weight / <module>.lora_B.weight, 2-D)")
        size = tensor.shape[0] if match.group(2) == "A" else tensor.shape[1]
        if size != rank:
            raise ConfigError(f"{where}: {key} has shape {tuple(tensor.shape)}, not rank {rank}")


def save_identity_lora(folder: str | Path, name: str, state: Mapping[str, torch.Tensor],
                       meta: Mapping[str, Any]) -> Path:
    """Write ``<folder>/<name>/lora.safetensors`` and ``lora.json`` atomically (weights first,
    json last). ``meta`` needs ``rank``, ``alpha`` and ``targets`` (see :func:`lora_meta`);
    its other entries (base_model, training) are stored as given. Returns the folder."""
    from safetensors.torch import save

    if not _NAME.fullmatch(name):
        raise ConfigError(f"identity name {name!r} must be letters, digits, '_', '.', '-' (it names a folder)")
    missing = [key for key in ("rank", "alpha", "targets") if key not in meta]
    if missing:
        raise ConfigError(f"LoRA meta of identity {name!r} lacks {missing}")
    _check_targets(meta["targets"])
    if not state:
        raise ConfigError(f"LoRA state of identity {name!r} is empty")
    _check_state(state, int(meta["rank"]), f"LoRA state of identity {name!r}")
    target = Path(folder) / name
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    atomic_write_bytes(target / WEIGHTS_FILE, save(tensors))
    record = dict(meta)
    record["targets"] = list(meta["targets"])
    atomic_write_text(target / META_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return target


def identity_names(folder: str | Path) -> list[str]:
    """Sorted names of the identities stored under ``folder`` (sub-folders holding both
    ``lora.json`` and ``lora.safetensors``); [] if ``folder`` does not exist."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (p / META_FILE).is_file() and (p / WEIGHTS_FILE).is_file())


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the LoRA description ({exc})") from exc
    missing = [key for key in ("rank", "alpha", "targets") if key not in (meta if isinstance(meta, dict) else {})]
    if missing:
        raise ConfigError(f"{path}: lacks {missing}")
    return meta


def load_identity_lora(unet: nn.Module, folder: str | Path, name: str, *, config: Any = None,
                       base_model: str | None = None) -> dict[str, Any]:
    """Load identity ``name`` from ``<folder>/<name>/`` into ``unet`` as adapter ``name``
    and make it the active one; returns its ``lora.json`` content.

    Strict: the weights must be exactly those the json's rank/alpha/targets select on this
    UNet (every key, every shape), the json must match ``config`` if given (the rank/alpha/
    targets the caller expects) and ``base_model`` if given; otherwise ConfigError naming
    the json. An unknown identity → ConfigError listing the stored ones and the command
    that trains one. If ``unet`` already has adapter ``name`` with the same config, its
    weights are replaced. Parameters' ``requires_grad`` is as after
    :func:`add_identity_lora` (only this adapter trainable).
    """
    root = Path(folder)
    meta_path, weights_path = root / name / META_FILE, root / name / WEIGHTS_FILE
    if not (meta_path.is_file() and weights_path.is_file()):
        available = identity_names(root)
        raise ConfigError(
            f"no identity LoRA {name!r} in {root} (needs {name}/{META_FILE} and {name}/{WEIGHTS_FILE}); "
            f"available: {', '.join(available) if available else 'none'}. "
            f"Train one with: {TRAIN_COMMAND.format(name=name)}")
    meta = _read_meta(meta_path)
    try:
        wanted = lora_config(int(meta["rank"]), float(meta["alpha"]), meta["targets"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{meta_path}: {exc}") from exc
    if config is not None and not _same_config(config, wanted):
        raise ConfigError(
            f"{meta_path}: identity {name!r} was trained with rank {meta['rank']}, alpha {meta['alpha']}, "
            f"targets {meta['targets']}; expected rank {config.r}, alpha {config.lora_alpha}, "
            f"targets {list(config_targets(config))}")
    if base_model is not None and meta.get("base_model") != base_model:
        raise ConfigError(f"{meta_path}: identity {name!r} was trained on base model "
                          f"{meta.get('base_model')!r}, not {base_model!r}")

    state = read_safetensors(weights_path)
    # check everything before touching the UNet, so a bad file leaves it as it was
    expected: dict[str, tuple[int, int]] = {}
    for path, linear in _target_linears(unet, wanted.target_modules).items():
        expected[f"{path}.lora_A.weight"] = (wanted.r, linear.in_features)
        expected[f"{path}.lora_B.weight"] = (linear.out_features, wanted.r)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shaped = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or shaped:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (first {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
        if shaped:
            details.append(f"{len(shaped)} mis-shaped (first {shaped[0]}: file {tuple(state[shaped[0]].shape)}, "
                           f"UNet {expected[shaped[0]]})")
        raise ConfigError(f"{weights_path} does not fit the rank {meta['rank']} / targets {meta['targets']} "
                          f"described by {meta_path} on this UNet: {'; '.join(details)}")

    if _adapter_layers(unet, name):
        existing = getattr(unet, "peft_config", {}).get(name)
        if existing is None or not _same_config(existing, wanted):
            raise ConfigError(f"{meta_path}: the UNet already has a LoRA adapter {name!r} with another config")
        set_active_identity(unet, name)
        params = identity_parameters(unet, name)
        unet.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    else:
        add_identity_lora(unet, name, wanted)
    layers = dict(_adapter_layers(unet, name))
    with torch.no_grad():
        for key, tensor in state.items():
            path, which = _LORA_KEY.fullmatch(key).groups()
            holder = layers[path].lora_A if which == "A" else layers[path].lora_B
            holder[name].weight.copy_(tensor)
    return meta
