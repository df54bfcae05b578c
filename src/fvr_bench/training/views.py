"""Several task views of one training clip (SVFR's multi-task training and its ULR loss).

SVFR trains one model on BFR, colorization, inpainting and their combinations, and its
unified latent regularisation (ULR) contrasts the features of the *same* clip under
different task degradations (positives) against the other clips of the batch (negatives).
:class:`TaskViews` therefore degrades every training sample ``views`` times, each with a
different *combination* — an ordered list of degradation presets, e.g.
``[vividface_bfr, svfr_colorization]`` for BFR + colorization — drawn without replacement
from a weighted list.

Within a combination the presets run in order: the second degrades the first's LQ (8-bit,
as every preset outputs), resized back to the GT size bicubically between presets, so each
preset sees the full-size frame; the last LQ is resized back too, so every view is ``(T, H,
W, 3)``. The task of a view is the union of its presets' tasks (in :data:`TASKS` order) and
the masks of mask presets combine with OR.

Randomness: the choice of combinations comes from ``(seed, key + "/task_views")`` and every
preset call gets its own clip key ``"<key>/view<v>/<j>:<preset>"`` (view ``v``, position
``j``), all through :func:`fvr_bench.degradations.base.root_seed_sequence` (sha256 of the
key, not Python's salted ``hash``): identical in any worker and process, and the views draw
independent parameters.

Stage option (``train.stages.<s>.task_views``, built by :func:`task_views_from_config`)::

    task_views:
      views: 2                  # views per sample (default 2), distinct combinations
      combinations:             # presets applied in order; weight defaults to 1
        - {presets: [vividface_bfr], weight: 1}
        - {presets: [svfr_colorization], weight: 1}
        - {presets: [svfr_inpainting], weight: 1}
        - {presets: [vividface_bfr, svfr_colorization], weight: 0.5}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fvr_bench.degradations import TASKS, Compose, task_parts
from fvr_bench.degradations.base import root_seed_sequence
from fvr_bench.errors import ConfigError, DataError


@dataclass(frozen=True)
class View:
    """One degraded version of a clip.

    lq:      uint8 ``(T, H, W, 3)`` RGB at the GT size.
    mask:    bool ``(T, H, W)``, True where pixels were masked (OR of the combination's
             mask presets), or None when no preset masks.
    tasks:   the view's tasks in :data:`TASKS` order, e.g. ``("bfr", "colorization")``.
    presets: the preset names applied, in order.
    """

    lq: np.ndarray
    mask: np.ndarray | None
    tasks: tuple[str, ...]
    presets: tuple[str, ...] = ()


def multi_hot(tasks: str | Iterable[str]) -> np.ndarray:
    """float32 ``(len(TASKS),)`` with 1 at every task of ``tasks`` (in :data:`TASKS` order).

    ``tasks``: a task (``"bfr"``), a combined task (``"colorization+inpainting"``) or an
    iterable of either.
    """
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    vector = np.zeros(len(TASKS), dtype=np.float32)
    for name in names:
        for part in task_parts(name, "multi_hot"):
            vector[TASKS.index(part)] = 1.0
    return vector


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 ``(T, h, w, 3)`` → ``(T, H, W, 3)`` bicubic (as :class:`ClipWindows` resizes
    LQ frames), clamped to [0, 1]."""
    if frames.shape[1:3] == tuple(size):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    shrink = frames.shape[1] > size[0] or frames.shape[2] > size[1]
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink).clamp(0, 1)
    return x.permute(0, 2, 3, 1).numpy()


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape[1:3] == tuple(size):
        return mask
    x = torch.from_numpy(mask.astype(np.float32))[:, None]
    return (F.interpolate(x, size=size, mode="nearest")[:, 0] > 0.5).numpy()


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


