"""`harness sweep` of an experiment with `Sweep.search`: Optuna's ask/tell over ordinary trials.

The grid (scenes x axes x seeds) still expands; each grid cell gets its own Optuna study, named from
the experiment, the cell's bindings and a hash of what the study is (`SearchSpec.study_key`), in one
store per experiment, `runs/EXP/study.journal` (Optuna's JournalStorage on a JournalFileBackend; why
not SQLite: `search_space.open_storage`). The driver asks the study for a configuration, makes it an
ordinary trial (its bindings on top of the cell's, its id the hash of its config, as for any trial),
runs it with the harness's machinery (local, debug or SLURM jobs), and tells the study the trial's
objective from its records. Hence:
- a suggested configuration whose trial is already done (by this search, an earlier one, or any
  experiment) is told from its records, without training;
- re-running the sweep continues the study: trials already told count toward `trials`; trials asked
  but not told (the driver was killed, or a SLURM sweep returned after submitting) are taken up
  again (their records resume from their checkpoints, a live SLURM job is waited for), never asked
  twice;
- the trial learns its study from `search.json` in its folder, not from its config
  (harness/run/pruning.py), and reports validation PSNR to it at each validation; the pruner may
  stop it at a rung (`pruned`, checkpoint kept). A pruned trial suggested to a study without a
  pruner resumes from that checkpoint and trains on (no step twice).

Samplers are seeded per ask (seed + the trial's number; Sobol keeps one seed, its position in the
sequence is in the study), so a search is a function of its seed and its history: a driver killed
and re-run suggests what an uninterrupted one would (with `parallel` 1; with more, TPE's suggestions
depend on which trials have finished when it is asked).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import ConfigError
from harness.core.records import FINAL_STATES, TrialRecord, atomic_write_json, now_iso, read_json
from harness.run import config as cfg
from harness.run import launch, store
from harness.run import search_space as ss
from harness.run.pruning import write_search_file
from harness.run.sweep import Trial, expand

log = logging.getLogger(__name__)

STUDY_FILE = "study.journal"  # runs/EXP/study.journal: every study of the experiment
INDEX_FILE = "search.json"  # runs/EXP/search.json: the studies of the experiment's search, for status and reports


@dataclass
class Cell:
    """A grid cell: its grid trial (never run itself: its bindings are the cell's), study and pruner."""

    grid: Trial
    name: str
    pruner: dict | None  # search_space.make_pruner's settings, also given to the trials
    study: Any = None


@dataclass
class Work:
    """One Optuna trial of a cell and the harness trial it is."""

    cell: Cell
    trial: Any  # optuna.trial.Trial
    pending: launch.Pending

    @property
    def id(self) -> str:
        return self.pending.trial.id


def _cell_bindings(grid: Trial) -> dict:
    return {k: v for k, v in grid.bindings.items() if k not in ("scene", "seed")}


def search_trial(experiment: str, user_bindings, spec: dict, grid: Trial, params: dict,
                 require_data: bool = True) -> Trial:
    """The trial of a cell with the searched `params` bound: expanded as a one-point grid, so its id,
    config and checks are exactly those of the same configuration written as a grid."""
    b = grid.bindings
    one = {**spec, "axes": {**{k: [v] for k, v in _cell_bindings(grid).items()},
                            **{p.key: [params[p.key]] for p in spec["search"].space}},
           "zipped": {}, "seeds": [b["seed"]], "scenes": [b["scene"]] if "scene" in b else [], "exclude": [],
           "search": None}
    return expand(experiment, list(user_bindings), require_data=require_data, spec=one)[0]


def plan(experiment: str, user_bindings, spec: dict, require_data: bool = True) -> list[Cell]:
    """The grid cells with their study names, each checked on a probe trial (the space's lower
    bounds and first choices): bindings no trial reads, settings out of range, an objective the trials
    do not record, a pruner without validation: one ConfigError line, before anything is made."""
    s: ss.SearchSpec = spec["search"]
    grid = expand(experiment, list(user_bindings), require_data=require_data, spec={**spec, "search": None})
    cells = []
    for g in grid:
        try:
            probe = search_trial(experiment, user_bindings, spec, g, {p.key: p.probe() for p in s.space},
                                 require_data)
        except ValueError as exc:  # Gin: a space key naming no configurable or parameter
            raise ConfigError(f"{cfg.experiment_path(experiment)}: Sweep.search space: "
                              f"{str(exc).strip().splitlines()[0]}") from None
        op = probe.identity.get("operative", {})
        trainer, evaluation = op.get("Trainer", {}), op.get("Evaluation", {})
        validate_every, iterations = int(trainer.get("validate_every") or 0), int(trainer.get("iterations") or 0)
        try:
            ss.check_against_config(s, tuple(evaluation.get("metrics") or ("psnr",)), validate_every, iterations)
        except ConfigError as exc:
            raise ConfigError(f"{cfg.experiment_path(experiment)}: {exc}") from None
        pruner = None if not s.pruner else {"kind": s.pruner, "min_steps": s.min_steps or validate_every,
                                            "reduction_factor": s.reduction_factor, "max_steps": iterations}
        cells.append(Cell(g, f"{g.experiment}[{g.label}]#{s.study_key(g.id)}", pruner))
    return cells


def make_sampler(s: ss.SearchSpec, number: int):
    """The sampler for the ask of trial `number`: seeded with seed + number (Sobol: the seed; the
    sequence position is kept in the study), so suggestions do not depend on when the driver started."""
    import optuna

    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed + number)
    if s.sampler == "qmc":
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=s.seed,
                                          independent_sampler=optuna.samplers.RandomSampler(seed=s.seed + number),
                                          warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=s.seed + number, n_startup_trials=s.startup_trials)


