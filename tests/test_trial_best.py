"""Best-by-validation checkpoints: `best_<step>.pt` follows the highest validation PSNR in train.jsonl,
survives keep-N pruning and resume, and `Trainer.evaluate_with = 'best'` scores the test split with it."""

import re
from pathlib import Path

import gin
import pytest
import torch

from harness.core.errors import ConfigError
from harness.run import checkpoints
from harness.run.trial import Trainer
from tests.fixtures.toy_method import ToyColour
from tests.reliability_tools import SETTINGS, Trial

PEAK = 20  # PeakColour's validation PSNR is highest at this step (asserted below, not assumed)


@gin.configurable
class PeakColour(ToyColour):
    """ToyColour that trains normally until step `peak_at`, then replaces its colours with fresh random
    ones every step: validation PSNR rises to `peak_at` and falls back to a random table's after it."""

    def __init__(self, scene, seed, peak_at: int = PEAK, **kw):
        super().__init__(scene, seed, **kw)
        self.peak_at = peak_at

    def train_step(self, step, batch):
        if step < self.peak_at:  # train_step(step) makes the state validated as step + 1
            return super().train_step(step, batch)
        with torch.no_grad():
            self.table.copy_(torch.rand(self.table.shape, generator=torch.Generator().manual_seed(1000 + step)))
        return {"loss": 0.0}


def _experiment(folder: Path, scene: Path, extra: str = "", name: str = "best") -> Path:
    """The reliability tests' toy experiment with PeakColour, validated every 5 steps on both test views."""
    path = Path(folder) / f"{name}.gin"
    settings = SETTINGS.replace("@ToyColour", "@PeakColour").replace("ToyColour.", "PeakColour.")
    path.write_text(f"import tests.test_trial_best\nload_scene.path = '{scene}'\nload_scene.format = 'nerfstudio'\n"
                    f"{settings}Trainer.validate_every = 5\nTrainer.validation_views = (0, 1)\n{extra}")
    return path


def _val(trial: Trial) -> dict[int, float]:
    """Validation PSNR by step, as the trainer logged it in train.jsonl."""
    return {row["step"]: row["val_psnr"] for row in trial.log_rows() if "val_psnr" in row}


def _best_files(trial: Trial) -> list[str]:
    return sorted(p.name for p in (trial.dir / "checkpoints").glob("best_*"))


@pytest.fixture(scope="module")
def best_run(tiny_scene, tmp_path_factory) -> Trial:
    """One uninterrupted trial with evaluate_with = 'best' (run in this process)."""
    folder = tmp_path_factory.mktemp("best")
    trial = Trial(_experiment(folder, tiny_scene, "Trainer.evaluate_with = 'best'\n"), folder / "runs")
    trial.run_here()
    return trial


def test_best_checkpoint_holds_the_highest_logged_validation_psnr(best_run):
    val = _val(best_run)
    assert sorted(val) == [5, 10, 15, 20, 25, 30, 35, 40]
    top = max(val, key=val.get)
    assert top == PEAK and val[PEAK] > val[40]  # the best is not the last state
    assert _best_files(best_run) == [f"best_{PEAK:08d}.pt", f"best_{PEAK:08d}.pt.sha256"]  # older bests removed
    step, payload = checkpoints.load_best(best_run.dir / "checkpoints")
    assert (step, payload["step"], payload["psnr"]) == (top, top, val[top])
    assert checkpoints.load_latest(best_run.dir / "checkpoints")[0] == 40  # not taken for a step checkpoint
    assert best_run.metrics()["best_validation"] == {"step": top, "psnr": val[top], "split": "test"}


def test_evaluate_with_best_scores_the_best_state(best_run, tiny_scene, tmp_path):
    val = _val(best_run)
    metrics = best_run.metrics()
    assert metrics["evaluated_checkpoint"] == "best" and metrics["iterations"] == 40
    # the validation views are the whole test split, so the test PSNR is the validation PSNR of that state
    assert metrics["psnr"] == pytest.approx(val[PEAK], abs=1e-9)
    latest = Trial(_experiment(tmp_path, tiny_scene), tmp_path / "runs")  # same trial, evaluate_with 'latest'
    assert latest.run() == "ok"
    assert _val(latest) == val
    assert latest.metrics()["evaluated_checkpoint"] == "latest"
    assert latest.metrics()["psnr"] == pytest.approx(val[40], abs=1e-9)
    assert latest.metrics()["best_validation"] == best_run.metrics()["best_validation"]


