"""Run one trial: data, method, training with checkpoints and resume, evaluation, record.

Called inside the job process (local subprocess, SLURM task or in-process for `debug`)
after Gin has been parsed for this trial (harness.launch.run_trial_job).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import gin
import numpy as np
import torch

from harness import checkpoints
from harness.data.load import load_scene
from harness.data.rays import RaySampler
from harness.errors import TrialDiverged
from harness.evaluate import Evaluation
from harness.records import TrialRecord

log = logging.getLogger(__name__)


@gin.configurable
class Trainer:
    """The training loop every baseline runs under; the method is a Gin reference."""

    def __init__(self, method=gin.REQUIRED, iterations: int = 1000, seed: int = 0,
                 checkpoint_every: int = 500, keep_checkpoints: int = 2, log_every: int = 50,
                 validate_every: int = 0, validation_views=(0,), progress_every: int = 10):
        self.method_cls = method
        self.iterations = int(iterations)
        self.seed = int(seed)
        self.checkpoint_every = int(checkpoint_every)
        self.keep_checkpoints = int(keep_checkpoints)
        self.log_every = int(log_every)
        self.validate_every = int(validate_every)
        self.validation_views = tuple(validation_views)
        self.progress_every = int(progress_every)

    def _resume(self, method, record: TrialRecord) -> tuple[int, float]:
        found = checkpoints.load_latest(record.checkpoint_dir)
        if found is None:
            return 0, 0.0
        step, payload = found
        method.load_state_dict(payload["method"])
        log.info("resumed %s from step %d", record.dir.name, step)
        return step, float(payload.get("train_time", 0.0))

    def _checkpoint(self, method, record: TrialRecord, step: int, train_time: float) -> None:
        checkpoints.save(record.checkpoint_dir, step,
                         {"step": step, "train_time": train_time, "method": method.state_dict()},
                         keep=self.keep_checkpoints)

    @staticmethod
    def _check_finite(losses: dict, step: int) -> None:
        bad = {k: v for k, v in losses.items() if not math.isfinite(float(v))}
        if bad:
            raise TrialDiverged(f"non-finite loss at step {step}: {bad}")

    def train(self, method, scene, record: TrialRecord, evaluation: Evaluation) -> tuple[int, float]:
        split = scene.split("train")
        sampler = RaySampler(split.images, split.cameras, self.seed)
        step, train_time = self._resume(method, record)
        record.write_progress(step, self.iterations, phase="train")
        while step < self.iterations:
            t0 = time.perf_counter()
            losses = method.train_step(step, sampler.sample(step, method.batch_size,
                                                                getattr(method, "patch_size", 1)))
            train_time += time.perf_counter() - t0
            self._check_finite(losses, step)
            step += 1
            if step % self.log_every == 0 or step == self.iterations:
                record.append_log({"step": step, "time": round(train_time, 3), **losses})
            if step % self.progress_every == 0:
                record.write_progress(step, self.iterations, phase="train", loss=float(losses.get("loss", 0)))
            if self.validate_every and step % self.validate_every == 0 and "test" in scene.splits:
                val = score(evaluation, method, scene.split("test"), self.validation_views, metrics=("psnr",))
                record.append_log({"step": step, "time": round(train_time, 3), "val_psnr": val["psnr"]})
            if step % self.checkpoint_every == 0 or step == self.iterations:
                self._checkpoint(method, record, step, train_time)
        return step, train_time

    def run(self, record: TrialRecord) -> dict:
        """Train (resuming if possible), evaluate on the test split, write metrics.json."""
        evaluation = Evaluation()
        evaluation.preflight()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % 2**32)
        scene = load_scene()
        method = self.method_cls(scene=scene, seed=self.seed)
        scene = getattr(method, "trial_scene", scene)  # optional: the part of the scene it trains on
        step, train_time = self.train(method, scene, record, evaluation)
        test = scene.split("test")
        record.write_progress(0, len(test), phase="eval")
        done = [0]

        def tick():
            done[0] += 1
            if done[0] % 5 == 0 or done[0] == len(test):
                record.write_progress(done[0], len(test), phase="eval")

        t0 = time.perf_counter()
        metrics = score(evaluation, method, test, renders_dir=record.renders_dir, progress=tick,
                        background=scene.background)
        metrics.update(iterations=step, train_time=round(train_time, 3),
                       eval_time=round(time.perf_counter() - t0, 3), n_test_views=len(test),
                       model=method.stats(), scene=scene.name, resolution=[test.cameras.width, test.cameras.height],
                       peak_rss_mb=_peak_rss_mb())
        record.write_metrics(metrics)
        return metrics


def score(evaluation: Evaluation, method, split, indices=None, **kw) -> dict:
    """Score views of `split`: through the method's own view protocol when it has one (optional
    `evaluate(evaluation, split, indices, **kw)`, e.g. per-view appearance codes or scoring half
    images; it must score through harness.metrics), else by rendering whole views."""
    custom = getattr(method, "evaluate", None)
    if custom is not None:
        return custom(evaluation, split, indices, **kw)
    return evaluation.score(method, split, indices, **kw)


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_trial(trial_dir: Path, job_info: dict | None = None) -> dict:
    """Run the trial whose Gin config is already parsed; manages status and the lock."""
    record = TrialRecord(trial_dir)
    with record.lock():
        if record.state == "done":
            return record.metrics() or {}
        record.begin_attempt(**(job_info or {}))
        try:
            metrics = Trainer().run(record)
        except TrialDiverged as exc:
            record.set_state("diverged", error=str(exc))
            raise
        except BaseException as exc:
            import traceback

            tail = "".join(traceback.format_exception(exc))[-2000:]
            # SystemExit: submitit's preemption handler requeues the job, then exits inside training
            state = "preempted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            record.set_state(state, error=f"{exc.__class__.__name__}: {exc}".splitlines()[0], traceback=tail)
            raise
        record.set_state("done", psnr=metrics.get("psnr"))
        return metrics
