"""Temporal Plenoxels (issue 29): Plenoxels over the time steps of a dynamic scene, with the design's temporal
consistency losses (`losses.py`: feature-temporal and flow consistency). Importing registers the Gin
configurables `TemporalPlenoxels`, `FeatureTemporal` and `FlowConsistency`. Its own package, so that its
configurables enter the ids of temporal trials only, not those of static Plenoxels trials
(harness/run/identity.py: a method's package's configurables are part of its trials' ids)."""

from baselines.plenoxels_temporal.losses import FeatureTemporal, FlowConsistency
from baselines.plenoxels_temporal.method import TemporalPlenoxels

__all__ = ["FeatureTemporal", "FlowConsistency", "TemporalPlenoxels"]
