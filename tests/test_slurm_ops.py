"""Operating sweeps on a real SLURM cluster (scripts/local-slurm.sh up): preemption and requeue,
jobs killed without a result, `harness status` / `harness cancel`, a 100-trial array, and two
sweeps of one experiment at once. Run with `pytest -m slurm`; nothing here mocks SLURM."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from harness.run import slurm
from tests.conftest import ROOT, TOY, harness

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="no SLURM here: run scripts/local-slurm.sh up"),
]
SMALL = ["--bind", "launch.cpus_per_task = 1", "--bind", "launch.timeout_min = 60"]
FINAL = ("done", "failed", "diverged", "cancelled")


def _statuses(runs_dir) -> dict:
    """{trial id: status.json} of the toy experiment."""
    return {p.parent.name: json.loads(p.read_text()) for p in runs_dir.glob("toy/*/status.json")}


def _by_binding(statuses: dict, key: str) -> dict:
    return {s["bindings"][key]: tid for tid, s in statuses.items()}


def _wait(what: str, predicate, timeout=240, poll=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _step(runs_dir, tid) -> int:
    try:
        prog = json.loads((runs_dir / "toy" / tid / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return -1
    return prog["step"] if prog.get("phase") == "train" else -1


def _in_squeue(array: str) -> str:
    return subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", array], capture_output=True, text=True).stdout


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sweep_popen(runs_dir, *binds):
    return subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(TOY), "--runs-dir", str(runs_dir),
                             "--cluster", "slurm", *map(str, binds)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_preempted_trial_checkpoints_requeues_and_resumes_to_the_uninterrupted_result(tmp_path):
    binds = ["--bind", "Sweep.axes = {}", "--bind", "Sweep.seeds = [3]", "--bind", "ToyColour.step_delay = 0.25",
             "--bind", "Trainer.progress_every = 1", *SMALL]
    runs = tmp_path / "slurm"
    harness("sweep", TOY, "--runs-dir", runs, "--cluster", "slurm", *binds, check=True)
    (tid,) = _statuses(runs)
    trial = runs / "toy" / tid
    # past the step-10 checkpoint, before the step-20 one: the job saves the step it is at when the
    # signal comes (harness.run.trial delivers it between steps), and the requeued job resumes there
    _wait("training past step 13", lambda: _step(runs, tid) >= 13, timeout=180)
    preempted_at = _step(runs, tid)
    assert preempted_at < 20, "preemption came too late to land between checkpoints"
    job = _statuses(runs)[tid]["slurm_job_id"]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what a preempting cluster sends
    _wait("the trial to finish", lambda: _statuses(runs)[tid]["state"] in FINAL, timeout=240)
    status = _statuses(runs)[tid]
    assert status["state"] == "done", status
    assert status["attempts"] == 2, status
    assert status["slurm_job_id"] == job  # requeued as the same job, not resubmitted
    log = (open(status["log_stderr"]).read() + open(status["log_stdout"]).read())
    assert "this job is preempted" in log and f"Requeued job {job}" in log, log[-3000:]
    resumed = re.search(rf"resumed {tid} from step (\d+)\b", log)
    assert resumed and int(resumed.group(1)) >= preempted_at, log[-3000:]  # not back to the step-10 checkpoint

    # the record is written before the job step ends: let sacct catch up (-D: every run of the job)
    def sacct():
        return subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "JobID,State"],
                              capture_output=True, text=True).stdout

    _wait("sacct to show the job requeued then completed", lambda: "COMPLETED" in sacct(), timeout=60)
    assert sacct().splitlines() == [f"{job}|REQUEUED", f"{job}|COMPLETED"], sacct()

    local = tmp_path / "local"
    harness("sweep", TOY, "--runs-dir", local, "--cluster", "local", *binds, check=True)
    a = json.loads((trial / "metrics.json").read_text())
    b = json.loads((local / "toy" / tid / "metrics.json").read_text())
    assert a["per_view"] == b["per_view"] and a["psnr"] == b["psnr"]

    def losses(d):
        return [e["loss"] for e in map(json.loads, (d / "train.jsonl").read_text().splitlines()) if "loss" in e]

    assert losses(trial)[-1] == losses(local / "toy" / tid)[-1]


def test_jobs_killed_without_a_result_end_the_waiting_sweep(tmp_path):
    """scancel (CANCELLED) and a SIGKILL of the trial process (what the OOM killer does: FAILED)."""
    runs = tmp_path / "runs"
    proc = _sweep_popen(runs, "--bind", "Sweep.axes = {}", "--bind", "Sweep.seeds = [0, 1]",
                        "--bind", "ToyColour.step_delay = 1.0", "--bind", "launch.wait = True", *SMALL)
    try:
        _wait("both trials running", lambda: all(s["state"] == "running" and s.get("pid")
                                                  for s in _statuses(runs).values()) and len(_statuses(runs)) == 2,
              timeout=180)
        by_seed = _by_binding(_statuses(runs), "seed")
        cancelled, killed = _statuses(runs)[by_seed[0]], _statuses(runs)[by_seed[1]]
        subprocess.run(["scancel", cancelled["slurm_job_id"]], check=True)
        os.kill(killed["pid"], signal.SIGKILL)  # the job step runs on this machine
        out, err = proc.communicate(timeout=120)  # must end: no endless wait on dead jobs
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["scancel", *{s["slurm_job_id"].split("_")[0] for s in _statuses(runs).values()}])
    assert proc.returncode == 1, (out, err)
    states = _statuses(runs)
    assert states[by_seed[0]]["state"] == "cancelled", states[by_seed[0]]
    assert "ended CANCELLED" in states[by_seed[0]]["error"]
    assert states[by_seed[1]]["state"] == "failed", states[by_seed[1]]
    assert states[by_seed[1]]["slurm_state"] in slurm.LOST_STATES - {"CANCELLED"}
    assert "without writing a result" in states[by_seed[1]]["error"]
    assert "0 of 2 trials done" in out and by_seed[0] in out and by_seed[1] in out, out


def test_status_counts_merge_squeue_and_cancel_empties_the_queue(tmp_path):
    runs = tmp_path / "runs"
    harness("sweep", TOY, "--runs-dir", runs, "--cluster", "slurm", "--bind", "Sweep.axes = {}",
            "--bind", "Sweep.seeds = [0]", "--bind",
            "Sweep.zipped = {'ToyColour.fail_at': [-1, 5, -1, -1], 'ToyColour.step_delay': [0.0, 0.0, 3.0, 3.1]}",
            *SMALL, check=True)
    st = _statuses(runs)
    fail_at = _by_binding(st, "ToyColour.fail_at")
    failing, done = fail_at[5], next(t for t, s in st.items() if s["bindings"]["ToyColour.step_delay"] == 0.0
                                     and t != fail_at[5])
    slow = sorted(t for t, s in st.items() if s["bindings"]["ToyColour.step_delay"] >= 3.0)
    _wait("one done, one failed, two running",
          lambda: (s := _statuses(runs))[done]["state"] == "done" and s[failing]["state"] == "failed"
          and all(s[t]["state"] == "running" and s[t].get("pid") for t in slow), timeout=240)
    killed, running = slow
    os.kill(_statuses(runs)[killed]["pid"], signal.SIGKILL)  # dies unrecorded: status must find out
    array = st[done]["slurm_job_id"].split("_")[0]
    _wait("sacct to see the killed job end",
          lambda: slurm.sacct([array]).get(_statuses(runs)[killed]["slurm_job_id"], slurm.JobInfo("", "")).lost,
          timeout=60)

    out = harness("status", "toy", "--runs-dir", runs, check=True).stdout
    assert "toy: 4 trials: 1 done, 2 failed, 1 running" in out, out
    row = next(line for line in out.splitlines() if line.strip().startswith(running))
    assert (f"{array}_" in row and "RUNNING" in row
            and subprocess.check_output(["hostname", "-s"], text=True).strip() in row)
    assert f"--- {failing} failed: RuntimeError: injected failure at step 5" in out
    assert "injected failure at step 5" in out.split(f"--- {failing}")[1].split("---")[0].split("(tail of")[1]
    assert f"--- {killed} failed: SLURM job" in out
    assert _statuses(runs)[killed]["state"] == "failed"

    out = harness("cancel", "toy", "--runs-dir", runs, check=True).stdout
    assert f"cancelled SLURM array(s) {array}; 1 trials marked cancelled" in out, out
    assert _in_squeue(array) == ""
    assert _statuses(runs)[running]["state"] == "cancelled"
    out = harness("status", "toy", "--runs-dir", runs, check=True).stdout
    assert "toy: 4 trials: 1 cancelled, 1 done, 2 failed" in out, out


def test_a_100_trial_sweep_is_submitted_as_one_array(tmp_path):
    runs = tmp_path / "runs"
    lrs = ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(25))
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = harness("sweep", TOY, "--runs-dir", runs, "--cluster", "slurm",
                   "--bind", f"Sweep.axes = {{'ToyColour.lr': [{lrs}]}}",
                   "--bind", "Sweep.seeds = [0, 1, 2, 3]", "--bind", "Trainer.iterations = 2", *SMALL, check=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    try:
        assert "100 submitted to SLURM" in proc.stdout, proc.stdout
        m = re.search(r"submitted 100 trials as SLURM array (\d+) in ([\d.]+) s \(records ([\d.]+) s\)", proc.stderr)
        assert m, proc.stderr[-2000:]
        array = m.group(1)
        ids = {s["slurm_job_id"] for s in _statuses(runs).values()}
        assert len(ids) == 100 and {i.split("_")[0] for i in ids} == {array}
        # printed, not asserted: wall time depends on the machine's load (2 shared cores here)
        print(f"\n100-trial sweep: `harness sweep` took {wall:.2f} s wall, {cpu:.2f} s CPU (Python start with "
              f"torch, Gin expansion of 100 trials, records); sbatch of the array {m.group(2)} s, job ids into "
              f"records {m.group(3)} s; load average {os.getloadavg()[0]:.1f}")
    finally:
        out = harness("cancel", "toy", "--runs-dir", runs, check=True).stdout
    assert "cancelled SLURM array(s)" in out, out
    assert _in_squeue(array) == ""


def test_two_sweeps_started_at_once_run_each_trial_once(tmp_path):
    runs = tmp_path / "runs"
    procs = [_sweep_popen(runs, "--bind", "launch.wait = True", *SMALL) for _ in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300))
        finally:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (out, err[-3000:])
        assert ": 4 of 4 trials done" in out, out
    submitted = [int(n) for _, err in outs for n in re.findall(r"submitted (\d+) trials as SLURM array", err)]
    assert sum(submitted) == 4, submitted  # one sweep queued them, the other waited on its jobs
    for tid, s in _statuses(runs).items():
        assert s["state"] == "done" and s["attempts"] == 1, s
        steps = [e["step"] for e in map(json.loads, (runs / "toy" / tid / "train.jsonl").read_text().splitlines())
                 if "loss" in e]
        assert steps == [10, 20, 30, 40], steps


def test_an_array_left_held_is_released_by_the_next_sweep(tmp_path):
    """submit_slurm holds the array until the records name their jobs; if the sweep dies in between,
    the next sweep of the experiment releases it instead of waiting on it forever."""
    runs = tmp_path / "runs"
    binds = ["--bind", "Sweep.seeds = [0, 1, 2]", "--bind", "launch.slurm_array_parallelism = 1",
             "--bind", "ToyColour.step_delay = 0.1", *SMALL]
    harness("sweep", TOY, "--runs-dir", runs, "--cluster", "slurm", *binds, check=True)
    array = next(iter(_statuses(runs).values()))["slurm_job_id"].split("_")[0]
    subprocess.run(["scontrol", "uhold", array], check=True)  # held as sbatch --hold does (a user hold)
    _wait("tasks held", lambda: "JobHeldUser" in subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %r", "-j", array], capture_output=True, text=True).stdout, timeout=30)
    proc = harness("sweep", TOY, "--runs-dir", runs, "--cluster", "slurm", *binds, "--bind", "launch.wait = True",
                   timeout=400)
    if proc.returncode != 0:
        subprocess.run(["scancel", array])
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    assert f"releasing SLURM array(s) {array}, left held" in proc.stderr, proc.stderr[-3000:]
    assert "6 of 6 trials done" in proc.stdout, proc.stdout
    assert {s["slurm_job_id"].split("_")[0] for s in _statuses(runs).values()} == {array}  # nothing resubmitted


def test_a_trial_killed_for_memory_is_marked_failed_by_status(tmp_path):
    """A real memory kill (the cluster enforces --mem: JobAcctGatherParams=OverMemoryKill): nothing
    in the job records it; `harness status` finds it through sacct and shows SLURM's log tail."""
    runs = tmp_path / "runs"
    harness("sweep", TOY, "--runs-dir", runs, "--cluster", "slurm", "--bind", "Sweep.axes = {}",
            "--bind", "Sweep.seeds = [0]", "--bind", "ToyColour.batch_size = 20000000",
            "--bind", "launch.mem_gb = 1.5", *SMALL, check=True)
    (tid,) = _statuses(runs)
    job = _statuses(runs)[tid]["slurm_job_id"]
    _wait("the job to end", lambda: slurm.sacct([slurm.array_id(job)]).get(job, slurm.JobInfo("", "")).ended,
          timeout=180)
    assert _statuses(runs)[tid]["state"] in ("pending", "running"), "the job recorded its own end"
    out = harness("status", "toy", "--runs-dir", runs, check=True).stdout
    status = _statuses(runs)[tid]
    assert status["state"] == "failed" and status["slurm_state"] in slurm.LOST_STATES, status
    assert "toy: 1 trials: 1 failed" in out, out
    assert "exceeded memory limit" in out.split(f"--- {tid} failed")[1], out


