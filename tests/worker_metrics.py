"""Metrics for ``test_scoring_worker.py`` that the spawned metric worker imports by
``_target_`` (this folder is on the worker's ``sys.path``, as it is on pytest's); not a test itself."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch

from fvr_bench.metrics.base import ClipMetric


class MeanBrightness(ClipMetric):
    """Mean pixel value per clip, computed on the CPU. While the file ``armed`` exists, call
    ``fail_on_call`` (1-based, per process) raises instead."""

    metric_id: ClassVar[str] = "mean_brightness"
    needs_reference: ClassVar[bool] = False
    level: ClassVar[str] = "clip"

    def __init__(self, fail_on_call: int | None = None, armed: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_on_call, self.armed, self.calls = fail_on_call, armed, 0

    def cpu_only(self) -> bool:
        return True

    def clip_scores(self, preds: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on_call and self.armed is not None and os.path.exists(self.armed):
            raise RuntimeError(f"mean_brightness: failing on call {self.calls} as configured")
        return preds.double().mean(dim=(1, 2, 3, 4))
