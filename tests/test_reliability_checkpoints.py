"""Reliability 4: a truncated or bit-flipped checkpoint fails its checksum, a warning names the file,
and the trial resumes from the previous good one (or from scratch) to the uninterrupted result."""

import pytest

from tests.reliability_tools import Trial, final_state, write_experiment


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 3])
    else:  # one bit in the middle of the file
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:])


@pytest.mark.parametrize("damaged", [{20: "truncate"}, {20: "bitflip"}, {20: "truncate", 10: "bitflip"}],
                         ids=["truncated", "bit-flipped", "both"])
def test_corrupt_checkpoint_is_skipped_with_a_warning_and_the_trial_resumes(tiny_scene, tmp_path, reference,
                                                                           damaged):
    trial = Trial(write_experiment(tmp_path, tiny_scene), tmp_path / "runs")
    assert trial.run(fault="action=kill point=step nth=25") == "killed"
    assert trial.checkpoints() == ["step_00000010.pt", "step_00000020.pt"]
    for step, how in damaged.items():
        _damage(trial.dir / "checkpoints" / f"step_{step:08d}.pt", how)
    log = tmp_path / "resume.log"
    assert trial.run(log_file=log) == "ok"
    text = log.read_text()
    for step in damaged:
        path = trial.dir / "checkpoints" / f"step_{step:08d}.pt"
        assert f"checkpoint {path} fails its checksum (truncated or corrupted): skipped" in text
    if 10 in damaged:
        assert "resumed" not in text  # nothing usable: trained from scratch
    else:
        assert f"resumed {trial.dir.name} from step 10" in text
    assert trial.status()["state"] == "done"
    assert final_state(trial) == reference
