"""Shared pieces of the degradation ops: the op base class, the run context, seeding,
parameter-range validation and the result type.

Frames inside a pipeline are a Python ``list`` of float32 ``(H, W, 3)`` RGB arrays in
[0, 1] (one per frame). A list rather than one ``(T, H, W, 3)`` array because with
``per_frame: true`` a resize op may give every frame its own size until a later op
resizes them back; :class:`~fvr_bench.degradations.Compose` stacks them at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fvr_bench.errors import ConfigError

#: Bumped whenever an op changes what it computes for an unchanged config, so that
#: :meth:`Compose.key` — and with it every cached LQ clip — changes too.
DEGRADATION_VERSION = 1

TASKS = ("bfr", "colorization", "inpainting", "deflicker")


@dataclass
class DegradedClip:
    """The output of a degradation pipeline for one clip.

    lq:     uint8 ``(T, h, w, 3)`` RGB, the low-quality input every method receives.
    mask:   bool ``(T, h, w)``, True where pixels were masked (inpainting), else None.
    params: the drawn parameters, JSON-serialisable (floats, ints, bools, str, lists,
            dicts), for logging and for the LQ cache.
    """

    lq: np.ndarray
    mask: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What an op may need to know beyond the frames it receives.

    input_size: ``(H, W)`` of the ground truth, for ops that resize back to it.
    n_frames:   T of the clip.
    per_frame:  the pipeline-wide default of :class:`Compose` (an op may override it).
    mask:       bool ``(T, H, W)`` once a mask op has run, else None.
    """

    input_size: tuple[int, int]
    n_frames: int
    per_frame: bool = False
    mask: np.ndarray | None = None


# --------------------------------------------------------------------------- seeding


def clip_hash(clip_id: str) -> int:
    """A stable 128-bit integer for a clip id.

    sha256 rather than Python's ``hash()``: ``hash(str)`` is salted per process
    (PYTHONHASHSEED), so it would give every worker a different LQ clip.
    """
    return int.from_bytes(hashlib.sha256(clip_id.encode("utf-8")).digest()[:16], "big")


