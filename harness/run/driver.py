"""`harness sweep`: expand an experiment, prepare trial records, launch what is left to run."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gin

from harness.core.errors import ConfigError, DataError
from harness.core.records import FINAL_STATES, TrialRecord, atomic_write_json, now_iso, read_json
from harness.run import config as cfg
from harness.run import launch, store
from harness.run import settings as settings_of
from harness.run.sweep import Trial, expand, read_spec

log = logging.getLogger(__name__)


def read_experiment(experiment: str, user_bindings: list[str], overrides: dict) -> tuple[dict, dict]:
    """The experiment's Sweep and launch settings (command-line overrides applied), from one parse."""
    spec = read_spec(cfg.experiment_path(experiment), list(user_bindings))
    return spec, settings_of.launch(**{k: v for k, v in overrides.items() if v is not None})


def prepare(trials: list[Trial], runs_dir: Path, exp_file: Path, user_bindings: list[str]) -> list[TrialRecord]:
    """Each trial's record and the experiment's index of them (sweep.json). Records already made, by
    this experiment or (a shared trial) by another, are kept and linked here; a new trial's record
    stays a pending entry of sweep.json until it is launched (store.materialise)."""
    records = [store.find(runs_dir, t) for t in trials]
    made = [i for i, r in enumerate(records) if r.dir.is_dir()]
    # threads: a made record is a few stats and reads, and a few fsynced writes when it is new here
    with ThreadPoolExecutor(max_workers=16) as pool:
        for i, record in zip(made, pool.map(lambda i: store.materialise(runs_dir, trials[i]), made)):
            records[i] = record
    exp_dir = Path(runs_dir) / trials[0].experiment
    sweep = {"experiment": trials[0].experiment, "file": str(exp_file), "user_bindings": list(user_bindings),
             "trials": [{"id": t.id, "bindings": t.bindings} for t in trials]}
    old = read_json(exp_dir / "sweep.json", default={}) or {}
    if {k: v for k, v in old.items() if k != "updated"} != sweep:  # a finished sweep re-run writes nothing
        atomic_write_json(exp_dir / "sweep.json", {**sweep, "updated": now_iso()})
    return records


def select(trials: list[Trial], records: list[TrialRecord], retry_failed: bool, runs_dir: Path) -> tuple[list, dict]:
    """Which trials to run now, and why the others are skipped."""
    todo, skipped = [], {}
    for t, r in zip(trials, records):
        state = r.state
        if state == "done":
            skipped[t.id] = "done"
        elif state in FINAL_STATES and not retry_failed:
            skipped[t.id] = f"{state} (use --retry-failed to run again)"
        else:
            todo.append(launch.Pending(t, r, Path(runs_dir)))
    return todo, skipped


def run_sweep(experiment: str, user_bindings: list[str], runs_dir: Path, overrides: dict) -> dict:
    """Run (or resume) a sweep; returns a summary {trial id: outcome}."""
    t0 = time.perf_counter()
    exp_file = cfg.experiment_path(experiment)
    spec, settings = read_experiment(experiment, user_bindings, overrides)
    _check_data_parallel(settings)
    if spec.get("search") is not None:  # Optuna's ask/tell over ordinary trials (harness/run/search.py)
        from harness.run.search import run_search

        def preflight(cells: list[Trial]) -> None:
            _preflight(experiment, user_bindings, [launch.Pending(t, store.find(runs_dir, t), Path(runs_dir))
                                                   for t in cells])

        return run_search(experiment, user_bindings, runs_dir, spec, settings, preflight)
    trials = expand(experiment, user_bindings, spec=spec)
    if not trials:
        raise ConfigError(f"{exp_file}: the sweep has no trials")
    launch.check_cluster(settings)
    records = prepare(trials, runs_dir, exp_file, user_bindings)
    _handle_stale(trials[0].experiment, records, settings["stale"])
    todo, skipped = select(trials, records, settings["retry_failed"], runs_dir)
    for tid, why in skipped.items():
        log.info("trial %s skipped: %s", tid, why)
    if not todo:
        log.info("all %d trials of %s are done or skipped (%.1f s)", len(trials), experiment, time.perf_counter() - t0)
        return {tid: why for tid, why in skipped.items()}
    _preflight(experiment, user_bindings, todo)
    log.info("%s: running %d of %d trials on cluster '%s'", experiment, len(todo), len(trials), settings["cluster"])
    folder = Path(runs_dir) / trials[0].experiment / ".submitit"
    if settings["cluster"] == "slurm":
        with _submit_lock(folder.parent):  # two sweeps started at once queue each trial once
            todo, queued = launch.unqueued(todo, settings["retry_failed"])
            jobs = launch.submit_slurm(settings, exp_file, user_bindings, todo, folder) if todo else []
        outcome = {**skipped, **queued,
                   **{p.trial.id: f"{launch.SUBMITTED} as {job.job_id}" for p, job in zip(todo, jobs)}}
        if settings["wait"]:  # on the trials this sweep queued and those an earlier sweep left queued
            waiting = [r for t, r in zip(trials, records)
                       if outcome[t.id].startswith((launch.SUBMITTED, launch.QUEUED_EARLIER))]
            log.info("%s: waiting for %d trials on SLURM", experiment, len(waiting))
            outcome.update(launch.wait_slurm(waiting))
        return outcome
    outcome = launch.run_local(settings, exp_file, user_bindings, todo, folder)
    return {**skipped, **outcome}


