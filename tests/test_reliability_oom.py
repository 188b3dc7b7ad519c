"""Reliability 7: out of memory in a training step (a simulated torch.cuda.OutOfMemoryError) retries
the step with a smaller ray batch, records it, survives a resume, and fails clearly when it must."""

import pytest

from harness.core.errors import ConfigError
from harness.run import sweep
from tests.reliability_tools import Trial, final_state, write_experiment

OOM = "ToyColour.oom_above = 20\n"  # batches of more than 20 rays "do not fit"


def test_oom_halves_the_batch_until_it_fits_and_records_it(tiny_scene, tmp_path):
    trial = Trial(write_experiment(tmp_path / "", tiny_scene, OOM), tmp_path / "runs")
    assert trial.run() == "ok"
    status = trial.status()
    assert status["state"] == "done" and status["batch_size"] == 16
    assert status["oom_reductions"] == [{"step": 0, "from": 64, "to": 32}, {"step": 0, "from": 32, "to": 16}]
    # the same batches as a run configured with 16 rays from the start: same result
    (tmp_path / "small").mkdir()
    small = Trial(write_experiment(tmp_path / "small", tiny_scene, "ToyColour.batch_size = 16\n"), tmp_path / "small")
    small.run_here()
    ours, theirs = final_state(trial), final_state(small)
    assert ours["table"] == theirs["table"] and ours["per_view"] == theirs["per_view"]


def test_reduced_batch_survives_a_resume(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene, OOM)
    straight = Trial(exp, tmp_path / "straight")
    straight.run_here()
    trial = Trial(exp, tmp_path / "runs")
    assert trial.run(fault="action=kill point=step nth=25") == "killed"
    assert trial.run() == "ok"
    # the checkpoint carries the reduced batch size: no new out-of-memory round after the resume
    assert len(trial.status()["oom_reductions"]) == 2 and trial.status()["attempts"] == 2
    assert final_state(trial) == final_state(straight)


def test_oom_fails_with_a_clear_message_when_retries_run_out(tiny_scene, tmp_path):
    trial = Trial(write_experiment(tmp_path, tiny_scene, OOM + "Trainer.oom_retries = 1\n"), tmp_path / "runs")
    assert trial.run() == "error"
    status = trial.status()
    assert status["state"] == "failed"
    assert status["error"] == ("TrialOutOfMemory: out of memory at step 0 with batch_size 32 after 1 reductions "
                               "(Trainer.oom_retries = 1); lower ToyColour.batch_size or the model's size "
                               "(CUDA out of memory (simulated for 32 rays))")
    assert status["batch_size"] == 32


def test_oom_factor_is_configurable_and_checked(tiny_scene, tmp_path):
    trial = Trial(write_experiment(tmp_path, tiny_scene, OOM + "Trainer.oom_factor = 0.25\n"), tmp_path / "runs")
    assert trial.run() == "ok"
    assert trial.status()["oom_reductions"] == [{"step": 0, "from": 64, "to": 16}]
    with pytest.raises(ConfigError, match=r"Trainer.oom_factor = 1.5: expected a number between 0 and 1"):
        sweep.expand(str(write_experiment(tmp_path, tiny_scene, "Trainer.oom_factor = 1.5\n", name="bad")))
