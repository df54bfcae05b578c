"""Bootstrap statistics over clips for the leaderboard.

Both intervals are percentile bootstraps with a fresh ``numpy.random.default_rng(seed)``
per (run, metric) cell, so a cell's interval does not depend on which other runs or
metrics are in the table. The resampling is exactly::

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = values[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])     # level 0.95

Non-finite per-clip values (infinite PSNR of identical frames, NaN of set-level
metrics) are left out, as in ``summary.csv``'s mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_N_BOOT = 2000


def _percentiles(level: float) -> list[float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    tail = (1.0 - level) / 2.0 * 100.0
    return [tail, 100.0 - tail]


def finite(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def bootstrap_means(values: np.ndarray, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> np.ndarray:
    """``n_boot`` means of ``values`` resampled with replacement (``values`` already finite)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def bootstrap_mean_ci(
    values: Any, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over clips; ``(nan, nan)`` with no finite
    value. With one clip the interval collapses to that value."""
    values = finite(values)
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(bootstrap_means(values, n_boot, seed), _percentiles(level))
    return float(lo), float(hi)


def paired_comparison(
    method: dict[str, float],
    baseline: dict[str, float],
    higher_is_better: bool,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Compare two runs clip by clip (``clip id → value`` of one metric, one provenance).

    Only clips where both values are finite count. Returns ``n_paired``; ``diff`` (mean of
    method − baseline) with its paired bootstrap interval ``diff_ci_low/high``; ``gain``
    (the same difference signed so that positive = method better) with ``gain_ci_low/high``;
    ``win_rate``: the fraction of clips where the method is better, ties counted half.
    """
    clips = sorted(c for c in set(method) & set(baseline) if np.isfinite(method[c]) and np.isfinite(baseline[c]))
    nan = float("nan")
    result = {"n_paired": len(clips), "diff": nan, "diff_ci_low": nan, "diff_ci_high": nan,
              "gain": nan, "gain_ci_low": nan, "gain_ci_high": nan, "win_rate": nan}
    if not clips:
        return result
    diffs = np.array([method[c] - baseline[c] for c in clips], dtype=np.float64)
    sign = 1.0 if higher_is_better else -1.0
    lo, hi = np.percentile(bootstrap_means(diffs, n_boot, seed), _percentiles(level))
    gains = sign * diffs
    result.update(
        diff=float(diffs.mean()),
        diff_ci_low=float(lo),
        diff_ci_high=float(hi),
        gain=float(gains.mean()),
        gain_ci_low=float(min(sign * lo, sign * hi)),
        gain_ci_high=float(max(sign * lo, sign * hi)),
        win_rate=float(np.mean((gains > 0) + 0.5 * (gains == 0))),
    )
    return result
