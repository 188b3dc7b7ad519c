"""Launching trials through submitit: `local` (subprocesses), `debug` (in-process), `slurm`.

The only module that imports submitit. Jobs receive plain arguments (paths and binding
strings, never Gin objects, which do not pickle); each job parses Gin itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.errors import ConfigError, HarnessError
from harness.core.records import FINAL_STATES, TrialRecord
from harness.run import store
from harness.run.sweep import Trial

log = logging.getLogger(__name__)


def run_trial_job(exp_file: str, user_bindings: list[str], trial_lines: list[str],
                  trial_id: str, trial_dir: str, threads: int | None, collective_timeout_s: float | None = None
                  ) -> dict:
    """The job body: parse this trial's Gin, check its id, run it. Runs in the job process (in each of
    them when the job has several tasks: data-parallel training, harness/run/distributed.py)."""
    import torch

    import harness.run.registry  # noqa: F401  (the job's entry point: register the configurables)
    from harness.run import distributed

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(int(threads or os.cpu_count() or 1))
    _export_distributed_env()
    world = distributed.setup(collective_timeout_s)
    try:
        return _run_trial_job(exp_file, user_bindings, trial_lines, trial_id, trial_dir, world.writer)
    finally:
        distributed.teardown()


def _export_distributed_env() -> None:
    """In a submitit job of several tasks: torch.distributed's env:// variables (MASTER_ADDR, MASTER_PORT,
    RANK, WORLD_SIZE, LOCAL_RANK) from submitit's job environment."""
    import submitit

    try:
        tasks = submitit.JobEnvironment().num_tasks
    except (RuntimeError, KeyError):  # outside a submitit job, or the in-process debug executor
        return
    if tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)


def _run_trial_job(exp_file: str, user_bindings: list[str], trial_lines: list[str], trial_id: str,
                   trial_dir: str, writer: bool) -> dict:
    from harness.run.sweep import trial_config, trial_identity
    from harness.run.trial import run_trial

    try:  # trial_config leaves Gin parsed with exactly this trial's config, ready to run
        trial_config(Path(exp_file), user_bindings, trial_lines)
        now, _ = trial_identity()
        if now != trial_id:
            raise ConfigError(f"trial {trial_id} now hashes to {now}: its experiment ({exp_file}), a default in "
                              f"the code or its scene's data changed since the sweep was submitted; re-run the sweep")
    except Exception as exc:  # recorded so the failure is visible in status/report, not only in a log
        record = TrialRecord(Path(trial_dir))
        if writer and record.state in ("pending", "preempted", "running"):
            record.begin_attempt(**_job_info())
            record.set_state("failed", error=f"{exc.__class__.__name__}: {exc}".splitlines()[0])
        raise
    return run_trial(Path(trial_dir), job_info=_job_info())


def _job_info() -> dict:
    """This job's scheduler id and log files, for the trial's status.json."""
    import submitit

    try:
        env = submitit.JobEnvironment()
        info = {"job_id": env.job_id, "cluster": env.cluster}
        info.update(log_stdout=str(env.paths.stdout), log_stderr=str(env.paths.stderr))
    except (RuntimeError, KeyError):  # outside a submitit job, or the in-process debug executor
        return {}
    if env.cluster == "slurm":
        info["slurm_job_id"] = env.job_id
    return info


class TrialJob:
    """Callable submitted to submitit; on SLURM it is Checkpointable: on the preemption/timeout
    signal (USR2) submitit calls checkpoint(), requeues the job and exits; the trial runner records
    the interruption as `preempted`, and the requeued job resumes from the trial's newest
    checkpoint (RaySampler is a function of (seed, step), so the result equals an uninterrupted
    run's). The resubmission is therefore the same call."""

    def __call__(self, *args):
        return run_trial_job(*args)

    def checkpoint(self, *args):
        import submitit

        from harness.run.trial import save_at_boundary

        trial_dir = Path(args[4])
        save_at_boundary()  # this handler runs between training steps (harness.run.trial holds the signal)
        saved = sorted(p.name for p in (trial_dir / "checkpoints").glob("step_*.pt"))
        log.warning("trial %s preempted: requeueing; it resumes from %s", trial_dir.name,
                    saved[-1] if saved else "the start (no checkpoint yet)")
        return submitit.helpers.DelayedSubmission(self, *args)


