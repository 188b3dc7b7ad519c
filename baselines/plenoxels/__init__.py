"""Plenoxels baseline: importing registers the Gin configurables `Plenoxels` and `TVLoss`."""

from baselines.plenoxels.losses import TVLoss
from baselines.plenoxels.method import Plenoxels

__all__ = ["Plenoxels", "TVLoss"]
