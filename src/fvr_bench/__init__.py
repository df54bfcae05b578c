"""fvr_bench: a benchmark suite for video face restoration."""

__version__ = "0.2.0"