def test_retried_trials_are_pending_under_their_new_jobs_and_cancel_empties_the_queue(tmp_path):
    """Cancel a queued array, `--retry-failed` it, cancel again: nothing stays queued, every record ends
    `cancelled` (issue 21: a retry used to leave the records `cancelled`, so `cancel` found no job)."""
    runs = tmp_path / "runs"
    lrs = ", ".join(f"{0.01 * (i + 1):.2f}" for i in range(5))
    binds = ["--bind", f"Sweep.axes = {{'ToyColour.lr': [{lrs}]}}", "--bind", "Sweep.seeds = [0, 1, 2, 3]",
             "--bind", "ToyColour.step_delay = 1.0", "--bind", "launch.slurm_array_parallelism = 1", *SMALL]
    harness("sweep", TOY, "--runs-dir", runs, "--cluster", "slurm", *binds, check=True)
    first = {s["slurm_job_id"].split("_")[0] for s in _statuses(runs).values()}
    out = harness("cancel", "toy", "--runs-dir", runs, check=True).stdout
    assert "20 trials marked cancelled" in out, out
    assert {s["state"] for s in _statuses(runs).values()} == {"cancelled"}

    proc = harness("sweep", TOY, "--runs-dir", runs, "--cluster", "slurm", "--retry-failed", *binds, check=True)
    try:
        assert "20 submitted to SLURM" in proc.stdout, proc.stdout
        statuses = _statuses(runs)
        (array,) = {s["slurm_job_id"].split("_")[0] for s in statuses.values()}
        assert array not in first
        for s in statuses.values():
            assert s["state"] in ("pending", "running") and "error" not in s, s
            assert [p["state"] for p in s["previous"]] == ["cancelled"], s
        out = harness("status", "toy", "--runs-dir", runs, check=True).stdout
        assert "cancelled" not in out.splitlines()[0], out  # counted as queued, not as cancelled
        # a second sweep finds them queued: it neither submits them again nor counts them as submitted
        again = harness("sweep", TOY, "--runs-dir", runs, "--cluster", "slurm", "--retry-failed", *binds, check=True)
        assert "20 already queued on SLURM" in again.stdout and "submitted" not in again.stdout, again.stdout
    finally:
        out = harness("cancel", "toy", "--runs-dir", runs, check=True).stdout
    assert f"cancelled SLURM array(s) {array}" in out, out
    assert _in_squeue(array) == ""
    states = _statuses(runs)
    assert {s["state"] for s in states.values()} == {"cancelled"}, states
    assert all(len(s["previous"]) == 1 for s in states.values())


