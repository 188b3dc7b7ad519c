"""Preemption lands between training steps: the USR2 handler (submitit's, on SLURM) runs only at a
step boundary, where save_at_boundary() checkpoints that step, so a requeued trial loses no step."""

import os
import signal
import threading

from harness.run import trial as trial_module
from tests.fixtures import toy_method
from tests.reliability_tools import Trial, final_state, write_experiment


def test_preemption_is_delivered_between_steps_and_saves_that_step(tiny_scene, reference, tmp_path, monkeypatch):
    trial = Trial(write_experiment(tmp_path, tiny_scene, "ToyColour.step_delay = 0.02\n"), tmp_path / "runs")
    in_step = threading.Event()
    completed = []  # steps finished so far
    step_of = toy_method.ToyColour.train_step

    def train_step(self, step, batch):
        in_step.set()
        try:
            return step_of(self, step, batch)
        finally:
            completed.append(step + 1)
            in_step.clear()
    monkeypatch.setattr(toy_method.ToyColour, "train_step", train_step)

    calls = []

    def cluster_handler(signum, frame):  # stands in for submitit's checkpoint-and-requeue handler
        calls.append({"in_step": in_step.is_set(), "step": completed[-1] if completed else 0,
                      "saved": trial_module.save_at_boundary(), "checkpoints": trial.checkpoints()})
    previous = signal.signal(signal.SIGUSR2, cluster_handler)
    # the signal comes from another thread while steps run, as a cluster's comes at any moment
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR2))
    try:
        timer.start()
        trial.run_here()
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR2, previous)
    assert signal.getsignal(signal.SIGUSR2) is previous
    assert len(calls) == 1, calls
    call = calls[0]
    assert call["saved"] and not call["in_step"], call
    # the newest checkpoint is the step where the signal landed (regular ones come every 10 steps)
    steps = [int(name[5:13]) for name in call["checkpoints"]]
    assert 0 < call["step"] < 40 and max(steps) == call["step"], (call, steps)
    # handing the signal on changed nothing: the result equals an uninterrupted run's
    assert final_state(trial) == reference


def test_no_trial_training_means_nothing_to_save():
    assert trial_module.save_at_boundary() is False
