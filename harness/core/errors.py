"""The project's own error types.

Every error a user can cause (bad config, bad data, unknown experiment) is a
`HarnessError` with a one-line message naming the file, key or value at fault;
the CLI prints that line instead of a traceback.
"""


class HarnessError(Exception):
    """Base class: an error whose message is meant for the user, in one line."""


class ConfigError(HarnessError):
    """A Gin file, binding or experiment that cannot be used."""


class DataError(HarnessError):
    """A scene folder, image or camera file that cannot be used."""


class RecordError(HarnessError):
    """A trial record or checkpoint that cannot be read or written."""


class MetricError(HarnessError):
    """Images that cannot be scored (shape, range, NaN, missing weights)."""


class TrialDiverged(HarnessError):
    """Training produced NaN/Inf; the trial stops as `diverged`."""

    step: int | None = None  # the iteration (as in train.jsonl and step_N.pt) at which it was detected
    diagnosis: dict | None = None  # which parameter group went first (harness/run/gradients.py), when watched