def test_scancel_of_a_running_trial_stops_it_within_a_step_with_a_checkpoint(tmp_path):
    """scancel sends SIGTERM (submitit ignores it; SLURM's SIGKILL follows KillWait = 30 s later): the
    trial saves the step it is at and ends; `status` then finds the job CANCELLED and marks it."""
    runs = tmp_path / "runs"
    harness("sweep", TOY, "--runs-dir", runs, "--cluster", "slurm", "--bind", "Sweep.axes = {}",
            "--bind", "Sweep.seeds = [5]", "--bind", "ToyColour.step_delay = 0.25",
            "--bind", "Trainer.progress_every = 1", *SMALL, check=True)
    (tid,) = _statuses(runs)
    _wait("training past step 13", lambda: _step(runs, tid) >= 13, timeout=180)
    job, at = _statuses(runs)[tid]["slurm_job_id"], _step(runs, tid)
    t0 = time.monotonic()
    subprocess.run(["scancel", job], check=True)
    _wait("the job to leave the queue", lambda: _in_squeue(slurm.array_id(job)) == "", timeout=60)
    gone = time.monotonic() - t0
    print(f"\nscancel of a running trial: the job left the queue {gone:.1f} s later")
    assert gone < 20, f"{gone:.1f} s: the trial ignored SIGTERM until SLURM killed it"
    status = _statuses(runs)[tid]
    assert status["state"] == "preempted" and "stopped by SIGTERM at step" in status["error"], status
    step = int(status["error"].split(" at step ")[1].split(",")[0])
    assert at <= step <= at + 4, (at, status["error"])
    assert (runs / "toy" / tid / "checkpoints" / f"step_{step:08d}.pt").exists()
    _wait("sacct to see the job end", lambda: slurm.sacct([slurm.array_id(job)]).get(job, slurm.JobInfo("", "")).ended,
          timeout=60)
    out = harness("status", "toy", "--runs-dir", runs, check=True).stdout
    assert "toy: 1 trials: 1 cancelled" in out, out