def make_executor(settings: dict, folder: Path):
    import submitit

    if settings["cluster"] == "debug":  # its "logging is written both to ..." warning is noise here
        logging.getLogger("submitit").setLevel(logging.ERROR)
    executor = submitit.AutoExecutor(folder=str(folder), cluster=settings["cluster"])
    params = {"timeout_min": settings["timeout_min"]}
    if settings.get("tasks_per_node", 1) > 1:  # one trial on several processes (harness/run/distributed.py)
        params["tasks_per_node"] = settings["tasks_per_node"]
    if settings["cluster"] == "slurm" and settings.get("nodes", 1) > 1:
        params["nodes"] = settings["nodes"]
    if settings["cluster"] == "slurm":
        params.update(slurm_partition=settings["slurm_partition"], slurm_account=settings["slurm_account"],
                      slurm_qos=settings["slurm_qos"], cpus_per_task=settings["cpus_per_task"],
                      gpus_per_node=settings["gpus_per_node"], slurm_constraint=settings["slurm_constraint"],
                      slurm_array_parallelism=settings["slurm_array_parallelism"],
                      slurm_additional_parameters=settings["slurm_additional_parameters"] or {})
        if settings["mem_gb"]:
            params["mem_gb"] = settings["mem_gb"]
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    return executor


@dataclass
class Pending:
    trial: Trial
    record: TrialRecord
    runs_dir: Path
    data_warnings: list[str] = field(default_factory=list)  # the doctor's, from the sweep's pre-flight

    def materialise(self) -> None:
        """Make the trial's folder and pending record just before it is launched (harness/run/store.py),
        with the data warnings of its scene."""
        self.record = store.materialise(self.runs_dir, self.trial)
        store.note_data_warnings(self.record, self.data_warnings)


def _job_args(exp_file: Path, user_bindings, p: Pending, threads, settings: dict | None = None) -> tuple:
    args: tuple = (str(exp_file), list(user_bindings), list(p.trial.gin_bindings), p.trial.id, str(p.record.dir),
                   threads)
    if settings is not None and settings.get("tasks_per_node", 1) * settings.get("nodes", 1) > 1:
        args += (settings["collective_timeout_s"],)
    return args


def _threads(settings: dict) -> int:
    tasks = settings.get("tasks_per_node", 1) if settings["cluster"] == "local" else 1  # processes per trial here
    return int(settings["threads"] or max(1, (os.cpu_count() or 1) // (settings["parallel"] * tasks)))


BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}<{remaining}]{postfix}"


class _Bars:
    """One tqdm bar per running trial, fed from each trial's progress.json (quiet off a TTY)."""

    def __init__(self):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.bars = {}
        self.enabled = sys.stderr.isatty()

    def update(self, p: Pending) -> None:
        if not self.enabled:
            return
        prog = p.record.progress() or {}
        if p.trial.id not in self.bars:
            self.bars[p.trial.id] = self._tqdm(total=prog.get("total", 1), desc=p.trial.id, leave=True,
                                               dynamic_ncols=True, bar_format=BAR_FORMAT)
        bar = self.bars[p.trial.id]
        if prog:
            phase = prog.get("phase", "")
            bar.set_description(f"{p.trial.id} {phase:<5} {p.trial.label}"[:70])
            if bar.total != prog["total"]:
                bar.reset(total=prog["total"])
            bar.n = prog["step"]
            bar.refresh()

    def close(self, p: Pending) -> None:
        bar = self.bars.pop(p.trial.id, None)
        if bar is not None:
            bar.close()


def run_local(settings: dict, exp_file: Path, user_bindings, todo: list[Pending], folder: Path) -> dict:
    """Run trials with at most `parallel` jobs at once; returns {trial id: 'done'|error line}.

    SIGTERM or Ctrl-C stops the sweep: no new trial starts, the running ones are told to stop
    (SIGTERM: each saves its last completed step and ends `preempted`), and the sweep waits for
    them (`launch.stop_grace_s`, then SIGKILL) before raising KeyboardInterrupt, so no trial is
    left running without its sweep."""
    from harness.run.trial import TrialInterrupted  # lazily: it imports torch, which a SLURM submission never needs

    executor = make_executor(settings, folder)
    threads = _threads(settings)
    bars, queue, outcome = _Bars(), list(todo), {}
    active: list[tuple[Pending, Any]] = []  # (trial, its submitit job)
    with _SweepStop() as stop:
        while (queue or active) and not stop.signum:
            while queue and len(active) < settings["parallel"] and not stop.signum:
                p = queue.pop(0)
                p.materialise()
                job = _submit_local(executor, settings, _job_args(exp_file, user_bindings, p, threads, settings))
                log.info("trial %s submitted (job %s): %s", p.trial.id, job.job_id, p.trial.label)
                active.append((p, job))
                if settings["cluster"] == "debug":
                    break  # debug jobs run when their result is asked for, one at a time
            for p, job in list(active):
                bars.update(p)
                if settings["cluster"] == "debug" or job.done():
                    # exception() first, and once: for the debug executor it runs the job (each call
                    # again, when it raised), without submitit's pdb post-mortem
                    exc = job.exception()
                    outcome[p.trial.id] = _finish(p, job, exc)
                    bars.close(p)
                    active.remove((p, job))
                    if isinstance(exc, TrialInterrupted):  # debug: it ran in this process, the signal was ours
                        stop.signum = exc.signum
            time.sleep(0.2 if active and not stop.signum else 0)
        if stop.signum:
            _stop_jobs(active, settings["stop_grace_s"])
            for p, _ in active:
                bars.close(p)
            raise KeyboardInterrupt(f"sweep stopped by {signal.Signals(stop.signum).name}")
    return outcome


