"""Reliability 1: kill -9 anywhere in a trial, again and again; it always resumes and finishes with
the result of an uninterrupted run, and no record or checkpoint is ever half-written."""

import collections
import random

from tests.reliability_tools import Trial, check_intact, final_state, temp_files, write_experiment

KILLS = 24
# Where a SIGKILL can land, with the HARNESS_FAULT that puts it there (nth/byte/phase drawn per run).
WRITES = {"checkpoint": ["step_*.pt", "step_*.pt.sha256"],
          "record": ["status.json", "progress.json", "metrics.json", "*.png"]}


def _draw_fault(rng: random.Random) -> tuple[str, str | None, float | None]:
    kind = rng.choice(["step", "checkpoint", "record", "log", "time"])
    if kind == "step":
        return kind, f"action=kill point=step nth={rng.randint(1, 30)}", None
    if kind == "time":  # no hook: the parent kills at a random instant (training, writes or evaluation)
        return kind, None, rng.uniform(0.02, 0.5)
    if kind == "log":
        return kind, f"action=kill point=log nth={rng.randint(1, 6)} byte={rng.randint(0, 60)}", None
    phase = rng.choice(["data", "synced", "renamed"])
    nth = rng.randint(1, 3) if kind == "checkpoint" else rng.randint(1, 4)
    return kind, (f"action=kill point=write file={rng.choice(WRITES[kind])} nth={nth} phase={phase} "
                  f"byte={rng.randint(0, 3000)}"), None


def test_kill_9_at_random_points_always_resumes_to_the_uninterrupted_result(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene, "ToyColour.step_delay = 0.004\n")
    reference = Trial(exp, tmp_path / "reference")
    reference.run_here()
    expected = final_state(reference)
    assert expected["iterations"] == 40 and len(expected["log"]) == 8

    rng = random.Random(11)
    kills = collections.Counter()
    rounds = 0
    while sum(kills.values()) < KILLS:
        rounds += 1
        assert rounds <= 12, f"too few faults hit: {dict(kills)}"
        trial = Trial(exp, tmp_path / f"round{rounds}")
        runs = 0
        while True:
            runs += 1
            assert runs <= 15, f"round {rounds}: the trial does not finish"
            kind, fault, delay = _draw_fault(rng)
            outcome = trial.run(fault=fault, kill_after=delay)
            check_intact(trial.dir)
            if outcome == "ok":
                break
            assert outcome == "killed", f"{fault or delay}: the trial raised instead of being killed"
            kills[kind] += 1
            state = trial.status()["state"]  # killed before it began, while running, or just after it was done
            assert state in ("pending", "running") or (state == "done" and (trial.dir / "metrics.json").exists())
        status = trial.status()
        assert status["state"] == "done" and 1 <= status["attempts"] <= runs
        assert final_state(trial) == expected, f"round {rounds} differs from the uninterrupted run"
        assert temp_files(trial.dir) == []  # leftovers of cut writes were removed on resume
    assert min(kills[k] for k in ("step", "checkpoint", "record", "log", "time")) >= 2, dict(kills)


def test_resume_uses_the_recorded_torch_thread_count(tiny_scene, tmp_path, reference):
    trial = Trial(write_experiment(tmp_path, tiny_scene), tmp_path / "runs")
    assert trial.run(threads=1, fault="action=kill point=step nth=25") == "killed"
    assert trial.status()["torch_threads"] == 1
    log = tmp_path / "resume.log"
    assert trial.run(threads=2, log_file=log) == "ok"  # e.g. re-run with --threads 2
    assert "using its recorded 1 torch threads (not 2) to resume bit-identically" in log.read_text()
    assert trial.status()["torch_threads"] == 1 and trial.status()["attempts"] == 2
    assert final_state(trial) == reference


def test_threads_are_pinned_only_when_there_is_something_to_resume(tmp_path):
    """In-process (no parallel work between the set_num_threads calls): a record with a thread count
    but no checkpoint keeps this process's count; with a checkpoint, the recorded one is used."""
    import torch

    from harness.core.records import create_trial_record
    from harness.run.trial import _pin_threads

    record = create_trial_record(tmp_path / "t", {"torch_threads": 3}, "c\n")
    before = torch.get_num_threads()
    try:
        _pin_threads(record)
        assert torch.get_num_threads() == before
        (record.checkpoint_dir).mkdir()
        (record.checkpoint_dir / "step_00000010.pt").write_bytes(b"x")
        _pin_threads(record)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
