"""Experiment harness for radiance-field baselines: Gin config → sweep → trials → records → reports."""

__version__ = "0.1.0"
