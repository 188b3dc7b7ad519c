"""Registers every harness Gin configurable; the entry points import it (harness/cli.py, the job
body harness.run.launch.run_trial_job, tests/conftest.py, scripts) before Gin parses anything. The
baselines are not here: experiment files import them (`import baselines.plenoxels`)."""

import harness.core.data.load_scene  # load_scene
import harness.core.data.procedural  # tiny_scene, street_scene
import harness.run.evaluation  # Evaluation
import harness.run.settings  # Sweep, launch
import harness.run.tracking  # Tracker
import harness.run.trial  # noqa: F401  Trainer
