"""Helpers for the reliability tests (tests/test_reliability_*.py): a tiny toy experiment, trials run
in forked children (no interpreter start-up per run), fault injection, and record invariants."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest

import harness.run.registry  # noqa: F401  (run as `python -m tests.reliability_tools` too: register the configurables)
from harness.core import faults
from harness.core.records import TEMP_SUFFIX, create_trial_record
from harness.run import sweep

SCENE = {"size": 16, "n_train": 8, "n_test": 2}
HANG_S = 120  # a forked trial still running after this long is killed and reported as 'hung'
SETTINGS = """Trainer.method = @ToyColour
Trainer.iterations = 40
Trainer.checkpoint_every = 10
Trainer.log_every = 5
Trainer.progress_every = 5
Evaluation.metrics = ('psnr',)
Trainer.collapse_psnr = None  # ToyColour (a colour per ray-direction bucket) scores below the mean colour
ToyColour.batch_size = 64
Sweep.seeds = [0]
launch.cluster = 'debug'
"""


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    """A 16x16 procedural scene (8 train, 2 test views) in nerfstudio format."""
    from tests.test_data_street import generate

    return generate("tiny", tmp_path_factory.mktemp("scene"), **SCENE)


@pytest.fixture(scope="module")
def reference(tiny_scene, tmp_path_factory) -> dict:
    """final_state of an uninterrupted run of write_experiment(folder, tiny_scene) (no extra lines)."""
    folder = tmp_path_factory.mktemp("reference")
    trial = Trial(write_experiment(folder, tiny_scene), folder / "runs")
    trial.run_here()
    return final_state(trial)


def write_experiment(folder: Path, scene: Path, extra: str = "", name: str = "rel") -> Path:
    """An experiment file: ToyColour on `scene`, 40 iterations, checkpoints every 10; `extra` lines last."""
    path = Path(folder) / f"{name}.gin"
    path.write_text(f"import tests.fixtures.toy_method\nload_scene.path = '{scene}'\n"
                    f"load_scene.format = 'nerfstudio'\n{SETTINGS}{extra}")
    return path


class Trial:
    """One trial of an experiment with its record folder under `runs`."""

    def __init__(self, exp: Path, runs: Path, index: int = 0):
        self.exp = Path(exp)
        self.trial = sweep.expand(str(exp))[index]
        self.dir = Path(runs) / self.trial.experiment / self.trial.id
        create_trial_record(self.dir, {"trial_id": self.trial.id, "experiment": self.trial.experiment,
                                       "bindings": self.trial.bindings, "label": self.trial.label}, self.trial.config)

    def run(self, fault: str | None = None, kill_after: float | None = None, threads: int | None = None,
            log_file: Path | None = None) -> str:
        """Run the trial in a forked child; 'ok', 'error' (it raised) or 'killed' (SIGKILL, by a fault
        or by this parent after `kill_after` seconds); 'hung' if it had to be killed after HANG_S."""
        pid = os.fork()
        if pid == 0:  # child: never returns into pytest
            code = 1
            try:
                self._child(fault, threads, log_file)
                code = 0
            except BaseException:  # the record says what happened; the exit code says that it did
                logging.getLogger(__name__).exception("trial raised")
            finally:
                logging.shutdown()
                os._exit(code)
        deadline = time.monotonic() + (kill_after if kill_after is not None else HANG_S)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _outcome(status)
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "killed" if kill_after is not None else "hung"
            time.sleep(0.005)

    def run_here(self) -> dict:
        """Run the trial in this process (no faults): a reference run, which also imports what the
        forked runs need, so that each of them does not import it again."""
        from harness.run.trial import run_trial

        assert not os.environ.get(faults.ENV)
        sweep.trial_config(self.exp, [], self.trial.gin_bindings)
        return run_trial(self.dir)

    def _child(self, fault, threads, log_file) -> None:
        import torch

        from harness.run.trial import run_trial

        faults._hits.clear()
        if fault:
            os.environ[faults.ENV] = fault
        else:
            os.environ.pop(faults.ENV, None)
        # first thing: libgomp is not fork-safe, and a child that starts an OpenMP team of the
        # parent's size (if the parent ever ran one) waits forever for threads that did not fork
        torch.set_num_threads(threads or 1)
        root = logging.getLogger()
        root.handlers[:] = [logging.FileHandler(log_file)] if log_file else [logging.NullHandler()]
        root.setLevel(logging.INFO)
        sweep.trial_config(self.exp, [], self.trial.gin_bindings)
        run_trial(self.dir)

    # record contents
    def status(self) -> dict:
        return json.loads((self.dir / "status.json").read_text())

    def metrics(self) -> dict:
        return json.loads((self.dir / "metrics.json").read_text())

    def log_rows(self) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (self.dir / "train.jsonl").read_text().splitlines()]

    def checkpoints(self) -> list[str]:
        return sorted(p.name for p in (self.dir / "checkpoints").glob("step_*.pt"))


def _outcome(status: int) -> str:
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, f"child died of signal {os.WTERMSIG(status)}"
        return "killed"
    return "ok" if os.WEXITSTATUS(status) == 0 else "error"


def check_intact(trial_dir: Path) -> None:
    """What a kill or a failed write may leave: every record file complete. Every JSON file parses,
    train.jsonl has at most a torn last line, every checkpoint has a checksum that matches."""
    trial_dir = Path(trial_dir)
    for path in trial_dir.glob("*.json"):
        json.loads(path.read_text())  # raises on a half-written file
    log = trial_dir / "train.jsonl"
    if log.exists():
        for line in log.read_bytes().split(b"\n")[:-1]:  # the last one may be torn
            json.loads(line)
    for ckpt in (trial_dir / "checkpoints").glob("step_*.pt"):
        sums = ckpt.with_name(ckpt.name + ".sha256")
        assert sums.exists(), f"{ckpt} has no checksum"
        assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == sums.read_text().strip(), f"{ckpt} is corrupt"
    for png in (trial_dir / "renders").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def temp_files(trial_dir: Path) -> list[Path]:
    return [p for p in Path(trial_dir).rglob(f".*{TEMP_SUFFIX}")]


def final_state(trial: Trial) -> dict:
    """What an identical run must reproduce: metrics per view, the log without times, the final weights."""
    import torch

    from harness.run import checkpoints

    step, payload = checkpoints.load_latest(trial.dir / "checkpoints")
    metrics = trial.metrics()
    return {"per_view": metrics["per_view"], "psnr": metrics["psnr"], "iterations": metrics["iterations"],
            "log": trial.log_rows(), "step": step, "table": payload["method"]["table"].tolist(),
            "opt": torch.cat([v.flatten() for s in payload["method"]["opt"]["state"].values()
                              for v in s.values()]).tolist()}


def can_mount_tmpfs() -> bool:
    """Whether this machine lets a private mount namespace (unshare -rm) mount a tmpfs and remount it
    read-only (the full-disk and read-only tests)."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && "
                                                          "mount -o remount,ro /mnt"], capture_output=True)
    return probe.returncode == 0


