"""The trial store: one folder per computation, runs/.trials/<id>, linked from each experiment that
has the trial (runs/<exp>/<id>, a relative symlink), with its config.gin, identity.json and status.

A trial's folder is made when the trial is first launched (`materialise`), not when its sweep is
expanded: until then it is a pending entry of its experiment's sweep.json, which `find` reports as
a pending record. Expanding 10,000 trials therefore writes one index, not 50,000 files (creating a
file costs 0.3-0.7 ms on the 2-core machine's disk; docs/benchmarks.md)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from harness.core.errors import RecordError
from harness.core.records import TrialRecord, atomic_write_json, create_trial_record, write_error

log = logging.getLogger(__name__)

STORE = ".trials"  # runs/.trials/<id>: every trial's one folder, whichever experiments share it


def trial_dir(runs_dir: Path, trial) -> Path:
    """Where an experiment sees its trial: runs/<exp>/<id> (a link into the store)."""
    return Path(runs_dir) / trial.experiment / trial.id


def find(runs_dir: Path, trial) -> TrialRecord:
    """The trial's record, made or not (its folder exists once made, by this experiment or another):
    the experiment's own folder when it has one (a link into the store, or a real folder made before
    the store existed), else its place in the store."""
    link = trial_dir(runs_dir, trial)
    if link.is_symlink() or not link.is_dir():
        return TrialRecord(Path(runs_dir) / STORE / trial.id)
    return TrialRecord(link)


def materialise(runs_dir: Path, trial) -> TrialRecord:
    """Make the trial's folder, link and pending record (config.gin, status.json, identity.json),
    keeping whatever exists; note the experiment in status.json when the trial is shared."""
    record = create_trial_record(_place(runs_dir, trial), _meta(trial), trial.config)
    if trial.experiment not in experiments_of(record.status()):
        _add_experiment(record, trial.experiment)
    if trial.identity and not record.identity_path.exists():  # what the id hashes, for people and tools
        atomic_write_json(record.identity_path, trial.identity)
    return record


def _meta(trial) -> dict:
    return {"trial_id": trial.id, "experiment": trial.experiment, "bindings": trial.bindings,
            "label": trial.label, "experiments": [trial.experiment]}


def _place(runs_dir: Path, trial) -> Path:
    """The trial's real folder, runs/.trials/<id>, linked from runs/<exp>/<id>: one computation, one
    folder and one lock, whichever experiments have it. A real folder already at runs/<exp>/<id>
    (made before the store existed) is used as it is."""
    link = trial_dir(runs_dir, trial)
    if link.is_dir() and not link.is_symlink():
        return link
    real = Path(runs_dir) / STORE / trial.id
    try:
        real.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # another sweep linked it meanwhile
                os.symlink(os.path.relpath(real, link.parent), link, target_is_directory=True)
    except OSError as exc:
        raise write_error(real if not real.is_dir() else link, exc) from None
    return real


def experiments_of(status: dict) -> list:
    """The experiments a trial is noted in (records made before the store name only one)."""
    return status.get("experiments") or [status.get("experiment")]


def _add_experiment(record: TrialRecord, experiment: str) -> None:
    """Note in status.json that another experiment has this trial too (its bindings there are its
    own, in its sweep.json). Under the trial's lock: a process running the trial (which holds it)
    must not have its status rewritten underneath; it is only a note, so it is skipped then."""
    try:
        with record.lock():
            record.update(experiments=sorted({*experiments_of(record.status()), experiment} - {None}))
    except RecordError:
        log.debug("trial %s is running elsewhere: not noting experiment %s", record.dir.name, experiment)


def note_data_warnings(record: TrialRecord, warnings: list[str]) -> None:
    """Keep the doctor's warnings about the trial's scene in its status.json (written only when they
    changed; under the trial's lock, skipped when a process is running the trial elsewhere)."""
    if record.status().get("data_warnings", []) == warnings:
        return
    try:
        with record.lock():
            record.update(data_warnings=list(warnings))
    except RecordError:
        log.debug("trial %s is running elsewhere: not noting its data warnings", record.dir.name)
