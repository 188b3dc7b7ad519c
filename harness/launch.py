"""Launching trials through submitit: `local` (subprocesses), `debug` (in-process), `slurm`.

The only module that imports submitit. Jobs receive plain arguments (paths and binding
strings, never Gin objects, which do not pickle); each job parses Gin itself.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gin

from harness.errors import ConfigError, HarnessError
from harness.records import TrialRecord

log = logging.getLogger(__name__)


@gin.configurable("launch")
def launch_settings(cluster: str = "local", parallel: int = 1, threads: int | None = None,
                    timeout_min: int = 600, slurm_partition: str | None = None,
                    slurm_account: str | None = None, slurm_qos: str | None = None,
                    cpus_per_task: int = 2, mem_gb: float | None = None, gpus_per_node: int = 0,
                    slurm_constraint: str | None = None, slurm_array_parallelism: int = 32,
                    slurm_additional_parameters: dict | None = None, retry_failed: bool = False,
                    wait: bool = False):
    """How to run a sweep; none of this changes a trial's result, so none of it is in trial ids.

    `wait` (slurm): stay until every submitted trial has finished, noticing through sacct the
    jobs that ended without a result (cancelled, killed, out of memory); by default the sweep
    returns once the array is queued (follow it with `make status`)."""
    if cluster not in ("local", "debug", "slurm"):
        raise ConfigError(f"launch.cluster = '{cluster}': expected 'local', 'debug' or 'slurm'")
    if parallel < 1:
        raise ConfigError(f"launch.parallel = {parallel}: expected a positive integer")
    return dict(locals())


def run_trial_job(exp_file: str, user_bindings: list[str], trial_lines: list[str],
                  trial_id: str, trial_dir: str, threads: int | None) -> dict:
    """The job body: parse this trial's Gin, check its id, run it. Runs in the job process."""
    import torch

    from harness.sweep import trial_config, trial_id as make_id
    from harness.trial import run_trial

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(int(threads or os.cpu_count() or 1))
    try:  # trial_config leaves Gin parsed with exactly this trial's config, ready to run
        config = trial_config(Path(exp_file), user_bindings, trial_lines)
        if make_id(config) != trial_id:
            raise ConfigError(f"{exp_file} changed since the sweep was submitted: trial {trial_id} now "
                              f"hashes to {make_id(config)}; re-run the sweep")
    except Exception as exc:  # recorded so the failure is visible in status/report, not only in a log
        record = TrialRecord(Path(trial_dir))
        if record.state in ("pending", "preempted", "running"):
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

        from harness.trial import save_at_boundary

        trial_dir = Path(args[4])
        save_at_boundary()  # this handler runs between training steps (harness.trial holds the signal)
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
    trial: object  # harness.sweep.Trial
    record: TrialRecord


def _job_args(exp_file: Path, user_bindings, p: Pending, threads) -> tuple:
    return (str(exp_file), list(user_bindings), list(p.trial.gin_bindings), p.trial.id, str(p.record.dir), threads)


def _threads(settings: dict) -> int:
    return int(settings["threads"] or max(1, (os.cpu_count() or 1) // settings["parallel"]))


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
                                               dynamic_ncols=True, bar_format="{desc} {percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}<{remaining}]{postfix}")
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
    """Run trials with at most `parallel` jobs at once; returns {trial id: 'done'|error line}."""
    executor = make_executor(settings, folder)
    threads = _threads(settings)
    bars, queue, active, outcome = _Bars(), list(todo), [], {}
    while queue or active:
        while queue and len(active) < settings["parallel"]:
            p = queue.pop(0)
            job = executor.submit(TrialJob(), *_job_args(exp_file, user_bindings, p, threads))
            log.info("trial %s submitted (job %s): %s", p.trial.id, job.job_id, p.trial.label)
            active.append((p, job))
            if settings["cluster"] == "debug":
                break  # debug jobs run when their result is asked for, one at a time
        for p, job in list(active):
            bars.update(p)
            if settings["cluster"] == "debug" or job.done():
                outcome[p.trial.id] = _finish(p, job)
                bars.close(p)
                active.remove((p, job))
        time.sleep(0.2 if active else 0)
    return outcome


def _finish(p: Pending, job) -> str:
    # exception() first: for the debug executor it runs the job without submitit's pdb post-mortem
    exc = job.exception()
    if exc is not None:
        status = p.record.status()
        line = status.get("error") or str(exc).strip().splitlines()[-1]
        log.error("trial %s %s: %s (log: %s)", p.trial.id, status.get("state", "failed"), line,
                  getattr(job.paths, "stderr", "?"))
        return line
    metrics = job.result()
    log.info("trial %s done: psnr %.2f", p.trial.id, metrics.get("psnr", float("nan")))
    return "done"


def submit_slurm(settings: dict, exp_file: Path, user_bindings, todo: list[Pending], folder: Path) -> list:
    """One job array for the whole sweep (submitit batches submissions into an array).

    The array is submitted held and released once every trial's record has its job id and log
    paths: a job that started earlier would race with that write (and its `running` state could be
    overwritten). An array left held by a sweep killed in between is released by the next sweep."""
    from harness import slurm

    executor = make_executor(settings, folder)
    extra = dict(settings["slurm_additional_parameters"] or {})
    executor.update_parameters(slurm_additional_parameters={**extra, "hold": True})
    threads = settings["threads"] or settings["cpus_per_task"]
    t0 = time.perf_counter()
    with executor.batch():
        jobs = [executor.submit(TrialJob(), *_job_args(exp_file, user_bindings, p, threads)) for p in todo]
    t1 = time.perf_counter()

    def record_job(p: Pending, job) -> None:
        p.record.update(slurm_job_id=job.job_id, log_stdout=str(job.paths.stdout), log_stderr=str(job.paths.stderr))

    try:  # threads: each is an fsync-bound write of one record
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(record_job, todo, jobs))
    finally:
        slurm.release([job.job_id for job in jobs])
    log.info("submitted %d trials as SLURM array %s in %.2f s (records %.2f s)", len(jobs),
             slurm.array_id(jobs[0].job_id) if jobs else "-", t1 - t0, time.perf_counter() - t1)
    return jobs


FINAL_STATES = ("done", "failed", "diverged", "cancelled")


def unqueued(todo: list[Pending], retry_failed: bool) -> tuple[list[Pending], dict]:
    """Of the trials to submit, those with no live SLURM job (another sweep of the experiment may
    have queued them), after marking those whose job ended without a result. Call it under the
    experiment's submit lock so that two sweeps started at once queue each trial once."""
    from harness import slurm

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
            skipped[p.trial.id] = f"submitted earlier as {info.job_id} (still {info.state.lower()})"
        elif state == "done" or (state in FINAL_STATES and not retry_failed):
            skipped[p.trial.id] = state if state == "done" else f"{state}: {p.record.status().get('error')}"
        else:
            keep.append(p)
    return keep, skipped


def wait_slurm(records: list[TrialRecord], poll_s: float = 2.0, check_every_s: float = 10.0) -> dict:
    """Wait until every trial is final; a job that ended without a result (scancel, OOM kill, node
    failure) is found through sacct and its trial marked, so this never waits forever on a dead job.
    Returns {trial id: 'done' | '<state>: <error>'}."""
    from harness import slurm

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
