"""The metric zoo. Every metric is a :class:`ClipMetric` (one value per clip) or a
:class:`SetMetric` (one value per set of clips, FVD), with provenance; metrics that need
pretrained files also derive from :class:`NetworkMetric` (see :mod:`fvr_bench.metrics.base`)."""

from fvr_bench.metrics.base import ClipMetric, NetworkMetric, PretrainedFiles, Provenance, SetMetric, VideoMetric

__all__ = ["ClipMetric", "NetworkMetric", "PretrainedFiles", "Provenance", "SetMetric", "VideoMetric"]