class _SweepStop:
    """While a local sweep runs: SIGTERM and SIGINT set `signum` instead of killing the sweep
    mid-loop (main thread only; elsewhere the defaults stay)."""

    def __init__(self):
        self.signum, self.previous = 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame):
        if not self.signum:
            log.warning("%s: stopping the sweep; running trials save their last step and stop",
                        signal.Signals(signum).name)
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def _submit_local(executor, settings: dict, args: tuple):
    """Submit one job. A local job's processes start with SIGINT ignored: a Ctrl-C on the terminal
    reaches the whole process group, and submitit's job controller would kill the trial within a
    second; the sweep instead tells each trial to stop at a step boundary (_stop_jobs)."""
    if settings["cluster"] != "local" or threading.current_thread() is not threading.main_thread():
        return executor.submit(TrialJob(), *args)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited through fork and exec
    try:
        return executor.submit(TrialJob(), *args)
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_jobs(active: list, grace_s: float) -> None:
    """SIGTERM each running local job (submitit's controller forwards it to the trial), wait up to
    `grace_s` for them to end, then SIGKILL what is left (controller and trial process)."""
    procs = [(p, getattr(job, "_process", None)) for p, job in active]
    for _, proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(proc is not None and proc.poll() is None for _, proc in procs):
        time.sleep(0.2)
    for p, proc in procs:
        status = p.record.status()
        if proc is None or proc.poll() is not None:
            log.warning("trial %s stopped: %s", p.trial.id, status.get("error") or "before it started")
            continue
        log.error("trial %s did not stop within %.0f s of SIGTERM: killing it (it resumes from its last "
                  "checkpoint)", p.trial.id, grace_s)
        pid = status.get("pid")
        if pid and status.get("host") == socket.gethostname():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)
        proc.kill()
        proc.wait()


def _finish(p: Pending, job, exc: BaseException | None) -> str:
    """The outcome line of a finished job; `exc` is its job.exception()."""
    if exc is not None:
        status = p.record.status()
        line = status.get("error") or _unrecorded_error(str(exc), getattr(job.paths, "stderr", "?"))
        log.error("trial %s %s: %s (log: %s)", p.trial.id, status.get("state", "failed"), line,
                  getattr(job.paths, "stderr", "?"))
        return f"collapsed: {line}" if status.get("state") == "collapsed" else line
    metrics = job.results()[0] if job.num_tasks > 1 else job.result()  # rank 0's, with several tasks
    log.info("trial %s done: psnr %.2f", p.trial.id, metrics.get("psnr", float("nan")))
    return "done"


_EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Diverged)\b.*")


def _unrecorded_error(text: str, log_path) -> str:
    """One line for a job that ended without recording why (its status could not be written: disk
    full, read-only): the last exception line in submitit's report, never a stray line of a log
    that a full disk cut short."""
    found = [m.group(0).strip() for line in text.splitlines() if (m := _EXCEPTION_LINE.match(line))]
    last = found[-1] if found else "no exception line in its output"
    return f"ended without recording its outcome (disk full or read-only?): {last}; log: {log_path}"


