"""Reliability: stop signals. SIGTERM to a sweep, Ctrl-C on its terminal (SIGINT to the process
group) or SIGTERM to one trial (what scancel sends) stops the trials at the next step boundary with
that step checkpointed, leaves no process running, and a re-run resumes to the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time

from harness.run.sweep import expand
from tests.conftest import ROOT
from tests.reliability_tools import Trial, final_state, write_experiment

SLOW = "ToyColour.step_delay = 0.1\nTrainer.progress_every = 1\nSweep.seeds = [0, 1]\n"


def _start(exp, runs):
    """`harness sweep` on the local cluster, two trials at once, in a session of its own."""
    return subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(exp), "--runs-dir", str(runs),
                             "--cluster", "local", "--parallel", "2"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _records(runs):
    return {p.parent.name: p.parent for p in sorted(runs.glob("*/*/status.json"))}


def _status(trial_dir):
    return json.loads((trial_dir / "status.json").read_text())


def _step(trial_dir) -> int:
    try:
        prog = json.loads((trial_dir / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return -1
    return prog["step"] if prog.get("phase") == "train" else -1


def _wait(what, predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-s", str(sid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[1][0] != "Z"]  # zombies are already dead


def _both_training_past(runs, step):
    recs = _records(runs)
    return len(recs) == 2 and all(_step(d) >= step for d in recs.values())


def _check_stopped(runs, signame):
    """Every trial preempted at a step past its last periodic checkpoint, with that step saved."""
    for _tid, d in _records(runs).items():
        status = _status(d)
        assert status["state"] == "preempted", status
        assert f"stopped by {signame} at step" in status["error"], status["error"]
        step = int(status["error"].split(" at step ")[1].split(",")[0])
        assert step > 10, status["error"]  # past the step-10 checkpoint: the stop saved a newer one
        assert (d / "checkpoints" / f"step_{step:08d}.pt").exists(), sorted(os.listdir(d / "checkpoints"))


def _stop_sweep_mid_training(exp, runs, stop) -> tuple[subprocess.Popen, str, str]:
    """Start the two-trial sweep, call `stop(proc)` once both train past their step-10 checkpoint,
    and wait for the sweep to end; (process, stdout, stderr)."""
    proc = _start(exp, runs)
    try:
        _wait("both trials past step 12", lambda: _both_training_past(runs, 12))
        stop(proc)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, out, err


def test_sigterm_to_the_sweep_stops_its_trials_checkpointed_and_a_rerun_resumes_exactly(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene, SLOW)
    runs = tmp_path / "runs"
    # the sweep process only, as `kill PID` does
    proc, out, err = _stop_sweep_mid_training(exp, runs, lambda p: p.send_signal(signal.SIGTERM))
    assert proc.returncode == 130, (out, err[-3000:])
    assert "SIGTERM: stopping the sweep" in err and "interrupted:" in err, err[-3000:]
    assert _session_processes(proc.pid) == []  # no trial keeps running without its sweep
    _check_stopped(runs, "SIGTERM")

    rerun = subprocess.run([sys.executable, "-m", "harness", "sweep", str(exp), "--runs-dir", str(runs),
                            "--cluster", "local", "--parallel", "2"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ids = [t.id for t in expand(str(exp))]
    for tid, d in _records(runs).items():
        assert _status(d)["state"] == "done" and _status(d)["attempts"] == 2
        reference = Trial(exp, tmp_path / "reference", index=ids.index(tid))
        reference.run_here()
        resumed = Trial(exp, runs, index=ids.index(tid))
        assert final_state(resumed) == final_state(reference), f"trial {tid} differs from an uninterrupted run"


def test_ctrl_c_stops_every_trial_at_a_step_boundary_and_leaves_no_process(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene, SLOW)
    runs = tmp_path / "runs"
    # what the terminal sends on Ctrl-C: SIGINT to the whole process group
    proc, out, err = _stop_sweep_mid_training(exp, runs, lambda p: os.killpg(p.pid, signal.SIGINT))
    assert proc.returncode == 130, (out, err[-3000:])
    assert _session_processes(proc.pid) == []
    _check_stopped(runs, "SIGINT")


def test_sigterm_to_one_trial_stops_it_within_a_step_and_the_sweep_reports_it(tiny_scene, tmp_path):
    """What `scancel` does to a running job: SIGTERM to the trial's process (submitit ignores it)."""
    exp = write_experiment(tmp_path, tiny_scene, SLOW.replace("[0, 1]", "[0]"))
    runs = tmp_path / "runs"
    proc = _start(exp, runs)
    try:
        _wait("the trial past step 12", lambda: (r := _records(runs)) and all(_step(d) >= 12 for d in r.values()))
        (trial_dir,) = _records(runs).values()
        pid, at = _status(trial_dir)["pid"], _step(trial_dir)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        _wait("the trial process to end", lambda: subprocess.run(["ps", "-o", "stat=", "-p", str(pid)],
                                                                capture_output=True, text=True).stdout.strip()
              in ("", "Z"), timeout=30)
        stopped_in = time.monotonic() - t0
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    status = _status(trial_dir)
    assert status["state"] == "preempted", status
    step = int(status["error"].split(" at step ")[1].split(",")[0])
    assert at <= step <= at + 2, (at, status["error"])  # within a step or two of the signal (0.1 s a step)
    assert (trial_dir / "checkpoints" / f"step_{step:08d}.pt").exists()
    assert stopped_in < 10, f"the trial took {stopped_in:.1f} s to stop"
    assert proc.returncode == 1 and "not done" in out and "stopped by SIGTERM" in out, (out, err[-2000:])
