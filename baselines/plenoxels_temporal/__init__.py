"""Temporal Plenoxels (issue 29, in progress): Plenoxels over the time steps of a dynamic scene, with the
design's temporal consistency losses (`losses.py`: feature-temporal and flow consistency). Its own package,
so that its configurables enter the ids of temporal trials only, not those of static Plenoxels trials
(harness/run/identity.py: a method's package's configurables are part of its trials' ids)."""