def submit_slurm(settings: dict, exp_file: Path, user_bindings, todo: list[Pending], folder: Path) -> list:
    """One job array for the whole sweep (submitit batches submissions into an array).

    The array is submitted held and released once every trial's record has its job id and log
    paths: a job that started earlier would race with that write (and its `running` state could be
    overwritten). An array left held by a sweep killed in between is released by the next sweep."""
    from harness.run import slurm

    executor = make_executor(settings, folder)
    extra = dict(settings["slurm_additional_parameters"] or {})
    executor.update_parameters(slurm_additional_parameters={**extra, "hold": True})
    threads = settings["threads"] or settings["cpus_per_task"]
    with ThreadPoolExecutor(max_workers=16) as pool:  # each job's record must exist before it can start
        list(pool.map(Pending.materialise, todo))
    t0 = time.perf_counter()
    with executor.batch():
        jobs = [executor.submit(TrialJob(), *_job_args(exp_file, user_bindings, p, threads, settings)) for p in todo]
    t1 = time.perf_counter()

    def record_job(p: Pending, job) -> None:
        # a retried trial goes back to `pending` under its new job, so status counts it as queued and
        # `harness cancel` finds its job (its earlier outcome moves to `previous`)
        p.record.requeue(RETRYABLE, slurm_job_id=job.job_id, log_stdout=str(job.paths.stdout),
                         log_stderr=str(job.paths.stderr))

    try:  # threads: each is an fsync-bound write of one record
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(record_job, todo, jobs))
    finally:
        slurm.release([job.job_id for job in jobs])
    log.info("submitted %d trials as SLURM array %s in %.2f s (records %.2f s)", len(jobs),
             slurm.array_id(jobs[0].job_id) if jobs else "-", t1 - t0, time.perf_counter() - t1)
    return jobs


# what a SLURM sweep may queue again: open trials whose job is gone, and (--retry-failed) final ones
RETRYABLE = tuple(s for s in ("pending", "preempted", *FINAL_STATES) if s != "done")
# Outcome prefixes of a SLURM sweep: queued now by this sweep, or found queued by an earlier one.
SUBMITTED, QUEUED_EARLIER = "submitted", "queued earlier"


def unqueued(todo: list[Pending], retry_failed: bool) -> tuple[list[Pending], dict]:
    """Of the trials to submit, those with no live SLURM job (another sweep of the experiment may
    have queued them), after marking those whose job ended without a result. Call it under the
    experiment's submit lock so that two sweeps started at once queue each trial once."""
    from harness.run import slurm

    infos = slurm.reconcile([p.record for p in todo])
    # held arrays: a sweep died between submitting and releasing; we hold the submit lock, so none is ours
    orphans = sorted({slurm.array_id(i.job_id) for i in infos.values() if i.source == "squeue" and i.held})
    if orphans:
        log.warning("releasing SLURM array(s) %s, left held by an interrupted sweep", ", ".join(orphans))
        slurm.release(orphans)
    keep, skipped = [], {}
    for p in todo:
        info, state = infos.get(p.record.dir.name), p.record.state
        if info is not None and info.source == "squeue":
            skipped[p.trial.id] = f"{QUEUED_EARLIER} as {info.job_id} (still {info.state.lower()})"
        elif state == "done" or (state in FINAL_STATES and not retry_failed):
            skipped[p.trial.id] = state if state == "done" else f"{state}: {p.record.status().get('error')}"
        else:
            keep.append(p)
    return keep, skipped


def wait_slurm(records: list[TrialRecord], poll_s: float = 2.0, check_every_s: float = 10.0) -> dict:
    """Wait until every trial is final; a job that ended without a result (scancel, OOM kill, node
    failure) is found through sacct and its trial marked, so this never waits forever on a dead job.
    Returns {trial id: 'done' | '<state>: <error>'}."""
    from harness.run import slurm

    open_ = {r.dir.name: r for r in records}
    outcome, last_check = {}, time.monotonic()
    while open_:
        if time.monotonic() - last_check >= check_every_s:
            try:
                slurm.reconcile(list(open_.values()))
            except slurm.SlurmError as exc:  # keep waiting on the records; say what cannot be seen
                log.warning("cannot ask SLURM about the jobs (%s): a job that dies without writing its record "
                            "will not be noticed until this works again (Ctrl-C is safe; `make status` later)", exc)
            last_check = time.monotonic()
        for tid, r in list(open_.items()):
            status = r.status()
            state = status.get("state")
            if state in FINAL_STATES:
                outcome[tid] = "done" if state == "done" else f"{state}: {status.get('error')}"
                log.log(logging.INFO if state == "done" else logging.ERROR, "trial %s %s", tid, outcome[tid])
                del open_[tid]
        if open_:
            time.sleep(poll_s)
    return outcome


def check_cluster(settings: dict) -> None:
    if settings["cluster"] == "slurm":
        import shutil

        if shutil.which("sbatch") is None:
            raise HarnessError("launch.cluster = 'slurm' but `sbatch` is not on PATH "
                               "(start the local cluster with scripts/local-slurm.sh up, or use cluster='local')")