def root_seed_sequence(seed: int, clip_id: str) -> np.random.SeedSequence:
    """The seed sequence all draws for ``(seed, clip_id)`` derive from."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"degradation seed must be a non-negative integer, got {seed!r}")
    if not isinstance(clip_id, str):
        raise ConfigError(f"clip_id must be a string, got {type(clip_id).__name__}")
    return np.random.SeedSequence([int(seed), clip_hash(clip_id)])


def child_seed(parent: np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    """The ``index``-th child of ``parent``, as a pure function.

    ``SeedSequence.spawn`` is stateful (it counts children already spawned); building the
    child from the spawn key directly gives the same child however often it is asked for.
    Every op gets its own child so that changing one op's draws (e.g. a larger noise
    pattern) never shifts another op's parameters.
    """
    return np.random.SeedSequence(parent.entropy, spawn_key=tuple(parent.spawn_key) + (int(index),))


# --------------------------------------------------------------------------- op base


class Op:
    """One degradation step.

    Subclasses implement :meth:`draw` (parameters for one video, or for one frame when
    run per frame) and :meth:`apply` (frames, params → frames). :meth:`run` ties them
    together and honours ``per_frame``; ops that cannot be split frame by frame (the video
    codec, the flicker, masks) override :meth:`run`.

    ``per_frame``: None follows the pipeline (:class:`Compose`), True/False pins this op.
    """

    def __init__(self, per_frame: bool | None = None) -> None:
        if per_frame is not None and not isinstance(per_frame, bool):
            raise ConfigError(f"{type(self).__name__}.per_frame must be true, false or null, got {per_frame!r}")
        self.per_frame = per_frame
        self._config: dict[str, Any] = {"per_frame": per_frame}

    # -- configuration (what the cache key is made of)

    def _remember(self, **kwargs: Any) -> None:
        self._config.update(kwargs)

    def config(self) -> dict[str, Any]:
        """The op's normalised constructor arguments, plus its class name under ``op``."""
        return {"op": type(self).__name__, **_jsonable(self._config)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items() if k != "per_frame" or v is not None)
        return f"{type(self).__name__}({args})"

    # -- running

    def draw(self, rng: np.random.Generator, ctx: Context) -> dict[str, Any]:
        return {}

    def apply(self, frames: list[np.ndarray], params: dict[str, Any], ctx: Context) -> list[np.ndarray]:
        raise NotImplementedError

    def resolve_per_frame(self, ctx: Context) -> bool:
        return ctx.per_frame if self.per_frame is None else self.per_frame

    def run(
        self, frames: list[np.ndarray], seed: np.random.SeedSequence, ctx: Context
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Draw parameters and apply them; returns the new frames and the drawn params.

        Per video: one draw for the whole clip. Per frame: one draw per frame, in frame
        order from the same generator, each applied to its own frame.
        """
        rng = np.random.default_rng(seed)
        if not self.resolve_per_frame(ctx):
            params = self.draw(rng, ctx)
            return self.apply(frames, params, ctx), params
        drawn = [self.draw(rng, ctx) for _ in frames]
        out = [self.apply([frame], params, ctx)[0] for frame, params in zip(frames, drawn)]
        return out, {"per_frame": drawn}


# --------------------------------------------------------------------------- validation


def as_range(
    value: Any,
    owner: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
) -> tuple[float, float]:
    """Normalise a scalar or ``[lo, hi]`` into a checked ``(lo, hi)`` tuple.

    ``owner`` is ``"Op.field"`` for the message. ``low``/``high`` are the admissible
    bounds (``low_open``: the value must be strictly above ``low``).
    """
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ConfigError(f"{owner}: expected a number or a [low, high] range, got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        pair = [value, value]
    elif isinstance(value, Sequence) or (hasattr(value, "__iter__") and not hasattr(value, "items")):
        pair = list(value)
        if len(pair) != 2:
            raise ConfigError(f"{owner}: a range is [low, high] (two numbers), got {pair!r}")
    else:
        raise ConfigError(f"{owner}: expected a number or a [low, high] range, got {value!r}")
    for item in pair:
        if isinstance(item, bool) or not isinstance(item, (int, float, np.integer, np.floating)):
            raise ConfigError(f"{owner}: range entries must be numbers, got {pair!r}")
        if not math.isfinite(float(item)):
            raise ConfigError(f"{owner}: range entries must be finite, got {pair!r}")
        if integer and float(item) != int(item):
            raise ConfigError(f"{owner}: range entries must be integers, got {pair!r}")
    lo, hi = (int(pair[0]), int(pair[1])) if integer else (float(pair[0]), float(pair[1]))
    if lo > hi:
        raise ConfigError(f"{owner}: range [{pair[0]}, {pair[1]}] is reversed (low > high); write it as [{pair[1]}, {pair[0]}]")
    if low is not None and (lo < low or (low_open and lo <= low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ConfigError(f"{owner}: values must be {bound}, got range [{pair[0]}, {pair[1]}]")
    if high is not None and hi > high:
        raise ConfigError(f"{owner}: values must be <= {high}, got range [{pair[0]}, {pair[1]}]")
    return lo, hi


def uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A float uniform in ``[lo, hi)``; a fixed value when lo == hi (no draw wasted)."""
    lo, hi = bounds
    return float(lo) if lo == hi else float(rng.uniform(lo, hi))


def integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """An integer uniform in ``[lo, hi]``, both ends included."""
    lo, hi = bounds
    return int(lo) if lo == hi else int(rng.integers(lo, hi, endpoint=True))


def check_choice(value: Any, owner: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{owner}: {value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def _jsonable(value: Any) -> Any:
    """numpy scalars, tuples, ListConfig … → plain JSON types (floats stay floats)."""
    if isinstance(value, dict) or hasattr(value, "items") and not isinstance(value, (str, bytes)):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        if isinstance(value, np.ndarray):
            return _jsonable(value.tolist())
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Op):
        return value.config()
    raise TypeError(f"cannot serialise {type(value).__name__} {value!r}")


def jsonable(value: Any) -> Any:
    """Public alias of the JSON normaliser (used for params and cache manifests)."""
    return _jsonable(value)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex sha256 of the canonical JSON of ``obj`` (sorted keys), cut to ``length``."""
    text = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def as_op(obj: Any, owner: str) -> Op:
    """An op object, instantiating a ``{_target_: ...}`` mapping if Hydra left one.

    Hydra instantiates nested ``_target_`` nodes itself (recursive instantiation is the
    default); this covers ``_recursive_: false`` and plain-dict construction in code.
    """
    if isinstance(obj, Op):
        return obj
    if hasattr(obj, "items") and "_target_" in obj:
        from hydra.utils import instantiate

        try:
            built = instantiate(obj)
        except Exception as error:  # Hydra wraps the op's own ConfigError
            cause = error.__cause__ if isinstance(error.__cause__, ConfigError) else error
            raise ConfigError(f"{owner}: cannot build {obj.get('_target_')}: {cause}") from error
        if isinstance(built, Op):
            return built
        obj = built
    raise ConfigError(
        f"{owner}: expected a degradation op (e.g. {{_target_: fvr_bench.degradations.GaussianBlur, sigma: [1, 3]}}), "
        f"got {type(obj).__name__} {obj!r}"
    )