def tmpfs_scenario(scene: Path, work: Path) -> dict:
    """Run inside a private mount namespace (unshare -rm): a trial on a tmpfs that fills up.

    The trial is killed after its step-10 checkpoint, the tmpfs is shrunk to what is used plus
    48 KiB (less than a checkpoint), the trial is re-run (and must fail on the full disk), the tmpfs
    is grown again and the trial re-run to the end. Returns what the test checks, as JSON values."""
    import subprocess

    work = Path(work)
    mnt = work / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    exp = write_experiment(work, scene, "ToyColour.buckets = 64\n")  # checkpoints of ~150 KiB
    reference = Trial(exp, mnt / "reference")
    reference.run_here()
    trial = Trial(exp, mnt / "runs")
    first = trial.run(fault="action=kill point=step nth=15")
    stat = os.statvfs(mnt)
    used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    subprocess.run(["mount", "-o", f"remount,size={used + 48 * 1024}", str(mnt)], check=True)
    full = trial.run()
    after_full = {"status": trial.status(), "checkpoints": trial.checkpoints(),
                  "files": sorted(str(p.relative_to(trial.dir)) for p in trial.dir.rglob("*"))}
    check_intact(trial.dir)
    subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
    last = trial.run()
    return {"outcomes": [first, full, last], "after_full": after_full, "trial_dir": str(trial.dir),
            "final_equal": last == "ok" and final_state(trial) == final_state(reference),
            "state": trial.status()["state"]}


if __name__ == "__main__":  # python -m tests.reliability_tools tmpfs SCENE WORK OUT
    import sys

    _, _, scene_dir, work_dir, out = sys.argv
    result = tmpfs_scenario(Path(scene_dir), Path(work_dir))
    Path(out).write_text(json.dumps(result))