def _check_data_parallel(settings: dict) -> None:
    """Several processes per trial need a method with the `data_parallel` capability: one line here."""
    if settings.get("tasks_per_node", 1) * settings.get("nodes", 1) == 1:
        return
    from harness.run.settings import check_parallel

    try:
        reference = gin.query_parameter("Trainer.method")
    except ValueError:  # no method bound: the trial's own checks say so
        return
    check_parallel(settings, getattr(getattr(reference, "configurable", None), "wrapped", None))


def _handle_stale(experiment: str, records: list[TrialRecord], policy: str) -> None:
    """Done trials computed by other code: one line, then the policy (harness/core/staleness.py)."""
    from harness.core import staleness

    if policy == "ignore":
        return
    stale = staleness.find_stale(records)
    if not stale:
        return
    done = sum(1 for r in records if r.state == "done")
    log.warning("%s", staleness.summary(experiment, stale, done, policy))
    if policy == "rerun":
        for r in records:
            if r.dir.name in stale:
                staleness.archive_for_rerun(r, stale[r.dir.name])


@contextlib.contextmanager
def _submit_lock(exp_dir: Path):
    exp_dir.mkdir(parents=True, exist_ok=True)
    with open(exp_dir / ".submit.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released on close, or when the process dies
        yield


def _preflight(experiment: str, user_bindings: list[str], todo: list[launch.Pending]) -> None:
    """Checks that must stop a sweep before any training (e.g. LPIPS weights missing, broken scene data)."""
    import gin

    from harness.core.data.load_scene import scene_root
    from harness.run.evaluation import Evaluation

    cfg.parse([cfg.experiment_path(experiment)], list(user_bindings) + list(todo[0].trial.gin_bindings))
    Evaluation().preflight()
    try:
        path = gin.query_parameter("load_scene.path")
    except ValueError:
        raise ConfigError(f"{cfg.experiment_path(experiment)}: load_scene.path is not set "
                          f"(include a scene, e.g. base/scenes/lego_100.gin)") from None
    scene_root(path, cfg.query("load_scene.format", "blender"))
    _check_data(cfg.experiment_path(experiment), user_bindings, todo)


def _check_data(exp_file: Path, user_bindings: list[str], todo: list[launch.Pending]) -> None:
    """The doctor on each distinct scene of the trials to run: errors stop the sweep (one line each),
    warnings are logged once and go into the records of the trials launched on that scene."""
    from harness.core.data.doctor import errors_message
    from harness.run.scene_checks import check_trials

    t0 = time.perf_counter()
    checks = check_trials(exp_file, user_bindings, [p.trial for p in todo])
    errors = [f for c in checks for f in c.findings if f.severity == "error"]
    if errors:
        raise DataError(errors_message(errors))
    warnings = {}
    for c in checks:
        for line in c.warnings:
            log.warning("data: %s", line)
        warnings.update(dict.fromkeys(c.trial_ids, c.warnings))
    for p in todo:
        p.data_warnings = warnings.get(p.trial.id, [])
    log.info("data checks: %d scene(s) in %.1f s", len(checks), time.perf_counter() - t0)
