"""Import every module that registers a harness Gin configurable (not the baselines:
experiment files import those with `import baselines.<name>`)."""

import harness.data.load  # noqa: F401  load_scene
import harness.data.procedural  # noqa: F401  tiny_scene, street_scene
import harness.evaluate  # noqa: F401  Evaluation
import harness.launch  # noqa: F401  launch
import harness.sweep  # noqa: F401  Sweep
import harness.trial  # noqa: F401  Trainer
