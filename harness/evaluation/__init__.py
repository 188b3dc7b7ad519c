"""Implementation of the evaluation protocol; import the public API from `harness.metrics`."""
