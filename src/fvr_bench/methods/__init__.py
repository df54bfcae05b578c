"""Restorers: the reimplemented methods and the baselines."""

from fvr_bench.methods.base import NetworkRestorer, Restorer, TrainingModule

__all__ = ["NetworkRestorer", "Restorer", "TrainingModule"]
