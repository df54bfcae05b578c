"""Datasets: frame folders and video files, the embedded sample set, face crops."""

from fvr_bench.data.base import ClipSample, VideoDataset

__all__ = ["ClipSample", "VideoDataset"]
