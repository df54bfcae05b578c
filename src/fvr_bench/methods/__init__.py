"""Restorers: the reimplemented methods and the baselines."""

from fvr_bench.methods.base import Restorer, RestorerModule

__all__ = ["Restorer", "RestorerModule"]