def test_keep_one_checkpoint_never_deletes_the_best(tiny_scene, tmp_path):
    trial = Trial(_experiment(tmp_path, tiny_scene, "Trainer.checkpoint_every = 5\nTrainer.keep_checkpoints = 1\n"),
                  tmp_path / "runs")
    assert trial.run() == "ok"
    assert trial.checkpoints() == ["step_00000040.pt"]  # seven older step checkpoints pruned
    assert _best_files(trial) == [f"best_{PEAK:08d}.pt", f"best_{PEAK:08d}.pt.sha256"]
    checkpoints.tidy(trial.dir / "checkpoints")
    checkpoints.save(trial.dir / "checkpoints", 41, {"step": 41}, keep=1)
    assert trial.checkpoints() == ["step_00000041.pt"] and len(_best_files(trial)) == 2
    assert checkpoints.load_best(trial.dir / "checkpoints")[0] == PEAK


def test_resume_keeps_the_better_best(tiny_scene, tmp_path):
    """Killed at step 33 (after the step-30 checkpoint, past the peak): the resumed run's validations
    at 35 and 40 are worse than the best read back from best_20.pt, so they do not replace it."""
    trial = Trial(_experiment(tmp_path, tiny_scene, "Trainer.evaluate_with = 'best'\n"), tmp_path / "runs")
    assert trial.run(fault="action=kill point=step nth=33") == "killed"
    assert trial.checkpoints() == ["step_00000020.pt", "step_00000030.pt"]
    assert _best_files(trial) == [f"best_{PEAK:08d}.pt", f"best_{PEAK:08d}.pt.sha256"]
    assert trial.run() == "ok"
    assert trial.status()["attempts"] == 2
    val = _val(trial)
    assert sorted(val) == [5, 10, 15, 20, 25, 30, 35, 40] and max(val, key=val.get) == PEAK
    assert _best_files(trial) == [f"best_{PEAK:08d}.pt", f"best_{PEAK:08d}.pt.sha256"]
    assert trial.metrics()["best_validation"] == {"step": PEAK, "psnr": val[PEAK], "split": "test"}
    assert trial.metrics()["psnr"] == pytest.approx(val[PEAK], abs=1e-9)


def test_interrupted_best_write_leaves_the_previous_best(tmp_path):
    """A kill between a new best's checksum and its data leaves a checksum alone: tidy removes it and
    the previous best still loads."""
    folder = tmp_path / "checkpoints"
    checkpoints.save_best(folder, 10, {"step": 10, "psnr": 20.0})
    (folder / "best_00000015.pt.sha256").write_text("0" * 64)
    checkpoints.tidy(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["best_00000010.pt", "best_00000010.pt.sha256"]
    assert checkpoints.load_best(folder)[1]["psnr"] == 20.0
    assert checkpoints.load_latest(folder) is None and checkpoints.newest_valid(folder) is None


@pytest.mark.parametrize("kw, match", [
    ({"evaluate_with": "last"}, r"^Trainer\.evaluate_with = 'last': expected 'latest' or 'best'$"),
    ({"evaluate_with": "best"}, r"^Trainer\.evaluate_with = 'best' needs validation: set Trainer\.validate_every > 0$"),
    ({"evaluate_with": None, "validate_every": 5}, r"^Trainer\.evaluate_with = None: expected 'latest' or 'best'$"),
])
def test_evaluate_with_config_errors(kw, match):
    gin.clear_config()  # no bindings left over from a trial run in this process
    with pytest.raises(ConfigError) as info:
        Trainer(method=ToyColour, **kw)
    assert re.match(match, str(info.value).splitlines()[0])  # gin appends the configurable on later lines
    assert Trainer(method=ToyColour, evaluate_with="best", validate_every=5).evaluate_with == "best"
    assert Trainer(method=ToyColour).evaluate_with == "latest"


def test_evaluate_with_error_is_one_line_when_the_sweep_is_expanded(tiny_scene, tmp_path):
    from harness.run import sweep

    exp = _experiment(tmp_path, tiny_scene, "Trainer.validate_every = 0\nTrainer.evaluate_with = 'best'\n")
    with pytest.raises(ConfigError, match=r"Trainer\.evaluate_with = 'best' needs validation") as info:
        sweep.expand(str(exp))
    assert "\n" not in str(info.value)


def test_validation_prefers_the_val_split_over_test():
    from types import SimpleNamespace

    from harness.run.trial import validation_split

    assert validation_split(SimpleNamespace(splits={"train": 0, "val": 1, "test": 2})) == "val"
    assert validation_split(SimpleNamespace(splits={"train": 0, "test": 2})) == "test"
    assert validation_split(SimpleNamespace(splits={"train": 0})) is None
