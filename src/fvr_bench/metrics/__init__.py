"""The metric zoo. Every metric is a :class:`VideoMetric` with provenance."""

from fvr_bench.metrics.base import Provenance, VideoMetric

__all__ = ["Provenance", "VideoMetric"]
