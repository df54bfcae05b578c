"""The metric contract: torchmetrics' ``Metric`` with per-clip values and provenance.

Every metric keeps one value per clip (``per_clip()``), so a run can write per-clip rows,
resume, bootstrap confidence intervals and compare methods clip by clip. Class
attributes, never name checks, say what a metric is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torchmetrics import Metric

from fvr_bench.errors import ConfigError
from fvr_bench.metrics.determinism import thread_invariant_kernels


@dataclass(frozen=True)
class Provenance:
    """Everything that can change a metric's number: two numbers with different
    provenance ids never share a leaderboard column."""

    metric_id: str
    implementation: str
    backend: str = "torch"
    backend_version: str = ""
    weights: str | None = None
    weights_sha256: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def provenance_id(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, default=str)
        return f"{self.metric_id}@{hashlib.sha1(payload.encode()).hexdigest()[:8]}"


class VideoMetric(Metric):
    """Base of every video metric.

    ``update(preds, target=None)`` takes ``(B, T, 3, H, W)`` float tensors in [0, 1] and
    appends one value per clip; ``compute()`` is the mean over clips. Subclasses
    implement ``frame_scores`` (``level = "frame"``: ``(B, T)`` values, averaged over
    frames per clip) or ``clip_scores`` (``(B,)``).
    """

    metric_id: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = True
    level: ClassVar[str] = "frame"  # frame | clip | set
    full_state_update: ClassVar[bool] = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")
        # plain attributes, not metric states: what the last update could use (see note_clip)
        self._clip_note: tuple[int, str] | None = None
        self.last_note: tuple[int | None, str] = (None, "")

    def note_clip(self, frames_used: int, note: str) -> None:
        """Called by a subclass while it scores a clip that it could not score on every
        frame: ``frames_used`` frames entered the value, ``note`` says why the others did
        not (e.g. "no face in 3 of 9 frames"). The evaluator writes both into the clip's
        row of ``per_clip.csv`` (``frames``, ``note``)."""
        self._clip_note = (int(frames_used), str(note))

    # -- what subclasses implement ---------------------------------------------------

    def frame_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` → ``(B, T)`` per-frame values."""
        raise NotImplementedError

    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, 3, H, W)`` → ``(B,)`` per-clip values (default: mean of frame scores)."""
        return self.frame_scores(preds, target).mean(dim=1)

    def settings(self) -> dict[str, Any]:
        """Settings that change the number (colour space, crop border, …)."""
        return {}

    def backend_version(self) -> str:
        return torch.__version__

    def weights_file(self) -> tuple[str | None, str | None]:
        """``(file name, sha256)`` of the pretrained file the number depends on, if any."""
        return None, None

    def required_weights(self) -> list[str]:
        """Names (keys of :data:`fvr_bench.weights.REGISTRY`) of the pretrained files this
        metric needs with its current settings. The evaluator checks them all before the
        first clip; a metric loads them lazily (on its first update), never at import."""
        return []

    def missing_weights(self) -> list[str]:
        """The required files that cannot be found (metrics with an explicit path override)."""
        from fvr_bench import weights

        return [name for name in self.required_weights() if weights.find(name) is None]

    # -- set-level metrics (FVD): features per clip, one value for the whole set ------

    def clip_features(self, preds: torch.Tensor, target: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``level = "set"`` only: ``(B, T, 3, H, W)`` → named feature arrays ``(B, D)``
        (e.g. ``{"pred": …, "target": …}``). The evaluator stores them per clip, so a
        resumed run computes the same set value."""
        raise NotImplementedError

    def set_value(self, features: dict[str, torch.Tensor]) -> float:
        """``level = "set"`` only: the metric over all clips from stacked ``(N, D)`` features."""
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------

    def update(self, preds: torch.Tensor, target: torch.Tensor | None = None) -> None:
        if preds.ndim != 5:
            raise ValueError(f"{self.metric_id}: expected (B, T, C, H, W) predictions, got {tuple(preds.shape)}")
        if self.needs_reference:
            if target is None:
                raise ConfigError(f"metric {self.metric_id} needs ground truth; this dataset has none")
            if target.shape != preds.shape:
                raise ValueError(
                    f"{self.metric_id}: prediction {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape"
                )
        self._clip_note = None
        # CPU convolutions through kernels whose results do not follow the thread count
        with thread_invariant_kernels(preds.device):
            scores = self.clip_scores(preds.float(), None if target is None else target.float())
        self.last_note = self._clip_note if self._clip_note is not None else (preds.shape[1], "")
        self.values.append(scores.detach().to(torch.float64).reshape(-1))

    def per_clip(self) -> torch.Tensor:
        """All per-clip values so far, ``(N,)`` float64."""
        values = self.values
        if isinstance(values, torch.Tensor):  # after a DDP sync the list is concatenated
            return values
        return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)

    def latest(self, count: int = 1) -> torch.Tensor:
        """Values of the last ``count`` clips (what the evaluator writes after each batch)."""
        return self.per_clip()[-count:]

    def compute(self) -> torch.Tensor:
        return self.per_clip().mean()

    def provenance(self) -> Provenance:
        cls = type(self)
        return Provenance(
            metric_id=self.metric_id,
            implementation=f"{cls.__module__}.{cls.__qualname__}",
            backend_version=self.backend_version(),
            weights=self.weights_file()[0],
            weights_sha256=self.weights_file()[1],
            settings=self.settings(),
        )
