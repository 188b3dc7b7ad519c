"""Registers every harness Gin configurable; the entry points import it (harness/cli.py, the job
body harness.run.launch.run_trial_job, tests/conftest.py, scripts) before Gin parses anything. The
baselines are not here: experiment files import them (`import baselines.plenoxels`)."""

import harness.core.data.load_scene  # noqa: F401  load_scene
import harness.core.data.procedural  # noqa: F401  tiny_scene, street_scene
import harness.run.evaluation  # noqa: F401  Evaluation
import harness.run.settings  # noqa: F401  Sweep, launch
import harness.run.trial  # noqa: F401  Trainer
