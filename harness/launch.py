"""Launching trials through submitit: `local` (subprocesses), `debug` (in-process), `slurm`.

The only module that imports submitit. Jobs receive plain arguments (paths and binding
strings, never Gin objects, which do not pickle); each job parses Gin itself.
"""

from __future__ import annotations

import logging
import os
import sys
import time
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
                    slurm_additional_parameters: dict | None = None, retry_failed: bool = False):
    """How to run a sweep; none of this changes a trial's result, so none of it is in trial ids."""
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
    """Callable submitted to submitit; on SLURM it is Checkpointable (requeue resumes from the
    trial's own checkpoints, so the resubmission is the same call)."""

    def __call__(self, *args):
        return run_trial_job(*args)

    def checkpoint(self, *args):
        import submitit

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
    """One job array for the whole sweep (submitit batches submissions into an array)."""
    executor = make_executor(settings, folder)
    threads = settings["threads"] or settings["cpus_per_task"]
    with executor.batch():
        jobs = [executor.submit(TrialJob(), *_job_args(exp_file, user_bindings, p, threads)) for p in todo]
    for p, job in zip(todo, jobs):
        p.record.update(slurm_job_id=job.job_id, log_stdout=str(job.paths.stdout),
                        log_stderr=str(job.paths.stderr))
    return jobs


def check_cluster(settings: dict) -> None:
    if settings["cluster"] == "slurm":
        import shutil

        if shutil.which("sbatch") is None:
            raise HarnessError("launch.cluster = 'slurm' but `sbatch` is not on PATH "
                               "(start the local cluster with scripts/local-slurm.sh up, or use cluster='local')")
