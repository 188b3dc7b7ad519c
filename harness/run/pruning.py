"""The trial runner's side of a search's early stopping: report validation PSNR to the study, stop
the trial when the pruner says so.

A trial launched by a search (harness/run/search.py) finds `search.json` in its folder: the study's
storage, its name, the Optuna trial number and the pruner. Neither is in the trial's Gin config, so
its id stays the hash of what it computes. `at_validation` is called by the trainer after each
validation (and that step's checkpoint); for a trial without `search.json`, or whose Optuna trial is
no longer running (told already, e.g. a pruned trial resumed by a search without that pruner), it
does nothing, and nothing is imported. Pruned: the step is checkpointed (if it was not a checkpoint
step already) and `TrialPruned` ends the trial, recorded `pruned` with `pruned_at` and `pruned_value`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.records import atomic_write_json

log = logging.getLogger(__name__)

SEARCH_FILE = "search.json"  # in the trial's folder: {storage, study, number, pruner}


class TrialPruned(HarnessError):
    """The search's pruner stopped the trial at a rung (`step`, validation PSNR `value`)."""

    def __init__(self, step: int, value: float):
        super().__init__(f"pruned by the search at step {step} (validation PSNR {value:.3f})")
        self.step, self.value = step, value


def write_search_file(trial_dir: Path, storage: str, study: str, number: int, pruner: dict | None) -> None:
    """Tell a trial about its search (the driver, before launching it)."""
    atomic_write_json(Path(trial_dir) / SEARCH_FILE, {"storage": str(storage), "study": study, "number": number,
                                                       "pruner": pruner})


_reporters: dict[tuple[str, str], _Reporter | None] = {}


def at_validation(trial_dir: Path, step: int, psnr: float, iterations: int, save: Callable[[], None]) -> None:
    """After a validation at `step`: report `psnr` to the trial's study, and raise TrialPruned (after
    `save()` checkpoints the step unless a checkpoint of it exists) when its pruner stops it. The last
    validation (`step` == `iterations`) is reported, never pruned: the training is done by then."""
    path = Path(trial_dir) / SEARCH_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    key = (str(path), text)
    if key not in _reporters:
        _reporters[key] = _Reporter.open(json.loads(text))
    reporter = _reporters[key]
    if reporter is None or not reporter.report(step, psnr, may_prune=step < iterations):
        return
    if not (Path(trial_dir) / "checkpoints" / f"step_{step}.pt").exists():
        save()
    log.info("trial %s pruned at step %d (validation PSNR %.3f)", Path(trial_dir).name, step, psnr)
    raise TrialPruned(step, psnr)


class _Reporter:
    def __init__(self, trial, storage, trial_id: int):
        self.trial, self.storage, self.trial_id = trial, storage, trial_id

    @classmethod
    def open(cls, info: dict) -> _Reporter | None:
        import optuna

        from harness.run.search_space import make_pruner, open_storage

        storage = open_storage(Path(info["storage"]))
        study = optuna.load_study(study_name=info["study"], storage=storage, pruner=make_pruner(info["pruner"]))
        study_id = storage.get_study_id_from_name(info["study"])
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(info["number"]))
        return cls(optuna.trial.Trial(study, trial_id), storage, trial_id)

    def report(self, step: int, value: float, may_prune: bool) -> bool:
        """Report; whether the pruner stops the trial. A trial the study has told already is left alone."""
        from optuna.trial import TrialState

        frozen = self.storage.get_trial(self.trial_id)
        if frozen.state != TrialState.RUNNING:
            return False
        if step not in frozen.intermediate_values:  # a resume repeats the validation of its checkpoint step
            self.trial.report(value, step)
        return may_prune and self.trial.should_prune()
