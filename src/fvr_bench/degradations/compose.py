"""A degradation preset: an ordered list of ops, seeded per (seed, clip id).

``conf/degradation/<name>.yaml`` instantiates a :class:`Compose`::

    deg = hydra.utils.instantiate(cfg.degradation)
    out = deg(gt, seed=0, clip_id="clip_0001")   # gt: float32 (T, H, W, 3) in [0, 1]
    out.lq, out.mask, out.params                 # see DegradedClip
    deg.name, deg.task, deg.key()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fvr_bench.errors import ConfigError, DataError

from .base import (
    DEGRADATION_VERSION,
    TASKS,
    Context,
    DegradedClip,
    Op,
    as_op,
    child_seed,
    jsonable,
    root_seed_sequence,
    stable_hash,
)


def task_parts(task: str, owner: str = "task") -> tuple[str, ...]:
    """The parts of a task, in :data:`TASKS` order: ``"inpainting+colorization"`` →
    ``("colorization", "inpainting")``; a single task gives a 1-tuple.

    A combined task is several :data:`TASKS` joined by ``+``, each at most once. Anything
    else (an unknown or empty part, a repeated part, a non-string) is a ConfigError that
    names ``owner``.
    """
    if not isinstance(task, str) or not task:
        raise ConfigError(f"{owner}: {task!r} is not one of {', '.join(map(repr, TASKS))} (or several joined by '+')")
    parts = [part.strip() for part in task.split("+")]
    for part in parts:
        if part not in TASKS:
            raise ConfigError(
                f"{owner}: {part!r} in {task!r} is not one of {', '.join(map(repr, TASKS))} "
                "(a combined task joins several with '+', e.g. 'colorization+inpainting')"
            )
    repeated = sorted({part for part in parts if parts.count(part) > 1})
    if repeated:
        raise ConfigError(f"{owner}: {task!r} names {', '.join(map(repr, repeated))} more than once")
    return tuple(t for t in TASKS if t in parts)


class Compose:
    """Run ``ops`` in order on a clip; parameters drawn once per video unless ``per_frame``.

    name:        preset name (the yaml file name), part of the cache key.
    task:        bfr | colorization | inpainting | deflicker (what restorers are asked to do),
                 or several of them joined by ``+`` for a combined degradation (e.g.
                 ``colorization+inpainting``: each part once; stored in :data:`TASKS` order,
                 see :func:`task_parts`).
    ops:         the ops (Hydra instantiates the nested ``_target_`` nodes).
    per_frame:   draw every op's parameters for every frame independently (BFVR-STC
                 Table 6 ablation). Ops pin themselves with their own ``per_frame``.
    shared_rng:  BFVR-STC compat. Its official ``degrade_img`` restores one saved NumPy
                 RNG state before the blur, the downscale and the noise draws, so σ, r and
                 δ all come from the same uniform number (perfectly correlated strengths).
                 True gives every op the same seed, which reproduces that correlation
                 (every op's first uniform draw is the same); False (default) gives every
                 op its own independent stream.
    description: free text for listings; not part of the cache key (it changes no pixel).

    Randomness: one ``np.random.SeedSequence`` from ``(seed, sha256(clip_id))``, one child
    per op (by position), so the LQ clip is bit-identical across processes (independent
    of Python's hash salt, worker order and thread counts). Across machines it is
    identical for the same library builds and CPU instruction sets: the codec is made
    CPU-independent (see :mod:`.codec`), but OpenCV's float blur/resize kernels are
    dispatched per CPU (AVX2 / AVX-512 / NEON) and may round a rare pixel differently —
    use the LQ cache to share one set of LQ clips between machines.
    """

    def __init__(
        self,
        name: str,
        task: str = "bfr",
        ops: Sequence[Any] = (),
        per_frame: bool = False,
        shared_rng: bool = False,
        description: str = "",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"degradation name must be a non-empty string, got {name!r}")
        self.name = name
        self.task = "+".join(task_parts(task, f"degradation {name!r}: task"))
        if not isinstance(per_frame, bool):
            raise ConfigError(f"degradation {name!r}: per_frame must be true or false, got {per_frame!r}")
        if not isinstance(shared_rng, bool):
            raise ConfigError(f"degradation {name!r}: shared_rng must be true or false, got {shared_rng!r}")
        if ops is None:
            ops = ()
        if isinstance(ops, (str, bytes)) or hasattr(ops, "items"):
            raise ConfigError(f"degradation {name!r}: ops must be a list of ops, got {ops!r}")
        self.ops: list[Op] = [as_op(op, f"degradation {name!r}: ops[{i}]") for i, op in enumerate(ops)]
        self.per_frame = per_frame
        self.shared_rng = shared_rng
        self.description = str(description or "")

    # ------------------------------------------------------------------ identity

    def config(self) -> dict[str, Any]:
        """Everything that determines the output pixels, as plain JSON types."""
        return {
            "version": DEGRADATION_VERSION,
            "name": self.name,
            "task": self.task,
            "per_frame": self.per_frame,
            "shared_rng": self.shared_rng,
            "ops": [op.config() for op in self.ops],
        }

    def key(self) -> str:
        """16-hex-digit hash of :meth:`config`: stable across processes, used as cache key.

        Ranges are normalised to floats (``[1, 4]`` and ``[1.0, 4.0]`` give one key) and
        :data:`DEGRADATION_VERSION` is included, so a code change that alters outputs
        invalidates old cache entries.
        """
        return stable_hash(self.config())

    def __repr__(self) -> str:
        ops = ", ".join(map(repr, self.ops))
        return f"Compose(name={self.name!r}, task={self.task!r}, per_frame={self.per_frame}, ops=[{ops}])"

    # ------------------------------------------------------------------ running

    def __call__(self, gt: np.ndarray, seed: int = 0, clip_id: str = "") -> DegradedClip:
        """Degrade one clip.

        gt: float ``(T, H, W, 3)`` RGB in [0, 1] (uint8 accepted and scaled by 1/255).
        Returns a :class:`DegradedClip` (uint8 ``(T, h, w, 3)`` lq, optional bool
        ``(T, h, w)`` mask, JSON-serialisable params). Same (seed, clip_id, config) →
        identical bytes.
        """
        frames = _check_gt(gt, clip_id)
        root = root_seed_sequence(seed, clip_id)
        ctx = Context(input_size=frames[0].shape[:2], n_frames=len(frames), per_frame=self.per_frame)
        records = []
        for index, op in enumerate(self.ops):
            frames, params = op.run(frames, child_seed(root, 0 if self.shared_rng else index), ctx)
            records.append({"op": type(op).__name__, **params})
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise ConfigError(
                f"degradation {self.name!r}: frames ended with different sizes {sorted(shapes)} (per_frame resize); "
                "add a Resize op after the resize, or pin it with per_frame: false"
            )
        lq = (np.clip(np.stack(frames), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        mask = ctx.mask
        if mask is not None and mask.shape != lq.shape[:3]:
            raise ConfigError(
                f"degradation {self.name!r}: the mask is {mask.shape[1]}x{mask.shape[2]} but the LQ clip "
                f"{lq.shape[1]}x{lq.shape[2]}; put the mask op after every resize"
            )
        params = jsonable(
            {"preset": self.name, "key": self.key(), "seed": int(seed), "clip_id": clip_id, "per_frame": self.per_frame, "ops": records}
        )
        return DegradedClip(lq=lq, mask=None if mask is None else mask.astype(np.bool_), params=params)


def _check_gt(gt: Any, clip_id: str) -> list[np.ndarray]:
    where = f"clip {clip_id!r}" if clip_id else "clip"
    if not isinstance(gt, np.ndarray):
        raise DataError(f"{where}: degradations take a numpy array (T, H, W, 3), got {type(gt).__name__}")
    if gt.ndim != 4 or gt.shape[-1] != 3 or min(gt.shape[:3]) < 1:
        raise DataError(f"{where}: expected frames shaped (T, H, W, 3), got {gt.shape}")
    if gt.dtype == np.uint8:
        gt = gt.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(gt.dtype, np.floating):
        gt = gt.astype(np.float32, copy=False)
        if not np.isfinite(gt).all():
            raise DataError(f"{where}: ground-truth frames contain NaN or Inf")
        gt = np.clip(gt, 0.0, 1.0)
    else:
        raise DataError(f"{where}: expected float32 in [0, 1] or uint8 frames, got dtype {gt.dtype}")
    return [np.ascontiguousarray(frame) for frame in gt]


def build_degradation(cfg: Any) -> Compose:
    """Instantiate a degradation config (errors unwrapped, see :func:`fvr_bench.config.build`)
    and check that it builds a :class:`Compose`."""
    from fvr_bench.config import build

    built = build(cfg, "degradation")
    if not isinstance(built, Compose):
        raise ConfigError(
            f"degradation config must have _target_: fvr_bench.degradations.Compose, got {type(built).__name__}"
        )
    return built
