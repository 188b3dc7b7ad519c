"""Trial records: atomic writes, status transitions, the per-trial lock, checkpoints."""

import os

import pytest
import torch

from harness.core.errors import RecordError
from harness.core.records import TrialRecord, atomic_write_json, create_trial_record, read_json
from harness.run import checkpoints


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "status.json"
    atomic_write_json(path, {"state": "pending"})

    def crash(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_json(path, {"state": "running"})
    assert read_json(path) == {"state": "pending"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp file left behind


def test_status_transitions(tmp_path):
    rec = create_trial_record(tmp_path / "t", {"label": "x"}, "config\n")
    assert rec.state == "pending"
    rec.begin_attempt()
    assert rec.status()["attempts"] == 1
    rec.set_state("preempted")
    rec.begin_attempt()
    assert rec.status()["attempts"] == 2
    rec.set_state("done")
    assert rec.status()["finished"]
    with pytest.raises(RecordError, match="illegal transition done -> failed"):
        rec.set_state("failed")
    with pytest.raises(RecordError, match="unknown state"):
        rec.set_state("exploded")


def test_failed_attempt_keeps_error_until_retry(tmp_path):
    rec = create_trial_record(tmp_path / "t", {}, "c\n")
    rec.begin_attempt()
    rec.set_state("failed", error="RuntimeError: boom")
    assert rec.status()["error"] == "RuntimeError: boom"
    rec.begin_attempt()
    assert "error" not in rec.status() and rec.state == "running"


def test_create_keeps_existing_status(tmp_path):
    rec = create_trial_record(tmp_path / "t", {"label": "a"}, "c\n")
    rec.begin_attempt()
    create_trial_record(tmp_path / "t", {"label": "a"}, "c\n")
    assert rec.state == "running"


def test_lock_is_exclusive(tmp_path):
    rec = TrialRecord(tmp_path / "t")
    with rec.lock():
        with pytest.raises(RecordError, match="locked by another process"):
            with TrialRecord(tmp_path / "t").lock():
                pass
    with rec.lock():  # released after the block
        pass


def test_torn_log_line_is_skipped(tmp_path):
    rec = TrialRecord(tmp_path / "t")
    rec.append_log({"step": 1, "loss": 0.5})
    with open(rec.log_path, "a") as f:
        f.write('{"step": 2, "lo')  # a kill in the middle of a line
    assert rec.read_log() == [{"step": 1, "loss": 0.5}]


def test_checkpoint_round_trip_and_pruning(tmp_path):
    for step in (10, 20, 30):
        checkpoints.save(tmp_path, step, {"w": torch.full((3,), float(step))}, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step_00000020.pt", "step_00000020.pt.sha256", "step_00000030.pt", "step_00000030.pt.sha256"]
    step, payload = checkpoints.load_latest(tmp_path)
    assert step == 30 and torch.equal(payload["w"], torch.full((3,), 30.0))


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "no_checksum"])
def test_corrupt_checkpoint_falls_back_with_warning(tmp_path, caplog, damage):
    checkpoints.save(tmp_path, 10, {"w": torch.ones(100)}, keep=3)
    newest = checkpoints.save(tmp_path, 20, {"w": torch.zeros(100)}, keep=3)
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "bitflip":
        newest.write_bytes(data[:-40] + bytes([data[-40] ^ 1]) + data[-39:])
    else:
        newest.with_name(newest.name + ".sha256").unlink()
    step, payload = checkpoints.load_latest(tmp_path)
    assert step == 10 and torch.equal(payload["w"], torch.ones(100))
    assert str(newest) in caplog.text