def open_studies(runs_dir: Path, cells: list[Cell], s: ss.SearchSpec, create: bool = True) -> Path:
    """Load (or create) each cell's study in runs/EXP/study.journal; returns the store's path."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the harness logs each trial itself
    path = Path(runs_dir) / cells[0].grid.experiment / STUDY_FILE
    if not create and not path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = ss.open_storage(path)
    for c in cells:
        if create:
            c.study = optuna.create_study(storage=storage, study_name=c.name, direction=s.direction,  # type: ignore[arg-type]
                                          sampler=make_sampler(s, 0), pruner=ss.make_pruner(c.pruner),
                                          load_if_exists=True)
            if "cell" not in c.study.user_attrs:
                c.study.set_user_attr("cell", c.grid.bindings)
                c.study.set_user_attr("objective", s.objective)
        else:
            with contextlib.suppress(KeyError):
                c.study = optuna.load_study(study_name=c.name, storage=storage)
    return path


def describe(experiment: str, user_bindings, spec: dict, runs_dir: Path) -> dict:
    """What `harness sweep --dry-run` shows of a search: the cells, their studies, trials told,
    running (asked, not told) and left. Reads the store if there is one; creates nothing."""
    s: ss.SearchSpec = spec["search"]
    cells = plan(experiment, user_bindings, spec, require_data=False)
    open_studies(runs_dir, cells, s, create=False)
    out: dict[str, Any] = {"search": s.describe(), "cells": []}
    for c in cells:
        trials = c.study.get_trials(deepcopy=False) if c.study is not None else []
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        best = None
        if c.study is not None and states.get("complete"):
            best = {"value": c.study.best_value, "params": c.study.best_params}
        out["cells"].append({"cell": c.grid.bindings, "study": c.name, "states": states,
                             "left": max(0, s.trials - len(trials)), "best": best})
    return out


@contextlib.contextmanager
def _flock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released on close, or when the process dies
        yield


class Search:
    """One run of an experiment's search (one `harness sweep`)."""

    def __init__(self, experiment: str, user_bindings, runs_dir: Path, spec: dict, settings: dict):
        self.experiment, self.user_bindings, self.spec = experiment, list(user_bindings), spec
        self.s: ss.SearchSpec = spec["search"]
        self.exp_file = cfg.experiment_path(experiment)
        self.runs_dir = Path(runs_dir)
        self.settings = {**settings, "parallel": self.s.parallel or settings["parallel"]}
        self.cells = plan(experiment, user_bindings, spec)
        self.exp_dir = self.runs_dir / self.cells[0].grid.experiment
        self.storage_path = self.exp_dir / STUDY_FILE
        self.folder = self.exp_dir / ".submitit"
        self._next_cell = 0

    def open(self) -> None:
        """Create or load the studies (after the pre-flight checks: a bad sweep makes nothing)."""
        self.storage_path = open_studies(self.runs_dir, self.cells, self.s)
        self._write_index()

    # --- the study side ---------------------------------------------------------------------
    def _write_index(self) -> None:
        index = {"experiment": self.cells[0].grid.experiment, "storage": STUDY_FILE, "search": self.s.describe(),
                 "objective": self.s.objective, "direction": self.s.direction, "sampler": self.s.sampler,
                 "pruner": self.s.pruner, "trials": self.s.trials,
                 "space": {p.key: p.as_json() for p in self.s.space},
                 "studies": [{"name": c.name, "cell": c.grid.bindings, "pruner": c.pruner} for c in self.cells]}
        old = read_json(self.exp_dir / INDEX_FILE, default={}) or {}
        if {k: v for k, v in old.items() if k != "updated"} != index:
            atomic_write_json(self.exp_dir / INDEX_FILE, {**index, "updated": now_iso()})

    def _note_trial(self, t: Trial) -> None:
        """List the trial in runs/EXP/sweep.json (status and reports read its bindings there)."""
        path = self.exp_dir / "sweep.json"
        sweep = read_json(path, default={}) or {}
        trials = sweep.get("trials", []) if sweep.get("search") else []
        if any(e["id"] == t.id for e in trials):
            return
        atomic_write_json(path, {"experiment": t.experiment, "file": str(self.exp_file),
                                 "user_bindings": self.user_bindings, "search": True,
                                 "trials": [*trials, {"id": t.id, "bindings": t.bindings}], "updated": now_iso()})

    def _work(self, cell: Cell, otrial) -> Work | None:
        """The harness trial of an Optuna trial (None, told FAIL, when its parameters are incomplete: a
        driver killed inside `ask`)."""
        import optuna

        params = otrial.params
        if set(params) != {p.key for p in self.s.space}:
            cell.study.tell(otrial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            return None
        t = search_trial(self.experiment, self.user_bindings, self.spec, cell.grid, params)
        if otrial.user_attrs.get("trial_id") != t.id:
            otrial.set_user_attr("trial_id", t.id)
        self._note_trial(t)
        return Work(cell, otrial, launch.Pending(t, store.find(self.runs_dir, t), self.runs_dir))

    def resumable(self) -> list[Work]:
        """Trials asked but not told (the driver was killed, or a SLURM sweep returned), oldest first."""
        import optuna

        out = []
        storage = ss.open_storage(self.storage_path)
        for c in self.cells:
            study_id = None
            for ft in c.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                study_id = study_id if study_id is not None else storage.get_study_id_from_name(c.name)
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, ft.number)
                w = self._work(c, optuna.trial.Trial(c.study, trial_id))
                if w is not None:
                    out.append(w)
        return out

    def ask(self) -> Work | None:
        """A new trial from the next cell whose study has fewer than `trials` (round robin); None
        when every study has its trials. Counting and asking hold a lock, so two drivers of one
        experiment never ask more than `trials`."""
        with _flock(self.exp_dir / ".search.lock"):
            for _ in range(len(self.cells)):
                cell = self.cells[self._next_cell % len(self.cells)]
                self._next_cell += 1
                n = len(cell.study.get_trials(deepcopy=False))
                if n >= self.s.trials:
                    continue
                cell.study.sampler = make_sampler(self.s, n)
                otrial = cell.study.ask({p.key: p.distribution() for p in self.s.space})
                w = self._work(cell, otrial)
                if w is not None:
                    log.info("%s: trial #%d (of %d) asked: %s -> %s", cell.name, otrial.number, self.s.trials,
                             ", ".join(f"{k}={v!r}" for k, v in otrial.params.items()), w.id)
                    return w
        return None

    def _replay(self, w: Work, record: TrialRecord, upto: int | None = None) -> None:
        """Report a trial's logged validation PSNRs to its study (steps not reported yet), so a reused
        trial is a competitor at the pruner's rungs and its curve is in the study."""
        reported = w.cell.study.get_trials(deepcopy=False)[w.trial.number].intermediate_values
        for row in record.read_log():
            step = int(row.get("step", 0))
            if "val_psnr" in row and step not in reported and (upto is None or step <= upto):
                w.trial.report(float(row["val_psnr"]), step)
                if w.cell.pruner:
                    w.trial.should_prune()  # records the value at a rung (the verdict is not used)

    def settle(self, w: Work, after_run: bool = False) -> str | None:
        """Tell the study the trial's outcome if its record has one; None when it must (still) run.

        done -> its objective; collapsed -> its objective (a poor value, it is a result), FAIL
        without one; pruned -> PRUNED in a study with a pruner, else None (it resumes from its rung's
        checkpoint); failed, diverged, cancelled -> FAIL (run again with --retry-failed, unless it
        was just run)."""
        from optuna.trial import TrialState

        record = w.pending.record = store.find(self.runs_dir, w.pending.trial)
        if not record.dir.is_dir():
            return None
        status = record.status()
        state = status.get("state", "pending")
        if state not in FINAL_STATES:
            return None
        if state == "pruned" and not w.cell.pruner:
            return None  # promoted: resumes from the checkpoint of the step it was stopped at
        if state in ("failed", "diverged", "cancelled") and self.settings["retry_failed"] and not after_run:
            return None
        if state == "done" and not after_run and self._rerun_stale(w, record, status):
            return None
        w.pending.record = store.materialise(self.runs_dir, w.pending.trial)  # linked into this experiment
        study = w.cell.study
        if state in ("done", "collapsed"):
            self._replay(w, record)
            value = ss.objective_value(self.s.objective, record.metrics(), record.read_log())
            if value is None:
                study.tell(w.trial, state=TrialState.FAIL, skip_if_finished=True)
                return f"{state}, without a value of {self.s.objective}"
            study.tell(w.trial, value, skip_if_finished=True)
            log.info("%s: trial #%d %s%s: %s = %.4f", w.cell.name, w.trial.number, w.id,
                     "" if after_run else " (reused)", self.s.objective, value)
            return "done" if state == "done" else f"collapsed: {status.get('error')}"
        if state == "pruned":
            self._replay(w, record, upto=status.get("pruned_at"))
            study.tell(w.trial, state=TrialState.PRUNED, skip_if_finished=True)
            return f"pruned at step {status.get('pruned_at')}"
        study.tell(w.trial, state=TrialState.FAIL, skip_if_finished=True)
        return f"{state}: {status.get('error')}"

    def _rerun_stale(self, w: Work, record: TrialRecord, status: dict) -> bool:
        """A reused done trial computed by other code than this checkout's (harness/core/staleness.py), under
        `launch.stale`: 'report' says so and tells its value, 'rerun' archives its results and runs it again
        (True), 'ignore' tells its value in silence."""
        from harness.core import staleness

        policy = self.settings.get("stale", "report")
        code = None if policy == "ignore" else staleness.stale_code(status)
        if code is None:
            return False
        if policy == "rerun":
            staleness.archive_for_rerun(record, code)
            log.warning("%s: trial #%d %s was computed by other code (%s): results archived under stale/ and "
                        "recomputed", w.cell.name, w.trial.number, w.id, code)
            return True
        log.warning("%s: trial #%d %s (reused) was computed by other code (%s); kept and marked stale "
                    "(--stale rerun recomputes it)", w.cell.name, w.trial.number, w.id, code)
        return False

    def _prepare_launch(self, w: Work) -> None:
        w.pending.materialise()
        write_search_file(w.pending.record.dir, str(self.storage_path.resolve()), w.cell.name, w.trial.number,
                          w.cell.pruner)

    def _unsettled(self, w: Work) -> str:
        """The outcome line of a trial that ran and has no final state (stopped, or died unrecorded):
        left untold, so the next sweep resumes it."""
        status = w.pending.record.status()
        return f"{status.get('state', 'pending')}: {status.get('error') or 'ended without a result'}" \
               " (untold; a re-run of the sweep resumes it)"

    # --- running --------------------------------------------------------------------------
    def run(self) -> dict:
        """{trial id: outcome} of every trial of the studies, told before this run or by it."""
        self._say_stale_told()
        outcome = self.run_slurm() if self.settings["cluster"] == "slurm" else self.run_local()
        return {**self.told_before(), **outcome}

    def _say_stale_told(self) -> None:
        """One line for the trials the studies were told that are done by other code than this checkout's:
        a study cannot be told a trial twice, so they keep their values whatever `launch.stale` says (a
        reused trial is handled by `_rerun_stale`); a new study (another search seed) recomputes them."""
        from harness.core import staleness

        policy = self.settings.get("stale", "report")
        if policy == "ignore":
            return
        told = [TrialRecord(self.exp_dir / tid) for tid in self.told_before() if (self.exp_dir / tid).is_dir()]
        stale = staleness.find_stale(told)
        if stale:
            done = sum(1 for r in told if r.state == "done")
            log.warning("%s: %d of %d done trials told to its studies were computed by other code than this "
                        "checkout's (%s); they keep their told values, as a study is told a trial once (another "
                        "Sweep.search seed starts a study that recomputes them); kept and marked stale",
                        self.cells[0].grid.experiment, len(stale), done, ", ".join(sorted(set(stale.values()))[:3]))

    def told_before(self) -> dict:
        """The outcome of each trial the studies have told, from its Optuna state."""
        out = {}
        for c in self.cells:
            for ft in c.study.get_trials(deepcopy=False):
                tid, state = ft.user_attrs.get("trial_id"), ft.state.name
                if tid is None or state in ("RUNNING", "WAITING"):
                    continue
                out[tid] = {"COMPLETE": "done", "FAIL": "failed (told to the study as FAIL)"}.get(
                    state, f"pruned at step {ft.last_step}")
        return out

    def run_local(self) -> dict:
        """Keep `parallel` trials running (local subprocesses, or in-process for debug), asking for
        the next as one ends; Ctrl-C/SIGTERM stops as a local sweep does (trials checkpoint and stay
        untold, so the next sweep resumes them)."""
        from harness.run.trial import TrialInterrupted  # lazily: it imports torch

        settings, outcome = self.settings, {}
        executor = launch.make_executor(settings, self.folder)
        threads = launch._threads(settings)
        bars, queue = launch._Bars(), self.resumable()
        held: list[Work] = []  # another Optuna trial of a configuration that is running: settled after it
        active: list[tuple[Work, Any]] = []
        with launch._SweepStop() as stop:
            while not stop.signum:
                asked_all = False
                while len(active) < settings["parallel"] and not stop.signum:
                    next_work = queue.pop(0) if queue else self.ask()
                    if next_work is None:
                        asked_all = True
                        break
                    w = next_work
                    told = self.settle(w)
                    if told is not None:
                        outcome[w.id] = told
                        continue
                    if any(a.id == w.id for a, _ in active):
                        held.append(w)
                        continue
                    self._prepare_launch(w)
                    job = launch._submit_local(executor, settings, launch._job_args(
                        self.exp_file, self.user_bindings, w.pending, threads))
                    log.info("trial %s submitted (job %s): %s", w.id, job.job_id, w.pending.trial.label)
                    active.append((w, job))
                    if settings["cluster"] == "debug":
                        break  # debug jobs run when their result is asked for, one at a time
                if not active and not queue and not held and asked_all:
                    break
                for w, job in list(active):
                    bars.update(w.pending)
                    if settings["cluster"] == "debug" or job.done():
                        exc = job.exception()
                        told = self.settle(w, after_run=True)
                        outcome[w.id] = told if told is not None else self._unsettled(w)
                        (log.info if told in ("done",) or str(told).startswith("pruned") else log.error)(
                            "trial %s %s", w.id, outcome[w.id])
                        bars.close(w.pending)
                        active.remove((w, job))
                        queue[:0] = [h for h in held if h.id == w.id]
                        held = [h for h in held if h.id != w.id]
                        if isinstance(exc, TrialInterrupted):
                            stop.signum = exc.signum
                time.sleep(0.2 if active and not stop.signum else 0)
            if stop.signum:
                launch._stop_jobs([(w.pending, job) for w, job in active], settings["stop_grace_s"])
                for w, _ in active:
                    bars.close(w.pending)
                from signal import Signals

                raise KeyboardInterrupt(f"search stopped by {Signals(stop.signum).name}")
        return outcome

    def run_slurm(self, poll_s: float = 2.0, check_every_s: float = 10.0) -> dict:
        """Keep `parallel` trials queued or running on SLURM, telling each as its record ends and
        submitting the next; with `launch.wait` False (the default) return once they are submitted:
        the next `harness sweep` tells the finished ones and submits more."""
        from harness.run import slurm

        outcome: dict[str, str] = {}
        in_flight: list[Work] = []
        todo: list[Work] = []
        for w in self.resumable():
            told = self.settle(w)
            if told is not None:
                outcome[w.id] = told
            else:
                todo.append(w)
        last_check = time.monotonic()
        while True:
            while len(in_flight) + len({w.id for w in todo}) < self.settings["parallel"]:
                asked = self.ask()
                if asked is None:
                    break
                told = self.settle(asked)
                if told is not None:
                    outcome[asked.id] = told
                else:
                    todo.append(asked)
            if todo:
                in_flight += todo
                outcome.update(self._submit(todo))
                todo = []
            if not self.settings["wait"] or not in_flight:
                return outcome
            if time.monotonic() - last_check >= check_every_s:
                try:
                    slurm.reconcile([w.pending.record for w in in_flight])
                except slurm.SlurmError as exc:
                    log.warning("cannot ask SLURM about the jobs (%s)", exc)
                last_check = time.monotonic()
            for w in list(in_flight):
                state = w.pending.record.state
                if state in FINAL_STATES:
                    told = self.settle(w, after_run=True)
                    outcome[w.id] = told if told is not None else self._unsettled(w)
                    in_flight.remove(w)
                    if told is None and state == "pruned":  # cannot happen: no pruner, no pruned trial
                        todo.append(w)
            time.sleep(poll_s)

    def _submit(self, todo: list[Work]) -> dict:
        """Submit the trials without a live job as one array (held until their records name their
        jobs, as any SLURM sweep); those an earlier sweep queued are left to their jobs."""
        first: dict[str, Work] = {}
        for w in todo:  # two Optuna trials of one configuration: one job
            first.setdefault(w.id, w)
        with _flock(self.exp_dir / ".submit.lock"):
            for w in first.values():
                self._prepare_launch(w)
            # retry_failed: a pruned trial a study without a pruner takes up is final, and must run again
            keep, skipped = launch.unqueued([w.pending for w in first.values()], retry_failed=True)
            out = {tid: why for tid, why in skipped.items()}
            if not self.settings["retry_failed"]:  # jobs that died unrecorded (marked from sacct just now): told
                for p in [p for p in keep if p.record.state in ("failed", "diverged", "cancelled", "collapsed")]:
                    keep.remove(p)
                    for w in todo:
                        if w.id == p.trial.id:
                            out[w.id] = self.settle(w, after_run=True) or self._unsettled(w)
            jobs = launch.submit_slurm(self.settings, self.exp_file, self.user_bindings, keep, self.folder) \
                if keep else []
        out.update({p.trial.id: f"{launch.SUBMITTED} as {job.job_id}" for p, job in zip(keep, jobs)})
        return out


def run_search(experiment: str, user_bindings, runs_dir: Path, spec: dict, settings: dict,
               preflight=None) -> dict:
    """The driver's branch for an experiment with `Sweep.search`: {trial id: outcome}. `preflight`
    (the driver's checks: LPIPS weights, scene data) is called with the grid cells' trials before
    anything is made."""
    launch.check_cluster(settings)
    search = Search(experiment, user_bindings, runs_dir, spec, settings)
    if preflight is not None:
        preflight([c.grid for c in search.cells])
    search.open()
    log.info("%s: %s; %d cell(s), store %s, %d at once on cluster '%s'", experiment, search.s.describe(),
             len(search.cells), search.storage_path, search.settings["parallel"], settings["cluster"])
    return search.run()
