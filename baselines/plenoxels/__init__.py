"""Plenoxels baseline: importing registers the Gin configurables `Plenoxels` and its loss terms
`Reconstruction`, `TVLoss`, `Sparsity`, `Smoothness`."""

from baselines.plenoxels.losses import Reconstruction, Smoothness, Sparsity, TVLoss
from baselines.plenoxels.method import Plenoxels

__all__ = ["Plenoxels", "Reconstruction", "Smoothness", "Sparsity", "TVLoss"]
