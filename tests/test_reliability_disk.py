"""Reliability 3: a full disk (injected ENOSPC at any write, and a real tmpfs that fills up) gives
one clear error naming the file, leaves the previous checkpoint intact, and the trial resumes."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.reliability_tools import Trial, can_mount_tmpfs, check_intact, final_state, temp_files, write_experiment

# (file glob, nth write of it, file the error must name, relative to the trial folder)
CASES = [("step_*.pt", 2, "checkpoints/step_00000020.pt"),
         ("step_*.pt.sha256", 3, "checkpoints/step_00000030.pt.sha256"),
         ("status.json", 3, "status.json"),  # the 'done' status, after metrics.json is written
         ("progress.json", 4, "progress.json"),
         ("metrics.json", 1, "metrics.json"),
         ("test_*.png", 2, "renders/test_001.png")]  # a render (ground truth PNGs are named by their hash)


@pytest.mark.parametrize("pattern, nth, named", CASES, ids=[c[0] for c in CASES])
def test_enospc_names_the_file_keeps_checkpoints_and_the_trial_resumes(tiny_scene, tmp_path, reference,
                                                                       pattern, nth, named):
    trial = Trial(write_experiment(tmp_path, tiny_scene), tmp_path / "runs")
    fault = f"action=enospc point=write file={pattern} nth={nth} phase=data byte=100"
    assert trial.run(fault=fault) == "error"
    status = trial.status()
    assert status["state"] == "failed"
    assert status["error"] == f"WriteError: cannot write {trial.dir / named}: No space left on device (ENOSPC)"
    check_intact(trial.dir)
    assert temp_files(trial.dir) == []  # the partial temp file is removed
    if pattern.startswith("step_"):
        # the checkpoint being written is absent (data and checksum), the ones before it verify
        last = int(named.split("_")[1][:8])
        assert trial.checkpoints() == [f"step_{s:08d}.pt" for s in range(max(10, last - 20), last, 10)]
        assert not list((trial.dir / "checkpoints").glob(f"step_{last:08d}*"))
    assert trial.run() == "ok"  # space is back: the trial resumes (a failed trial may be re-run)
    assert trial.status()["state"] == "done"
    assert final_state(trial) == reference


@pytest.mark.skipif(not can_mount_tmpfs(), reason="cannot mount a tmpfs in a user namespace here")
def test_real_full_tmpfs(tiny_scene, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-m", "tests.reliability_tools", "tmpfs",
                           str(tiny_scene), str(tmp_path), str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["outcomes"] == ["killed", "error", "ok"]
    status = result["after_full"]["status"]
    trial_dir = result["trial_dir"]
    assert status["state"] == "failed"
    assert status["error"] == (f"WriteError: cannot write {trial_dir}/checkpoints/step_00000020.pt: "
                               f"No space left on device (ENOSPC)")
    assert result["after_full"]["checkpoints"] == ["step_00000010.pt"]  # intact (check_intact ran there)
    assert not [f for f in result["after_full"]["files"] if f.endswith(".tmp") or "step_00000020" in f]
    assert result["state"] == "done" and result["final_equal"]


def test_a_job_that_cannot_record_its_failure_is_reported_by_its_exception_line(tiny_scene, tmp_path):
    """The disk stays full from the final status on: the trial can write neither `done` nor `failed`,
    so its record stays `running`. The sweep's line names the job's exception and its log, not
    whatever line a cut-short log happened to end with (issue 21: `ERROR trial ... running:     ra`)."""
    exp = write_experiment(tmp_path, tiny_scene)
    env = {**os.environ, "HARNESS_FAULT": "action=enospc point=write file=status.json nth=3 repeat=1"}
    proc = subprocess.run([sys.executable, "-m", "harness", "sweep", str(exp), "--runs-dir", str(tmp_path / "runs"),
                           "--cluster", "local"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, (proc.stdout, proc.stderr[-3000:])
    (status_path,) = (tmp_path / "runs" / "rel").glob("*/status.json")
    assert json.loads(status_path.read_text())["state"] == "running"  # nothing could be recorded
    expected = (f"ended without recording its outcome (disk full or read-only?): harness.core.records.WriteError: "
                f"cannot write {status_path.resolve()}: No space left on device (ENOSPC); log: ")  # the trial store
    assert expected in proc.stdout and expected in proc.stderr, (proc.stdout, proc.stderr[-3000:])
