"""Reliability 2: NaN/Inf in the loss or in the parameters stops a trial as `diverged`, with the
iteration and the last good checkpoint recorded and kept; the rest of the sweep goes on."""

import json

import pytest

from harness.run import checkpoints
from tests.conftest import harness
from tests.reliability_tools import Trial, check_intact, write_experiment


@pytest.mark.parametrize("where, extra, at, message", [
    ("loss", "ToyColour.diverge_at = 13\n", 14, "non-finite loss at step 14: {'loss': nan}"),
    # Inf written into the weights after step 20's update (its loss is still finite): caught before
    # the step-20 checkpoint is written, so no non-finite checkpoint exists
    ("params", "ToyColour.diverge_at = 19\nToyColour.diverge_in = 'params'\n", 20,
     "non-finite parameters at step 20: table"),
    ("params, checked every step", "ToyColour.diverge_at = 12\nToyColour.diverge_in = 'params'\n"
     "Trainer.finite_check_every = 1\n", 13, "non-finite parameters at step 13: table"),
])
def test_non_finite_loss_or_parameters_stop_the_trial_as_diverged(tiny_scene, tmp_path, where, extra, at, message):
    trial = Trial(write_experiment(tmp_path, tiny_scene, extra), tmp_path / "runs")
    assert trial.run() == "error"
    status = trial.status()
    assert status["state"] == "diverged"
    assert status["error"] == message
    assert status["diverged_at"] == at
    assert status["last_checkpoint"] == "step_00000010.pt"
    assert trial.checkpoints() == ["step_00000010.pt"]  # kept, and nothing written after the divergence
    check_intact(trial.dir)
    step, payload = checkpoints.load_latest(trial.dir / "checkpoints")
    assert step == 10 and payload["method"]["table"].isfinite().all()
    assert not (trial.dir / "metrics.json").exists()


def test_a_diverging_trial_does_not_stop_the_sweep(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene, "Sweep.axes = {'ToyColour.diverge_at': [-1, 13, 7]}\n")
    runs = tmp_path / "runs"
    proc = harness("sweep", exp, "--runs-dir", runs)
    assert proc.returncode == 1, proc.stderr
    assert "1 of 3 trials done" in proc.stdout and "non-finite loss at step 14" in proc.stdout
    states = {}
    for path in (runs / "rel").glob("*/status.json"):
        status = json.loads(path.read_text())
        states[status["bindings"]["ToyColour.diverge_at"]] = status
    assert states[-1]["state"] == "done" and (runs / "rel" / states[-1]["trial_id"] / "metrics.json").exists()
    assert states[13]["state"] == states[7]["state"] == "diverged"
    assert (states[13]["diverged_at"], states[13]["last_checkpoint"]) == (14, "step_00000010.pt")
    assert (states[7]["diverged_at"], states[7]["last_checkpoint"]) == (8, None)  # before any checkpoint
    # `harness status` (what the report is built from) shows the diverged trials and why
    table = harness("status", "rel", "--runs-dir", runs, check=True).stdout
    assert "2 diverged, 1 done" in table and "non-finite loss at step 8" in table