class TaskViews:
    """Draws ``views`` distinct preset combinations per sample and applies them.

    presets:      preset name → :class:`Compose` (every name a combination uses).
    combinations: each a non-empty sequence of preset names, applied in order; no two
                  combinations the same.
    weights:      one non-negative weight per combination (None: all equal); views are
                  drawn without replacement with these probabilities, so at least ``views``
                  combinations need a positive weight.
    views:        views per sample (>= 1; SVFR's contrastive loss needs 2).

    ``task_views(frames, seed, key)`` → ``[View, ...]`` (``views`` of them, see
    :class:`View`); same (frames, seed, key) → identical views.
    """

    def __init__(
        self,
        presets: Mapping[str, Compose],
        combinations: Sequence[Sequence[str]],
        weights: Sequence[float] | None = None,
        views: int = 2,
    ) -> None:
        for name, preset in presets.items():
            if not isinstance(preset, Compose):
                raise ConfigError(f"task_views: preset {name!r} is a {type(preset).__name__}, not a Compose")
        if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
            raise ConfigError(f"task_views: views must be an integer >= 1, got {views!r}")
        if isinstance(combinations, (str, bytes)) or not combinations:
            raise ConfigError("task_views: combinations must be a non-empty list of preset lists")
        combos: list[tuple[str, ...]] = []
        for index, combination in enumerate(combinations):
            if isinstance(combination, str):
                combination = [combination]
            combination = tuple(combination)
            if not combination or not all(isinstance(name, str) for name in combination):
                raise ConfigError(f"task_views: combinations[{index}] must be a non-empty list of preset names, "
                                  f"got {combination!r}")
            missing = [name for name in combination if name not in presets]
            if missing:
                raise ConfigError(f"task_views: combinations[{index}] uses unknown preset(s) {missing}; "
                                  f"known: {sorted(presets)}")
            if combination in combos:
                raise ConfigError(f"task_views: combination {list(combination)} is listed twice")
            combos.append(combination)
        if views > len(combos):
            raise ConfigError(f"task_views: {views} views per sample need at least {views} combinations, "
                              f"got {len(combos)}")
        if weights is None:
            weights = [1.0] * len(combos)
        weights = list(weights)
        if len(weights) != len(combos):
            raise ConfigError(f"task_views: {len(weights)} weights for {len(combos)} combinations")
        for weight in weights:
            if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(float(weight)) or weight < 0:
                raise ConfigError(f"task_views: weights must be finite numbers >= 0, got {weights}")
        positive = sum(1 for weight in weights if weight > 0)
        if positive < views:
            raise ConfigError(f"task_views: {views} distinct views per sample need {views} combinations with a "
                              f"positive weight, got {positive}")
        self.presets = {name: presets[name] for combination in combos for name in combination}
        self.combinations = combos
        self.weights = [float(weight) for weight in weights]
        self.probabilities = np.asarray(self.weights, dtype=np.float64) / sum(self.weights)
        self.views = int(views)
        self.tasks = [tuple(t for t in TASKS if any(t in task_parts(self.presets[name].task) for name in combo))
                      for combo in combos]

    def config(self) -> dict[str, Any]:
        """JSON description (for ``train.json``): views and every combination's presets,
        tasks, weight and preset keys."""
        return {
            "views": self.views,
            "combinations": [
                {"presets": list(combo), "tasks": "+".join(tasks), "weight": weight,
                 "keys": [self.presets[name].key() for name in combo]}
                for combo, tasks, weight in zip(self.combinations, self.tasks, self.weights)
            ],
        }

    def __repr__(self) -> str:
        combos = ", ".join(f"{'>'.join(c)}:{w:g}" for c, w in zip(self.combinations, self.weights))
        return f"TaskViews(views={self.views}, combinations=[{combos}])"

    def choose(self, seed: int, key: str) -> list[int]:
        """Indices of the combinations of sample ``key`` (distinct, in draw order)."""
        rng = np.random.default_rng(root_seed_sequence(seed, f"{key}/task_views"))
        picked = rng.choice(len(self.combinations), size=self.views, replace=False, p=self.probabilities)
        return [int(i) for i in picked]

    def apply(self, frames: np.ndarray, combination: int, seed: int, key: str) -> View:
        """Degrade ``frames`` with combination ``combination``; ``key`` is the view's key
        (each preset gets ``<key>/<position>:<preset>``)."""
        gt = _as_float(frames, key)
        size = gt.shape[1:3]
        current: np.ndarray = gt
        mask: np.ndarray | None = None
        names = self.combinations[combination]
        for position, name in enumerate(names):
            degraded = self.presets[name](current, seed=seed, clip_id=f"{key}/{position}:{name}")
            lq = degraded.lq
            if lq.shape[1:3] != size:
                lq = _to_uint8(_resize(lq.astype(np.float32) / np.float32(255.0), size))
            if degraded.mask is not None:
                step = _resize_mask(degraded.mask, size)
                mask = step if mask is None else mask | step
            current = lq
        return View(lq=np.ascontiguousarray(current), mask=mask, tasks=self.tasks[combination], presets=names)

    def __call__(self, frames: np.ndarray, seed: int, key: str) -> list[View]:
        """``views`` views of ``frames`` (uint8, or float in [0, 1], ``(T, H, W, 3)``)."""
        gt = _as_float(frames, key)
        return [self.apply(gt, combination, seed, f"{key}/view{v}")
                for v, combination in enumerate(self.choose(seed, key))]


