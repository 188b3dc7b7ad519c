"""Sweeps on a real SLURM cluster (scripts/local-slurm.sh up). Run with `pytest -m slurm`."""

import json
import shutil
import subprocess
import time

import pytest

from tests.conftest import TOY, harness

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="no SLURM here: run scripts/local-slurm.sh up"),
]


def _wait_done(runs_dir, n, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = [json.loads(p.read_text())["state"] for p in runs_dir.glob("toy/*/status.json")]
        if len(states) == n and all(s in ("done", "failed") for s in states):
            return states
        time.sleep(1)
    raise AssertionError(f"sweep did not finish in {timeout} s: {states}")


def test_sweep_runs_as_one_job_array_with_results_equal_to_local(tmp_path):
    slurm_runs, local_runs = tmp_path / "slurm", tmp_path / "local"
    t0 = time.perf_counter()
    proc = harness("sweep", TOY, "--runs-dir", slurm_runs, "--cluster", "slurm",
                   "--bind", "launch.cpus_per_task=1", check=True)
    submit_time = time.perf_counter() - t0
    assert "4 submitted to SLURM" in proc.stdout, proc.stdout
    assert submit_time < 30
    assert _wait_done(slurm_runs, 4) == ["done"] * 4
    statuses = [json.loads(p.read_text()) for p in slurm_runs.glob("toy/*/status.json")]
    array_ids = {s["slurm_job_id"].split("_")[0] for s in statuses}
    assert len(array_ids) == 1, f"expected one job array, got {array_ids}"
    array = array_ids.pop()
    deadline = time.time() + 60  # the record is written before the job step ends: let sacct catch up
    while time.time() < deadline:
        sacct = subprocess.run(["sacct", "-n", "-X", "-j", array, "-o", "JobID,State"],
                               capture_output=True, text=True).stdout
        if sacct.count("COMPLETED") == 4:
            break
        time.sleep(1)
    assert sacct.count("COMPLETED") == 4, sacct

    harness("sweep", TOY, "--runs-dir", local_runs, "--cluster", "local", check=True)
    for status in statuses:
        tid = status["trial_id"]
        a = json.loads((slurm_runs / "toy" / tid / "metrics.json").read_text())["per_view"]
        b = json.loads((local_runs / "toy" / tid / "metrics.json").read_text())["per_view"]
        assert a == b

    # `harness reproduce` on SLURM (issue 22, item 6): the trial re-run as a SLURM job, compared
    proc = harness("reproduce", "toy", tid, "--runs-dir", slurm_runs, "--cluster", "slurm")
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    assert "metrics: identical (every digit)" in proc.stdout and "parameters: identical (bit for bit)" in proc.stdout
    scratch = proc.stdout.splitlines()[0].split(" in ", 1)[1]
    assert json.loads(open(f"{scratch}/status.json").read())["slurm_job_id"]
