"""harness.run.slurm parsers on squeue/sacct output captured from the local SLURM 22.05 cluster
(no cluster needed), and reconcile's decisions on real records with SLURM answers given as text."""

import pytest

from harness.core.records import TrialRecord, create_trial_record
from harness.run import slurm

# squeue -h -r -o '%i|%T|%M|%N|%r' -j 1 (array 0-5%2, two running)
SQUEUE = """1_2|PENDING|0:00||JobArrayTaskLimit
1_3|PENDING|0:00||JobArrayTaskLimit
1_4|PENDING|0:00||JobArrayTaskLimit
1_5|PENDING|0:00||JobArrayTaskLimit
1_0|RUNNING|0:03|vm|None
1_1|RUNNING|0:03|vm|None
"""
# the same without -r: pending tasks collapsed
SQUEUE_COLLAPSED = """1_[2-5%2]|PENDING|0:00||JobArrayTaskLimit
1_0|RUNNING|0:03|vm|None
"""
# sacct -n -P -X -o JobID,State,Elapsed,NodeList,ExitCode -j 1 after `scancel 1_1`, then after `scancel 1`
SACCT_RUNNING = """1_0|RUNNING|00:00:05|vm|0:0
1_1|CANCELLED by 0|00:00:03|vm|0:0
1_[2-5%2]|PENDING|00:00:00|None assigned|0:0
"""
SACCT_CANCELLED = """1_0|CANCELLED by 0|00:00:05|vm|0:0
1_1|CANCELLED by 0|00:00:03|vm|0:0
1_2|CANCELLED by 0|00:00:02|vm|0:0
1_[2-5%2]|CANCELLED by 0|00:00:00|None assigned|0:0
"""


def test_squeue_rows_by_task():
    jobs = slurm.parse_squeue(SQUEUE)
    assert sorted(jobs) == [f"1_{i}" for i in range(6)]
    assert jobs["1_0"].state == "RUNNING" and jobs["1_0"].node == "vm" and jobs["1_0"].elapsed == "0:03"
    assert jobs["1_4"].state == "PENDING" and jobs["1_4"].reason == "JobArrayTaskLimit"
    assert not any(j.lost for j in jobs.values())  # live jobs are never lost


def test_held_jobs():  # squeue of `sbatch --hold --array=0-1`: what submit_slurm leaves if it dies before release
    jobs = slurm.parse_squeue("66_0|PENDING|0:00||JobHeldUser\n66_1|PENDING|0:00||JobHeldUser\n")
    assert all(j.held and not j.lost for j in jobs.values())
    assert not slurm.parse_squeue(SQUEUE)["1_4"].held


def test_collapsed_array_ranges_expand():
    assert sorted(slurm.parse_squeue(SQUEUE_COLLAPSED)) == ["1_0", "1_2", "1_3", "1_4", "1_5"]
    assert slurm._expand("7_[0-2,5,8-12:2%4]") == ["7_0", "7_1", "7_2", "7_5", "7_8", "7_10", "7_12"]
    assert slurm._expand("12_3") == ["12_3"] and slurm._expand("12") == ["12"]


def test_sacct_state_words_and_ranges():
    jobs = slurm.parse_sacct(SACCT_RUNNING)
    assert jobs["1_1"].state == "CANCELLED" and jobs["1_1"].lost
    assert jobs["1_0"].state == "RUNNING" and not jobs["1_0"].lost
    assert jobs["1_3"].state == "PENDING" and jobs["1_3"].node == ""


def test_sacct_task_row_wins_over_its_range():
    jobs = slurm.parse_sacct(SACCT_CANCELLED)
    assert jobs["1_2"].elapsed == "00:00:02" and jobs["1_2"].node == "vm"  # the task's own row
    assert jobs["1_5"].elapsed == "00:00:00" and jobs["1_5"].state == "CANCELLED"