def _as_float(frames: Any, key: str) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", type(frames).__name__)
        raise DataError(f"task views of {key!r}: expected a numpy array (T, H, W, 3), got {shape}")
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(frames.dtype, np.floating):
        raise DataError(f"task views of {key!r}: expected uint8 or float frames, got dtype {frames.dtype}")
    return frames.astype(np.float32, copy=False)


def _load_preset(name: str) -> Compose:
    from omegaconf import OmegaConf

    from fvr_bench.config import CONF_DIR
    from fvr_bench.degradations import build_degradation

    path = CONF_DIR / "degradation" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"task_views: degradation preset {name!r} not found ({path})")
    return build_degradation(OmegaConf.load(path))


def task_views_from_config(node: Any) -> TaskViews:
    """A :class:`TaskViews` from a stage's ``task_views`` mapping (see the module docstring):
    ``views`` (default 2) and ``combinations``, each ``{presets: [name, ...], weight: w}``
    (weight default 1; a bare list of names or one name is a combination of weight 1).
    Presets load from ``conf/degradation/<name>.yaml``."""
    if node is None or not hasattr(node, "items"):
        raise ConfigError(f"task_views must be a mapping with views and combinations, got {node!r}")
    unknown = sorted(set(map(str, node.keys())) - {"views", "combinations"})
    if unknown:
        raise ConfigError(f"task_views: unknown option(s) {unknown}; expected views and combinations")
    views = node.get("views", 2)
    entries = node.get("combinations")
    if entries is None or isinstance(entries, (str, bytes)) or hasattr(entries, "items") or not len(entries):
        raise ConfigError("task_views: combinations must be a non-empty list of {presets: [...], weight: w}")
    combinations: list[list[str]] = []
    weights: list[Any] = []
    for index, entry in enumerate(entries):
        if hasattr(entry, "items"):
            extra = sorted(set(map(str, entry.keys())) - {"presets", "weight"})
            if extra:
                raise ConfigError(f"task_views: combinations[{index}] has unknown key(s) {extra}; "
                                  "expected presets and weight")
            presets, weight = entry.get("presets"), entry.get("weight", 1.0)
        else:
            presets, weight = entry, 1.0
        if isinstance(presets, str):
            presets = [presets]
        if presets is None or hasattr(presets, "items") or not all(isinstance(p, str) for p in presets):
            raise ConfigError(f"task_views: combinations[{index}].presets must be a list of preset names, got {presets!r}")
        combinations.append([str(p) for p in presets])
        weights.append(weight)
    loaded = {name: _load_preset(name) for combination in combinations for name in combination}
    return TaskViews(loaded, combinations, weights, views=views)
