"""Reliability 5: two sweeps of the same experiment at once (local cluster): every trial is trained
exactly once (per-trial lock; the second sweep waits for the first's result), neither crashes."""

import json
import os
import subprocess
import sys
import time

from tests.conftest import ROOT
from tests.reliability_tools import Trial, write_experiment


def test_two_sweeps_at_once_train_every_trial_exactly_once(tiny_scene, tmp_path):
    trace = tmp_path / "trainings.txt"
    exp = write_experiment(tmp_path, tiny_scene, f"ToyColour.step_delay = 0.02\nToyColour.trace_file = '{trace}'\n"
                                                 "Sweep.axes = {'ToyColour.lr': [0.01, 0.1]}\n")
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "harness", "sweep", str(exp), "--runs-dir", str(runs), "--cluster", "local"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweeps = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outputs = [p.communicate(timeout=400) for p in sweeps]
    for proc, (out, err) in zip(sweeps, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert "2 of 2 trials done" in out
    lines = trace.read_text().splitlines()
    assert sorted(lines) == ["lr=0.01 seed=0", "lr=0.1 seed=0"]  # each trained once
    for path in (runs / "rel").glob("*/status.json"):
        status = json.loads(path.read_text())
        assert status["state"] == "done" and status["attempts"] == 1
        steps = [json.loads(line)["step"] for line in (path.parent / "train.jsonl").read_text().splitlines()]
        assert steps == list(range(5, 41, 5))


def test_waiting_for_a_trial_that_fails_elsewhere_does_not_run_it_again(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene, "ToyColour.step_delay = 0.02\nToyColour.fail_at = 30\n")
    first, second = Trial(exp, tmp_path / "runs"), Trial(exp, tmp_path / "runs")
    pid = os.fork()
    if pid == 0:
        os._exit({"error": 0}.get(first.run(), 1))  # a second process running the same trial
    deadline = time.monotonic() + 60
    while first.status()["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    log = tmp_path / "second.log"
    assert second.run(log_file=log) == "error"
    assert os.waitpid(pid, 0)[1] == 0
    assert "waiting for it" in log.read_text()
    assert "failed in another sweep: RuntimeError: injected failure at step 30" in log.read_text()
    status = second.status()
    assert status["state"] == "failed" and status["attempts"] == 1
