"""The restorer contract.

``Restorer.restore(lq, *, task, reference, mask, out_size, clip_ids)`` maps an LQ batch
``(B, T, 3, h, w)`` float32 in [0, 1] to a restored batch ``(B, T, 3, H, W)`` in [0, 1].
How a method handles long videos (windows, blending, noise sharing) lives behind
``restore``: the evaluator never asks what kind of method it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from fvr_bench.degradations.base import TASKS  # noqa: F401  (re-exported: the tasks a restorer may get)
from fvr_bench.errors import ConfigError


@runtime_checkable
class Restorer(Protocol):
    name: str

    def restore(
        self,
        lq: torch.Tensor,
        *,
        task: str = "bfr",
        reference: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        out_size: tuple[int, int] | None = None,
        clip_ids: list[str] | None = None,
    ) -> torch.Tensor:
        """lq ``(B, T, 3, h, w)`` in [0, 1] → ``(B, T, 3, H, W)`` in [0, 1].

        task:      one of ``TASKS``; methods that do not support a task raise ConfigError.
        reference: ``(B, 3, Hr, Wr)`` reference face (identity-guided methods) or None.
        mask:      ``(B, T, 1, h, w)`` bool, True where pixels are missing (inpainting).
        out_size:  the ``(H, W)`` the output must have (the ground-truth size); None means
                   the method's native scale.
        clip_ids:  ids of the clips in the batch (for restorers that read saved outputs).
        """
        ...


class NetworkRestorer(nn.Module):
    """Base of the reimplemented methods' restorers: a plain ``nn.Module`` whose networks are
    injected, with ``restore`` for inference (no Lightning, no losses).

    ``size_multiple`` says what spatial size the networks need — :func:`pad_to_multiple` and
    :func:`crop_to` keep any input size working. :meth:`export_config` is the small JSON that
    an export (``restorer.safetensors`` + ``restorer.json``) records next to the weights.
    """

    name: str = "restorer"
    size_multiple: int = 1

    def restore(self, lq: torch.Tensor, **kwargs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def export_config(self) -> dict[str, Any]:
        """What an export records next to the weights (the architecture options)."""
        return {"method": self.name}


class TrainingModule(L.LightningModule):
    """The contract between ``python -m fvr_bench train`` and a method's training module.

    * ``restorer``: the :class:`NetworkRestorer` being trained; its ``restorer.*`` weights are
      what the stage exports (``<stage dir>/restorer.safetensors``) and what ``run`` loads.
    * :meth:`init_from_previous_stage` receives the previous stage's weights (EMA when kept)
      and decides what to copy and freeze.
    * :meth:`prepare` runs once before fitting (e.g. pre-extracting latents); default: nothing.

    Everything a stage changes (its loss objects, what it trains) comes from
    ``train.stages.<s>.module`` in ``conf/method/<m>.yaml``, instantiated by Hydra.
    """

    restorer: NetworkRestorer

    def init_from_previous_stage(self, state_dict: Mapping[str, torch.Tensor], previous_stage: str) -> None:
        raise ConfigError(f"{type(self).__name__} cannot start from stage {previous_stage}'s weights")

    def step_generator(self, seed: int) -> torch.Generator:
        """A CPU generator for the random draws of the current optimisation step, seeded by
        (seed, step, rank): a resumed run draws what the uninterrupted one would have, and every
        rank draws its own."""
        import numpy as np

        rank = self.global_rank if self._trainer is not None else 0
        state = np.random.SeedSequence([int(seed), int(self.global_step), int(rank)]).generate_state(1)[0]
        return torch.Generator("cpu").manual_seed(int(state))

    def prepare(self, dataloader, cache_dir: Path) -> None:
        """Called by ``train`` before fitting when the stage sets ``pre_extract: true``."""
        return


def plain(value: Any) -> Any:
    """DictConfig / ListConfig (what Hydra passes to a ``_target_``) → plain dicts and lists."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def known_options(settings_class: type, mapping: Any, what: str) -> dict[str, Any]:
    """``mapping`` (a DictConfig, a dict or None) as a plain dict whose keys are all fields of the
    dataclass ``settings_class``; a key that is not — a typo in a config — is a
    :class:`ConfigError` naming ``what`` (e.g. ``"svfr method.restore"``) and the known fields."""
    values = dict(plain(mapping) or {})
    known = {f.name for f in dataclasses.fields(settings_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{what}: unknown option(s) {unknown}; known: {', '.join(sorted(known))}")
    return values


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype, option: str) -> torch.dtype:
    """``"bfloat16"`` (or a ``torch.dtype``) → the dtype; anything else names ``option``."""
    if isinstance(name, torch.dtype):
        return name
    dtype = DTYPES.get(str(name).removeprefix("torch."))
    if dtype is None:
        raise ConfigError(f"{option}={name!r}: one of {', '.join(DTYPES)}")
    return dtype


def resize_video(frames: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize every frame of ``(B, T, C, h, w)`` to ``(B, T, C, *size)``, clamped to [0, 1].

    Bicubic uses antialiasing when shrinking, like PIL/MATLAB, so downscaled frames do
    not alias.
    """
    b, t, c, h, w = frames.shape
    if (h, w) == tuple(size):
        return frames
    flat = frames.reshape(b * t, c, h, w)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    if mode in ("bilinear", "bicubic") and (size[0] < h or size[1] < w):
        kwargs["antialias"] = True
    out = F.interpolate(flat, size=tuple(size), mode=mode, **kwargs)
    return out.clamp(0.0, 1.0).reshape(b, t, c, *size)


def pad_to_multiple(frames: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the last two dims of ``(..., H, W)`` up to a multiple; returns the
    padded tensor and the original ``(H, W)`` for :func:`crop_to`."""
    h, w = frames.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return frames, (h, w)
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    padded = F.pad(flat, (0, pad_w, 0, pad_h), mode=mode)
    return padded.reshape(*lead, *padded.shape[-3:]), (h, w)


def crop_to(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop ``(..., H', W')`` back to its top-left ``(H, W)``."""
    return frames[..., : size[0], : size[1]]


def blend_windows(
    video: torch.Tensor,
    restore_window: Callable[[torch.Tensor], torch.Tensor],
    spans: Sequence[tuple[int, int]],
    weights: Sequence[torch.Tensor],
    time_dim: int,
) -> torch.Tensor:
    """Run ``restore_window`` on each ``[start, stop)`` span of ``video`` along ``time_dim`` and
    blend: a weighted sum of the window outputs (``weights``: one float64 per-frame vector per
    span), divided by the summed weight of every frame. The output has ``video``'s frame count
    along ``time_dim``; the other dims are whatever ``restore_window`` returns. Where spans and
    weights come from is the method's policy (see the methods' ``windows`` modules)."""
    total = video.shape[time_dim]
    output = weight_sum = None
    for (start, stop), weight in zip(spans, weights):
        restored = restore_window(video.narrow(time_dim, start, stop - start))
        if output is None:
            shape = list(restored.shape)
            shape[time_dim] = total
            output = restored.new_zeros(shape)
            weight_sum = torch.zeros(total, dtype=torch.float64)
        along_time = [1] * restored.ndim
        along_time[time_dim] = -1
        output.narrow(time_dim, start, stop - start).add_(restored * weight.to(restored).view(along_time))
        weight_sum[start:stop] += weight
    along_time = [1] * output.ndim
    along_time[time_dim] = -1
    return output / weight_sum.to(output).view(along_time)
