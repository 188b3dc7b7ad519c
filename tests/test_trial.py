"""Trials end to end through the CLI: records, skip when done, resume after kill -9, failures."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT, TOY, harness


def _statuses(runs_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in (runs_dir / "toy").glob("*/status.json")}


def test_sweep_writes_complete_records_and_rerun_skips(runs_dir):
    proc = harness("sweep", TOY, "--runs-dir", runs_dir, check=True)
    assert "4 of 4 trials done" in proc.stdout
    for tid, status in _statuses(runs_dir).items():
        trial = runs_dir / "toy" / tid
        assert status["state"] == "done" and status["attempts"] == 1
        assert status["device"].startswith("CPU") or "CUDA" in status["device"]  # for the report's provenance
        metrics = json.loads((trial / "metrics.json").read_text())
        assert len(metrics["per_view"]) == 200 and set(metrics["per_view"]["r_0"]) >= {"psnr"}
        assert abs(metrics["psnr"] - sum(v["psnr"] for v in metrics["per_view"].values()) / 200) < 1e-9
        assert len(list((trial / "renders").glob("*.png"))) == 200
        assert "ToyColour.lr" in (trial / "config.gin").read_text()
        assert [json.loads(line)["step"]
                for line in (trial / "train.jsonl").read_text().splitlines()] == [10, 20, 30, 40]
    t0 = time.perf_counter()
    again = harness("sweep", TOY, "--runs-dir", runs_dir, check=True)
    assert time.perf_counter() - t0 < 30  # generous: the point is that nothing is trained again
    assert "4 of 4 trials done" in again.stdout
    assert all(s["attempts"] == 1 for s in _statuses(runs_dir).values())


def test_local_and_debug_clusters_give_identical_metrics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    harness("sweep", TOY, "--runs-dir", a, "--bind", "Sweep.seeds=[0]", check=True)
    harness("sweep", TOY, "--runs-dir", b, "--bind", "Sweep.seeds=[0]", "--cluster", "local", "--parallel", "2",
            check=True)
    for tid in _statuses(a):
        ma = json.loads((a / "toy" / tid / "metrics.json").read_text())
        mb = json.loads((b / "toy" / tid / "metrics.json").read_text())
        assert ma["per_view"] == mb["per_view"]


def test_kill_9_mid_trial_resumes_from_checkpoint(tmp_path):
    """Kill the whole sweep (parent and job) with SIGKILL after a checkpoint; the re-run resumes
    from it, not from zero, and ends with the metrics of an uninterrupted run."""
    runs = tmp_path / "runs"
    slow = ["--bind", "Sweep.seeds=[0]", "--bind", "Sweep.axes={'ToyColour.lr': [0.1]}",
            "--bind", "Trainer.iterations=60", "--bind", "ToyColour.step_delay=0.05"]
    proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(TOY), "--runs-dir", str(runs),
                             "--cluster", "local", *slow], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpts = []
    while time.time() < deadline and not ckpts:
        ckpts = list(runs.glob("toy/*/checkpoints/step_00000020.pt.sha256"))
        time.sleep(0.1)
    assert ckpts, "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)  # the job runs in the same session: everything dies at once
    proc.wait()
    trial = ckpts[0].parent.parent
    assert json.loads((trial / "status.json").read_text())["state"] == "running"
    assert not (trial / "metrics.json").exists()

    harness("sweep", TOY, "--runs-dir", runs, *slow, check=True)
    status = json.loads((trial / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 2
    steps = [json.loads(line)["step"] for line in (trial / "train.jsonl").read_text().splitlines()]
    assert steps[0] == 10 and steps.count(60) == 1
    assert steps[-1] == 60 and 20 in steps
    # resumed, not restarted: the steps logged after the kill continue past the checkpoint
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]) if steps != sorted(steps) else None
    assert restart is None or steps[restart] > 10

    fresh = tmp_path / "fresh"
    harness("sweep", TOY, "--runs-dir", fresh, *slow, "--bind", "ToyColour.step_delay=0.0", check=False)
    # step_delay is part of the config, so compare against a fresh run of the identical config instead:
    harness("sweep", TOY, "--runs-dir", tmp_path / "same", *slow, check=True)
    same = next((tmp_path / "same" / "toy").glob("*/metrics.json"))
    assert json.loads(same.read_text())["per_view"] == json.loads((trial / "metrics.json").read_text())["per_view"]


def test_failing_trial_is_recorded_and_others_continue(runs_dir):
    proc = harness("sweep", TOY, "--runs-dir", runs_dir, "--bind", "Sweep.seeds=[0]",
                   "--bind", "Sweep.axes={'ToyColour.fail_at': [-1, 5]}")
    assert proc.returncode == 1
    states = {s["bindings"]["ToyColour.fail_at"]: s for s in _statuses(runs_dir).values()}
    assert states[-1]["state"] == "done"
    assert states[5]["state"] == "failed"
    assert states[5]["error"] == "RuntimeError: injected failure at step 5"
    assert "injected failure" in states[5]["traceback"]
    # failed trials are not retried unless asked
    again = harness("sweep", TOY, "--runs-dir", runs_dir, "--bind", "Sweep.seeds=[0]",
                    "--bind", "Sweep.axes={'ToyColour.fail_at': [-1, 5]}")
    assert "--retry-failed" in again.stdout + again.stderr


def test_training_time_validation_is_logged(runs_dir):
    harness("sweep", TOY, "--runs-dir", runs_dir, "--bind", "Sweep.seeds=[0]",
            "--bind", "Sweep.axes={'ToyColour.lr': [0.1]}", "--bind", "Trainer.validate_every=20",
            "--bind", "Trainer.validation_views=(0, 5)", check=True)
    log = [json.loads(line) for line in next(runs_dir.glob("toy/*/train.jsonl")).read_text().splitlines()]
    val = [row for row in log if "val_psnr" in row]
    assert [row["step"] for row in val] == [20, 40]
    assert all(5 < row["val_psnr"] < 40 for row in val)