@pytest.mark.parametrize("state,lost", [("OUT_OF_MEMORY", True), ("NODE_FAIL", True), ("TIMEOUT", True),
                                        ("FAILED", True), ("CANCELLED by 1000", True), ("COMPLETED", False),
                                        ("REQUEUED", False), ("PENDING", False), ("RUNNING", False)])
def test_lost_states(state, lost):
    assert slurm.parse_sacct(f"9_0|{state}|00:01:00|vm|0:9\n")["9_0"].lost is lost


def test_malformed_output_is_an_error_naming_the_line():
    with pytest.raises(slurm.SlurmError, match="JOBID STATE"):
        slurm.parse_sacct("JOBID STATE\n")


def _record(tmp_path, name, state, job_id):
    r = create_trial_record(tmp_path / name, {"trial_id": name}, "x = 1\n")
    if state != "pending":
        r.begin_attempt(slurm_job_id=job_id)
        if state != "running":
            r.set_state(state)
    r.update(slurm_job_id=job_id, log_stderr=str(tmp_path / f"{name}.err"))
    return r


def test_reconcile_marks_only_open_trials_with_lost_jobs(tmp_path, monkeypatch):
    answers = {"sacct": slurm.parse_sacct("5_0|CANCELLED by 0|00:00:09|vm|0:0\n5_1|OUT_OF_MEMORY|00:01:00|vm|0:125\n"
                                          "5_2|COMPLETED|00:00:30|vm|0:0\n5_3|FAILED|00:00:01|vm|1:0\n"
                                          "5_4|RUNNING|00:00:10|vm|0:0\n5_5|COMPLETED|00:00:10|vm|0:0\n"),
               "squeue": slurm.parse_squeue("5_4|RUNNING|0:10|vm|None\n")}
    monkeypatch.setattr(slurm, "sacct", lambda arrays: dict(answers["sacct"]) if arrays == ["5"] else {})
    monkeypatch.setattr(slurm, "squeue", lambda arrays: dict(answers["squeue"]) if arrays == ["5"] else {})
    recs = {"a": _record(tmp_path, "a", "running", "5_0"), "b": _record(tmp_path, "b", "pending", "5_1"),
            "c": _record(tmp_path, "c", "done", "5_2"), "d": _record(tmp_path, "d", "failed", "5_3"),
            "e": _record(tmp_path, "e", "running", "5_4"), "f": _record(tmp_path, "f", "running", "5_5")}
    infos = slurm.reconcile(list(recs.values()))
    assert {k: infos[k].state for k in infos} == {"a": "CANCELLED", "b": "OUT_OF_MEMORY", "c": "COMPLETED",
                                                  "d": "FAILED", "e": "RUNNING", "f": "COMPLETED"}
    assert {k: r.state for k, r in recs.items()} == {"a": "cancelled", "b": "failed", "c": "done", "d": "failed",
                                                    "e": "running", "f": "failed"}
    assert "5_5 ended COMPLETED" in recs["f"].status()["error"]  # exited, yet its record never said how
    assert "5_1 ended OUT_OF_MEMORY" in recs["b"].status()["error"] and "b.err" in recs["b"].status()["error"]
    assert recs["d"].status().get("slurm_state") is None  # its own failure record is kept as written


def test_reconcile_leaves_a_locked_trial_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "sacct", lambda arrays: slurm.parse_sacct("6_0|NODE_FAIL|00:00:09|vm|0:0\n"))
    monkeypatch.setattr(slurm, "squeue", lambda arrays: {})
    r = _record(tmp_path, "a", "running", "6_0")
    with TrialRecord(r.dir).lock():  # a process still runs it: not ours to mark
        slurm.reconcile([r])
    assert r.state == "running"
    slurm.reconcile([r])
    assert r.state == "failed" and "NODE_FAIL" in r.status()["error"]


def test_missing_command_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    with pytest.raises(slurm.SlurmError, match="`sacct` is not on PATH"):
        slurm.sacct(["1"])
