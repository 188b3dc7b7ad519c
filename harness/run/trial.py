"""Run one trial: data, method, training with checkpoints and resume, evaluation, record.

Called inside the job process (local subprocess, SLURM task or in-process for `debug`)
after Gin has been parsed for this trial (harness.run.launch.run_trial_job).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import gin
import numpy as np
import torch

from harness.core import faults, provenance
from harness.core.data.load_scene import load_scene
from harness.core.errors import ConfigError, HarnessError, RecordError, TrialDiverged
from harness.core.method import has as has_capability
from harness.core.method import method_problems, pick_device
from harness.core.records import FINAL_STATES, TrialRecord, remove_temp_files
from harness.run import checkpoints, distributed, memory, pruning
from harness.run import stages as stages_mod
from harness.run.evaluation import Evaluation
from harness.run.gradients import GradientHealth
from harness.run.tracking import Tracker, view_image

log = logging.getLogger(__name__)


class TrialOutOfMemory(HarnessError):
    """Training ran out of (GPU) memory even at the smallest batch size allowed."""


class TrialCollapsed(HarnessError):
    """Training ended with finite numbers but learned nothing (`Trainer.collapse_psnr`,
    `Trainer.min_loss_drop`): the trial is recorded as `collapsed`, its metrics.json kept.
    `checks` holds the figures (status.json `collapse`)."""

    def __init__(self, message: str, checks: dict):
        super().__init__(message)
        self.checks = checks


def _int(name: str, value, minimum: int | None = None) -> int:
    """A Trainer setting as an int, or a ConfigError line naming the binding and the value."""
    ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not ok or (minimum is not None and value < minimum):
        raise ConfigError(f"Trainer.{name} = {value!r}: expected an integer"
                          + (f" >= {minimum}" if minimum is not None else ""))
    return int(value)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _nonfinite(state) -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold NaN or Inf."""
    return [name for name, t in checkpoints.named_tensors(state).items()
            if t.is_floating_point() and not torch.isfinite(t).all()]


def _diverged(message: str, step: int) -> TrialDiverged:
    exc = TrialDiverged(message)
    exc.step = step
    return exc


# Preemption: SLURM sends USR2 and submitit's handler calls TrialJob.checkpoint, requeues the job and
# exits. A Python handler runs in the main thread wherever it happens to be, possibly halfway through
# an optimiser step, so while a trial trains the signal is only noted, and handed to submitit's
# handler between steps, where the state is consistent: the job then saves that step
# (save_at_boundary) before it is requeued, so no completed step is lost.
# Stopping: SIGTERM (scancel, a stopped sweep; submitit itself ignores it, so SLURM would SIGKILL the
# job ~30 s later) and SIGINT (Ctrl-C) are noted the same way; at the next step boundary the trial
# saves that step and ends as `preempted` (TrialInterrupted), which a re-run resumes. Outside training
# (loading, evaluation) they end the trial at once: there is no unsaved training state then.
PREEMPT_SIGNALS = (signal.SIGUSR2,)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PREEMPTED, STOPPED = 1, 2  # bits of _DeferredSignals.noted(), summed over the data-parallel ranks
_boundary_saver: Callable[[], None] | None = None  # while a trial trains: checkpoints its last completed step


class TrialInterrupted(HarnessError):
    """A stop signal ended the trial; its last completed step is checkpointed when it was training."""

    def __init__(self, signum: int, step: int | None = None):
        name = signal.Signals(signum).name
        where = f"at step {step}, checkpointed" if step is not None else "outside training"
        super().__init__(f"stopped by {name} {where}; re-run the sweep to resume")
        self.signum, self.step = signum, step


def save_at_boundary() -> bool:
    """Checkpoint the training trial's last completed step (called from the preemption handler,
    which runs only between steps); False when no trial is training in this process."""
    if _boundary_saver is None:
        return False
    _boundary_saver()
    return True


def _in_main_thread() -> bool:  # only the main thread may install signal handlers
    return threading.current_thread() is threading.main_thread()


def _raise_interrupted(signum, frame):
    raise TrialInterrupted(signum)


class _StopSignals:
    """For a whole trial: STOP_SIGNALS raise TrialInterrupted (training defers them, see above)."""

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, _raise_interrupted) for sig in STOP_SIGNALS} \
            if _in_main_thread() else {}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


class _DeferredSignals:
    """Note PREEMPT_SIGNALS and STOP_SIGNALS while active; `deliver()`, called between steps, hands
    noted preemptions to the handlers they replaced and ends the trial on a noted stop signal
    (`step()` names the step just completed, which `save_at_boundary` has saved)."""

    def __init__(self, step=lambda: None):
        self.previous, self.pending, self.step = {}, [], step

    def __enter__(self):
        if _in_main_thread():
            note = lambda signum, frame: self.pending.append((signum, frame))  # noqa: E731
            for sig in PREEMPT_SIGNALS:
                handler = signal.getsignal(sig)
                if callable(handler):  # someone (submitit) handles it: defer that handler
                    self.previous[sig] = handler
                    signal.signal(sig, note)
            for sig in STOP_SIGNALS:
                self.previous[sig] = signal.signal(sig, note)
        return self

    def noted(self) -> int:
        """The kinds of signal noted and not yet delivered: PREEMPTED | STOPPED bits (data-parallel ranks
        agree on them at each step's loss all-reduce, so that every rank stops after the same step)."""
        kinds = {PREEMPTED if signum in PREEMPT_SIGNALS else STOPPED for signum, _ in self.pending}
        return sum(kinds)

    def deliver(self, agreed: int | None = None) -> None:
        """Hand the noted signals on; with `agreed` (several ranks: the signals any rank noted before this
        step's all-reduce), what every rank does at this step whatever it noted itself."""
        if agreed is not None:
            self._deliver_agreed(agreed)
            return
        while self.pending:
            signum, frame = self.pending.pop(0)
            if signum in STOP_SIGNALS:
                self.pending.clear()
                save_at_boundary()
                raise TrialInterrupted(signum, self.step())
            self.previous[signum](signum, frame)

    def _deliver_agreed(self, agreed: int) -> None:
        """A stop: every rank saves the step (rank 0 writes, the others wait for it) and ends. A preemption:
        every rank hands it to the handler it replaced (submitit's: on rank 0 it saves the step through
        save_at_boundary, requeues the job and exits; on the others it returns), then saves the step
        (once: a save already made is not repeated) and ends as a stop does. A signal noted after the
        all-reduce waits for the next step's agreement."""
        if not agreed:
            return
        own, self.pending = self.pending, []
        kinds = (STOP_SIGNALS if agreed & STOPPED else PREEMPT_SIGNALS)
        signum, frame = next(((s, f) for s, f in own if s in kinds), (kinds[0], None))
        if not agreed & STOPPED and callable(self.previous.get(signum)):
            self.previous[signum](signum, frame)
        save_at_boundary()
        raise TrialInterrupted(signum, self.step())

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if exc[0] is None:
            self.deliver()
        return False


@gin.configurable
class Trainer:
    """The training loop every baseline runs under; the method is a Gin reference.

    Non-finite losses (every step) or parameters (before each checkpoint, and every
    `finite_check_every` steps if > 0) stop the trial as `diverged`; no non-finite checkpoint is
    written. A torch.cuda.OutOfMemoryError in a training step retries the step with the batch
    size times `oom_factor`, at most `oom_retries` times per trial.

    With `validate_every` > 0, each validation that beats the best PSNR so far saves the state as
    `checkpoints/best_<step>.pt`; `evaluate_with = 'best'` scores the test split with that state
    instead of the last one.

    A trial that ends with finite numbers but learned nothing is recorded as `collapsed` (metrics.json
    is still written): when its test PSNR (or its best validation PSNR) is below `collapse_psnr`
    ('mean_colour': the PSNR of predicting every pixel as the split's mean colour, minus
    `collapse_margin` dB (default 0: a trial worse than that constant image learned nothing); a
    number: that floor in dB; None: no check), or when the lowest logged training loss is not below
    the first one by `min_loss_drop` of it (None: no check).

    `stages` (harness/run/stages.py): a list of training stages, each with its steps, the downscale of
    its training rays, the parameter groups it trains and values it sets. `precrop_steps` > 0: the
    first steps draw rays from the centre `precrop_frac` of each image only. `use_masks`: when the
    train split has masks (transient objects), draw rays from the kept pixels only."""

    def __init__(self, method=gin.REQUIRED, iterations: int = 1000, seed: int = 0,
                 checkpoint_every: int = 500, keep_checkpoints: int = 2, log_every: int = 50,
                 validate_every: int = 0, validation_views=(0,), progress_every: int = 10,
                 finite_check_every: int = 0, oom_retries: int = 3, oom_factor: float = 0.5,
                 evaluate_with: str = "latest", collapse_psnr="mean_colour", collapse_margin: float = 0.0,
                 min_loss_drop: float | None = 0.01, stages=None, precrop_steps: int = 0, precrop_frac: float = 0.5,
                 use_masks: bool = True):
        if not callable(method):
            raise ConfigError(f"Trainer.method = {method!r}: expected a configurable reference such as @ToyColour")
        self.method_cls = method
        self.iterations = _int("iterations", iterations, 0)
        self.seed = _int("seed", seed)
        self.checkpoint_every = _int("checkpoint_every", checkpoint_every, 1)
        self.keep_checkpoints = _int("keep_checkpoints", keep_checkpoints, 1)
        self.log_every = _int("log_every", log_every, 1)
        self.validate_every = _int("validate_every", validate_every, 0)
        if not isinstance(validation_views, (list, tuple)):
            raise ConfigError(f"Trainer.validation_views = {validation_views!r}: expected a list of view indices")
        self.validation_views = tuple(_int("validation_views", v, 0) for v in validation_views)
        self.progress_every = _int("progress_every", progress_every, 1)
        self.finite_check_every = _int("finite_check_every", finite_check_every, 0)
        self.oom_retries = _int("oom_retries", oom_retries, 0)
        if isinstance(oom_factor, bool) or not isinstance(oom_factor, (int, float)) or not 0 < oom_factor < 1:
            raise ConfigError(f"Trainer.oom_factor = {oom_factor!r}: expected a number between 0 and 1")
        self.oom_factor = float(oom_factor)
        if evaluate_with not in ("latest", "best"):
            raise ConfigError(f"Trainer.evaluate_with = {evaluate_with!r}: expected 'latest' or 'best'")
        if evaluate_with == "best" and not self.validate_every:
            raise ConfigError("Trainer.evaluate_with = 'best' needs validation: set Trainer.validate_every > 0")
        self.evaluate_with = evaluate_with
        if not (collapse_psnr is None or collapse_psnr == "mean_colour" or _finite_number(collapse_psnr)):
            raise ConfigError(f"Trainer.collapse_psnr = {collapse_psnr!r}: expected 'mean_colour', "
                              "a PSNR floor in dB, or None (no check)")
        self.collapse_psnr = collapse_psnr if collapse_psnr in (None, "mean_colour") else float(collapse_psnr)
        if not (_finite_number(collapse_margin) and collapse_margin >= 0):
            raise ConfigError(f"Trainer.collapse_margin = {collapse_margin!r}: expected a number of dB >= 0")
        self.collapse_margin = float(collapse_margin)
        if not (min_loss_drop is None or (_finite_number(min_loss_drop) and 0 <= min_loss_drop < 1)):
            raise ConfigError(f"Trainer.min_loss_drop = {min_loss_drop!r}: expected a fraction in [0, 1), "
                              "or None (no check)")
        self.min_loss_drop = None if min_loss_drop is None else float(min_loss_drop)
        self.stages = stages_mod.parse(stages, self.iterations)
        self.precrop_steps = _int("precrop_steps", precrop_steps, 0)
        if not (_finite_number(precrop_frac) and 0 < precrop_frac <= 1):
            raise ConfigError(f"Trainer.precrop_frac = {precrop_frac!r}: expected a fraction in (0, 1]")
        self.precrop_frac = float(precrop_frac)
        if not isinstance(use_masks, bool):
            raise ConfigError(f"Trainer.use_masks = {use_masks!r}: expected True or False")
        self.use_masks = use_masks
        self.switch: stages_mod.StageSwitch | None = None  # while training in stages
        self.best: dict[str, float] | None = None  # {"step", "psnr"} of the best validation so far (read on resume)
        self.tracker: Tracker | None = None  # live tracking (harness/run/tracking.py), made by run()
        self.health = GradientHealth()  # gradient statistics and the divergence diagnosis (harness/run/gradients.py)
        self.step = 0  # the last completed step, for the tracker's end
        # this attempt's seconds in the training loop (steps, logs, validation, checkpoints) and, of
        # those, in live tracking (telemetry, tracker calls, view panels): metrics.json's
        # train_wall_time and tracking_time, the overhead figure (tests/bench/test_bench_tracking.py)
        self.loop_s = self.tracking_s = 0.0
        # data parallel (harness/run/distributed.py): this process's rank; rank 0 alone writes and evaluates
        self.world = distributed.world()
        self.dp: distributed.DataParallel | None = None
        self.signals: _DeferredSignals | None = None  # while training: the signals noted, for the ranks' agreement
        self.agreed = 0  # the signals any rank noted before this step's all-reduce (data parallel)

    def _resume(self, method, record: TrialRecord) -> tuple[int, float]:
        if self.world.writer:
            checkpoints.tidy(record.checkpoint_dir)
        distributed.barrier()  # every rank loads the checkpoint rank 0 kept
        # the best so far survives a resume (even one from scratch), so a repeated or later
        # validation only replaces it when it is better
        best = checkpoints.load_best(record.checkpoint_dir)
        self.best = {"step": best[0], "psnr": float(best[1]["psnr"])} if best is not None else None
        found = checkpoints.load_latest(record.checkpoint_dir)
        step, payload = found if found is not None else (0, {})
        record.trim_log(step)  # lines past the checkpoint are logged again as training repeats them
        if found is None:
            return 0, 0.0
        method.load_state_dict(payload["method"])
        if payload.get("batch_size", method.batch_size) != method.batch_size:  # reduced after an OOM
            method.batch_size = int(payload["batch_size"])
        log.info("resumed %s from step %d", record.dir.name, step)
        return step, float(payload.get("train_time", 0.0))

    def _diverged(self, message: str, step: int, cause: str) -> TrialDiverged:
        """The trial's end at `step`, with the gradient-health diagnosis when the method is watched."""
        if self.health.method is not None:
            return self.health.diverged(step, cause, message)
        return _diverged(message, step)

    def _check_params(self, state: dict, step: int) -> None:
        bad = _nonfinite(state)
        if bad:
            raise self._diverged(f"non-finite parameters at step {step}: {', '.join(bad[:5])}", step, "parameters")

    def _checkpoint(self, method, record: TrialRecord, step: int, train_time: float) -> None:
        state = method.state_dict()
        self._check_params(state, step)
        checkpoints.save(record.checkpoint_dir, step,
                         {"step": step, "train_time": train_time, "batch_size": method.batch_size, "method": state},
                         keep=self.keep_checkpoints)

    def _save_best(self, method, record: TrialRecord, step: int, psnr: float) -> None:
        """Save the state as the best if `psnr` beats the best so far (NaN never does)."""
        if self.best is not None and not psnr > self.best["psnr"]:
            return
        if self.best is not None and self.best["step"] == step:
            # a resume repeating the step of a kept best: never rewrite a best file in place
            return
        state = method.state_dict()
        self._check_params(state, step)
        checkpoints.save_best(record.checkpoint_dir, step,
                              {"step": step, "psnr": psnr, "batch_size": method.batch_size, "method": state})
        self.best = {"step": step, "psnr": psnr}

    def _check_finite(self, losses: dict, step: int) -> None:
        bad = {k: v for k, v in losses.items() if not math.isfinite(float(v))}
        if bad:
            raise self._diverged(f"non-finite loss at step {step}: {bad}", step, "loss")

    def _train_step(self, method, sampler: stages_mod.TrainingRays, step: int, record: TrialRecord) -> dict:
        """One training step; on out-of-memory, the same step again with a smaller batch."""
        patch = method.patch_size if has_capability(method, "patches") else 1
        # a method over time steps trains each step on that step's views (harness.core.method 'time_steps')
        images = method.train_images(step) if has_capability(method, "time_steps") else None
        while True:
            try:
                if self.dp is None:
                    return method.train_step(step, sampler.sample(step, method.batch_size, patch, images))
                batch = distributed.take(sampler.sample(step, method.batch_size, patch, images), self.dp, patch * patch)
                losses = method.train_step(step, batch)
                noted = self.signals.noted() if self.signals is not None else 0  # as late as possible
                losses, self.agreed = distributed.reduce_losses(losses, self.dp, noted)
                return losses
            except torch.cuda.OutOfMemoryError as exc:
                error = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
                if self.dp is not None:  # the others wait in this step's all-reduce: end the job, say what to do
                    raise TrialOutOfMemory(
                        f"out of memory at step {step} on rank {self.world.rank} of {self.world.size} with "
                        f"batch_size {method.batch_size}: a data-parallel trial does not retry with a smaller "
                        f"batch (every rank would have to); lower {type(method).__name__}.batch_size ({error})"
                    ) from None
            # retried outside the except block, so the traceback's tensors are already freed
            old = method.batch_size
            reductions = record.status().get("oom_reductions", [])
            new = int(old * self.oom_factor) // (patch * patch) * (patch * patch)
            if len(reductions) >= self.oom_retries or new < max(1, patch * patch):
                raise TrialOutOfMemory(
                    f"out of memory at step {step} with batch_size {old} after {len(reductions)} reductions "
                    f"(Trainer.oom_retries = {self.oom_retries}); lower "
                    f"{type(method).__name__}.batch_size or the model's size ({error})")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of memory at step %d with batch_size %d: retrying with %d", step, old, new)
            method.batch_size = new
            record.update(batch_size=new, oom_reductions=reductions + [{"step": step, "from": old, "to": new}])

    def train(self, method, scene, record: TrialRecord, evaluation: Evaluation) -> tuple[int, float]:
        split = scene.split("train")
        stages_mod.check_method(self.stages, method)
        if has_capability(method, "time_steps") and method.total_steps != self.iterations:
            raise ConfigError(f"Trainer.iterations = {self.iterations}, but {type(method).__name__}'s schedule over "
                              f"the time steps takes {method.total_steps} steps: set Trainer.iterations = "
                              f"{method.total_steps}")
        self.switch = stages_mod.StageSwitch(method, self.stages) if self.stages else None
        masks = split.masks if self.use_masks else None
        depth = scene.extras.get("depth", {}).get("train")
        # without stages, precrop, masks or depth: one RaySampler drawing what it drew before they existed
        sampler = stages_mod.TrainingRays(split.images, split.cameras, self.seed, self.stages, masks, depth,
                                          self.precrop_steps, self.precrop_frac)
        if self.stages and self.world.writer:
            record.update(stages=[st.record() for st in self.stages])
        if self.world.size > 1:
            self.dp = method.data_parallel = distributed.DataParallel(self.world.rank, self.world.size)
        step, train_time = self._resume(method, record)
        self.step = step
        if self.tracker is not None:
            with self._tracking():
                self.tracker.open(record, self.iterations, step)
        record.write_progress(step, self.iterations, phase="train")
        if has_capability(method, "gradients"):
            self.health.attach(method, self.log_every, step)
        t_loop = time.perf_counter()
        global _boundary_saver
        saved = [-1]

        def save_boundary() -> None:  # the last completed step (late-bound), once; the other ranks wait for it
            if saved[0] != step:
                saved[0] = step
                if self.world.writer:
                    self._checkpoint(method, record, step, train_time)
                distributed.barrier()

        _boundary_saver = save_boundary
        try:
            with _DeferredSignals(step=lambda: step) as deferred:
                self.signals = deferred
                while step < self.iterations:
                    step, train_time = self._train_iteration(method, scene, record, evaluation, sampler,
                                                             step, train_time)
                    self.step = step
                    # between steps: a preemption saves this step, then exits (several ranks: what they agreed on)
                    deferred.deliver(self.agreed if self.dp is not None else None)
        finally:
            _boundary_saver, self.signals = None, None
            self.loop_s += time.perf_counter() - t_loop
            if self.health.warnings:
                record.update(gradient_warnings=self.health.warnings)
            self.health.detach()
        return step, train_time

    @contextlib.contextmanager
    def _tracking(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.tracking_s += time.perf_counter() - t0

    def _train_iteration(self, method, scene, record, evaluation, sampler, step: int, train_time: float
                         ) -> tuple[int, float]:
        """One training step and its bookkeeping (logs, validation, checkpoint)."""
        stage = self._enter_stage(step)
        t0 = time.perf_counter()
        losses = self._train_step(method, sampler, step, record)
        train_time += time.perf_counter() - t0
        step += 1
        boundary = stage is not None and step == stage.stop  # a stage's last step: logged and checkpointed
        self._check_finite(losses, step)
        if self.finite_check_every and step % self.finite_check_every == 0:
            self._check_params(method.state_dict(), step)
        if (fault := faults.hit("step")) is not None:
            fault.fire(record.dir)
        last = step == self.iterations
        logged = step % self.log_every == 0 or last or boundary
        tracker = self.tracker
        tracked = tracker is not None and tracker.scalars_due(step, last)
        with self._tracking():  # the method's telemetry (learning rates, gradient norms, model facts)
            telemetry = method.telemetry() if (logged or tracked) and has_capability(method, "telemetry") else {}
        health = self.health.take()  # gradient statistics, when due at this step
        if logged or health:
            record.append_log({"step": step, "time": round(train_time, 3),
                               **({"stage": stage.name} if stage is not None else {}),
                               **(({**losses, **telemetry}) if logged else {}), **health})
        if self.health.new_warning:  # a group's first exploding/vanishing warning: in status.json at once
            self.health.new_warning = False
            record.update(gradient_warnings=self.health.warnings)
        if tracker is not None and tracked:
            with self._tracking():
                tracker.log_scalars(step, {**{f"train/{k}": v for k, v in losses.items()}, **telemetry, **health},
                                    train_time=train_time, rays=method.batch_size)
        elif tracker is not None and health:
            with self._tracking():
                tracker.log_scalars(step, health)
        if step % self.progress_every == 0:
            record.write_progress(step, self.iterations, phase="train", loss=float(losses.get("loss", 0)))
        split = validation_split(scene) if self.validate_every and step % self.validate_every == 0 else None
        val: dict = {}
        if split is not None and not self.world.writer:  # rank 0 scores (and saves the best state); the
            evaluation.follow(method, scene.split(split), self.validation_views)  # others render their share
        elif split is not None:
            wanted = tuple(m for m in VALIDATION_METRICS if m == "psnr" or m in evaluation.metrics)
            val = evaluation.score(method, scene.split(split), self.validation_views, metrics=wanted)
            scores = {k: val[k] for k in wanted if k in val}
            record.append_log({"step": step, "time": round(train_time, 3),
                               **{f"val_{k}": v for k, v in scores.items()}})
            if self.tracker is not None:
                with self._tracking():
                    self.tracker.log_scalars(step, {f"val/{k}": v for k, v in scores.items()})
            self._save_best(method, record, step, float(val["psnr"]))
        if self.tracker is not None and self.world.writer and self.tracker.images_due(step):
            with self._tracking():
                self._track_view(method, scene, evaluation, step)
        if step % self.checkpoint_every == 0 or step == self.iterations or boundary:
            if self.world.writer:
                self._checkpoint(method, record, step, train_time)
            if self.tracker is not None:
                with self._tracking():
                    self.tracker.flush()
            distributed.barrier()  # the other ranks wait until the step is saved
        if split is not None:  # a search's trial reports to its study, which may stop it here (harness/run/pruning.py)
            self._report_validation(record, step, val.get("psnr"),
                                    save=lambda: self._checkpoint(method, record, step, train_time))
        return step, train_time

    def _enter_stage(self, step: int):
        """The stage of step `step` (0-based), applied to the method when it changes; None without stages."""
        if self.switch is None:
            return None
        before = self.switch.current
        stage = self.switch.enter(step)
        if stage is not before and stage is not None:
            log.info("stage %d '%s' from step %d: %d steps, rays downscaled x%d, training %s%s", stage.index,
                     stage.name, stage.start, stage.steps, stage.downscale,
                     "every group" if stage.train is None else ", ".join(stage.train),
                     f", set {stage.values}" if stage.values else "")
        return stage

    def _report_validation(self, record: TrialRecord, step: int, psnr: float | None, save) -> None:
        """Rank 0 reports the validation to the trial's study (if any); every rank ends when it is pruned."""
        pruned = None
        if self.world.writer:
            try:
                pruning.at_validation(record.dir, step, float(psnr), self.iterations, save=save)  # type: ignore[arg-type]
            except pruning.TrialPruned as exc:
                pruned = exc
        if self.world.size > 1 and distributed.broadcast_flag(int(pruned is not None)) and pruned is None:
            pruned = pruning.TrialPruned(step, math.nan)  # rank 0's decision; it records the value
        if pruned is not None:
            raise pruned

    def _track_view(self, method, scene, evaluation: Evaluation, step: int) -> None:
        """The tracker's view panel (render, ground truth, error map, depth) of a validation view."""
        split_name = validation_split(scene)
        if split_name is None or self.tracker is None:
            return
        split = scene.split(split_name)
        views = self.validation_views
        index = views[min(self.tracker.image_view, len(views) - 1)] if views else 0
        if index >= len(split):
            return
        panel = view_image(method, split, index, evaluation, scene.background)
        self.tracker.log_images(step, {f"view/{split_name}_{split.names[index]}": panel})

    def run(self, record: TrialRecord) -> dict:
        """Train (resuming if possible), evaluate on the test split, write metrics.json; the tracker
        (harness/run/tracking.py) sees the whole run and is closed however it ends."""
        self.tracker = Tracker() if self.world.writer else Tracker(backends=())
        state, metrics = "failed", None
        try:
            metrics = self._run(record)
            state = "done"
            return metrics
        except TrialCollapsed:
            state = "collapsed"
            raise
        except TrialDiverged:
            state = "diverged"
            raise
        finally:
            self.tracker.close(metrics if metrics is not None else _read_metrics(record), self.step, state)

    def build(self) -> tuple:
        """(scene it trains on, method) as the trial builds them: seeded, the method checked against the
        protocol; the scene is the method's own part of it for 'own_scene' methods."""
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % 2**32)
        scene = load_scene()
        method = self.method_cls(scene=scene, seed=self.seed)
        problems = method_problems(method)
        if problems:
            raise ConfigError(problems[0])
        return (method.trial_scene if has_capability(method, "own_scene") else scene), method

    def _run(self, record: TrialRecord) -> dict:
        evaluation = Evaluation()
        evaluation.preflight()
        scene, method = self.build()
        if has_capability(method, "device"):  # what it computes on, not only what is there
            record.update(device=device_name(method.device))
        probe = memory.TrialProbe(method, evaluation, last_step=self.iterations - 1)  # metrics.json `memory`
        step, train_time = self.train(method, scene, record, evaluation)
        evaluated = self._load_evaluated(method, record)
        if not self.world.writer:  # rank 0 scores and writes; the others render their share of the views
            evaluation.follow(method, scene.split("test"))
            return {}
        test = scene.split("test")
        record.write_progress(0, len(test), phase="eval")
        done = [0]

        def tick():
            done[0] += 1
            if done[0] % 5 == 0 or done[0] == len(test):
                record.write_progress(done[0], len(test), phase="eval")

        t0 = time.perf_counter()
        metrics = evaluation.score(method, test, renders_dir=record.renders_dir, progress=tick,
                                   background=scene.background, flows=scene.extras.get("flow", {}).get("test"))
        metrics.update(iterations=step, train_time=round(train_time, 3),
                       eval_time=round(time.perf_counter() - t0, 3), n_test_views=len(test),
                       model=method.stats(), scene=scene.name, resolution=[test.cameras.width, test.cameras.height],
                       peak_rss_mb=memory.process_peak_rss_mb(), evaluated_checkpoint=evaluated,
                       train_wall_time=round(self.loop_s, 3), tracking_time=round(self.tracking_s, 3),
                       gradient_health_time=round(self.health.seconds, 3),
                       memory=probe.record())
        if self.best is not None:
            metrics["best_validation"] = {**self.best, "split": validation_split(scene)}
        checks = self._collapse_checks(scene, metrics, record)
        if checks is not None:
            metrics["collapse"] = checks
        record.write_metrics(metrics)  # also when collapsed: the numbers stay inspectable
        if checks is not None and checks["fired"]:
            raise TrialCollapsed("; ".join(checks["reasons"]), checks)
        return metrics

    def _psnr_floor(self, scene, split: str, indices=None) -> dict:
        """The PSNR floor of views of `split` (all, or `indices`): {"floor", and for 'mean_colour'
        "mean_colour_psnr" and "margin"}."""
        if self.collapse_psnr != "mean_colour":
            return {"floor": self.collapse_psnr}
        views = scene.split(split)
        images = [views.images[int(i)] for i in (range(len(views)) if indices is None else indices)]
        baseline = mean_colour_psnr(images, scene.background)
        return {"floor": baseline - self.collapse_margin, "mean_colour_psnr": baseline, "margin": self.collapse_margin}

    @staticmethod
    def _below(what: str, psnr: float, floor: dict) -> str:
        rule = (f"mean-colour PSNR {floor['mean_colour_psnr']:.2f} dB - {floor['margin']:g} dB"
                if "mean_colour_psnr" in floor else "Trainer.collapse_psnr")
        return f"{what} {psnr:.2f} dB is below the floor {floor['floor']:.2f} dB ({rule})"

    def _collapse_checks(self, scene, metrics: dict, record: TrialRecord) -> dict | None:
        """The end-of-trial checks: a trial whose numbers are finite but that learned nothing (e.g. a
        learning rate of 1e12: flat loss, test PSNR 3 dB) must not end `done`. Returns the figures,
        `fired` (names of the checks that fired) and `reasons` (one phrase each), or None when both
        checks are off. A floor that is not finite (every view one flat colour) checks nothing."""
        if self.collapse_psnr is None and self.min_loss_drop is None:
            return None
        out: dict = {"fired": [], "reasons": []}
        if self.collapse_psnr is not None:
            floor = self._psnr_floor(scene, "test")
            test_psnr = float(metrics.get("psnr", math.nan))
            out["psnr"] = {"test": test_psnr, "rule": "mean_colour" if "mean_colour_psnr" in floor else "dB", **floor}
            if math.isfinite(floor["floor"]) and test_psnr < floor["floor"]:
                out["fired"].append("test_psnr")
                out["reasons"].append(self._below("test PSNR", test_psnr, floor))
            split = validation_split(scene)
            if self.best is not None and split is not None:
                vfloor = self._psnr_floor(scene, split, self.validation_views)
                best = float(self.best["psnr"])
                out["psnr"]["validation"] = {"best": best, "step": self.best["step"], **vfloor}
                if math.isfinite(vfloor["floor"]) and best < vfloor["floor"]:
                    out["fired"].append("validation_psnr")
                    out["reasons"].append(self._below(f"best validation PSNR (step {self.best['step']})", best, vfloor))
        if self.min_loss_drop is not None:
            # the log of the whole run: a resume trims it back to its checkpoint and logs on from there
            rows = [r for r in record.read_log() if _finite_number(r.get("loss"))]
            out["loss"] = {"min_drop": self.min_loss_drop, "logged": len(rows)}
            if len(rows) >= MIN_LOGGED_LOSSES:
                first, lowest = rows[0], min(rows, key=lambda r: r["loss"])
                out["loss"].update(first=first["loss"], first_step=first.get("step"),
                                   lowest=lowest["loss"], lowest_step=lowest.get("step"))
                if first["loss"] - lowest["loss"] <= self.min_loss_drop * abs(first["loss"]):
                    out["fired"].append("loss")
                    out["reasons"].append(
                        f"the loss never decreased by {self.min_loss_drop * 100:g}% (first {first['loss']:.4g} at step "
                        f"{first.get('step')}, lowest {lowest['loss']:.4g} at step {lowest.get('step')})")
        return out

    def _load_evaluated(self, method, record: TrialRecord) -> str:
        """Load the state the test split is scored with; 'latest' (as trained) or 'best'."""
        if self.evaluate_with == "latest":
            return "latest"
        found = checkpoints.load_best(record.checkpoint_dir)
        if found is None:  # validation never ran (iterations < validate_every, or no test split)
            log.warning("trial %s: Trainer.evaluate_with = 'best' but no best checkpoint: evaluating the latest state",
                        record.dir.name)
            return "latest"
        method.load_state_dict(found[1]["method"])
        log.info("trial %s: evaluating the best state (step %d, validation PSNR %.3f)",
                 record.dir.name, found[0], found[1]["psnr"])
        return "best"


# The loss check needs the first logged loss and at least two later ones to say it never decreased.
MIN_LOGGED_LOSSES = 3
# What validation scores (Trainer.validate_every; those of Evaluation.metrics, PSNR always): logged as
# val_<metric> in train.jsonl and val/<metric> to the tracker
VALIDATION_METRICS = ("psnr", "ssim", "lpips")


def _read_metrics(record: TrialRecord) -> dict | None:
    """metrics.json if the trial wrote it (a collapsed trial does), for the tracker's end."""
    try:
        return record.metrics()
    except (OSError, ValueError, RecordError):
        return None


def mean_colour_psnr(images, background=(1.0, 1.0, 1.0)) -> float:
    """The PSNR of predicting every view of `images` as their mean colour, saved as 8 bits as a render
    is, scored and averaged over views as the evaluation does (harness.core.metrics: the targets go through
    the same validation and background compositing): the cheapest baseline anything trained must beat.
    One pass over the images for the colour, one for the scores (no copy of the split is kept)."""
    from harness.core.metrics import prepare, psnr, to_8bit

    def targets():
        return (prepare(img, str(i), "target", background) for i, img in enumerate(images))

    total, pixels = np.zeros(3), 0
    for t in targets():
        total += t.reshape(-1, 3).sum(axis=0, dtype=np.float64)
        pixels += t.shape[0] * t.shape[1]
    colour = to_8bit((total / pixels).astype(np.float32))
    scores = [float(psnr(np.broadcast_to(colour, t.shape), t)) for t in targets()]
    finite = [s for s in scores if math.isfinite(s)]  # the evaluation's mean rule (PSNR_MEAN_RULE)
    return float(np.mean(finite)) if finite else math.inf


def validation_split(scene) -> str | None:
    """The split validation scores: 'val' when the scene has one (so choosing the best state never
    looks at the test views), else 'test'; None when there is neither."""
    return next((name for name in ("val", "test") if name in scene.splits), None)


def check_settings() -> None:
    """Build the Trainer from the parsed Gin config, so that a bad setting (wrong type, no method)
    is one ConfigError line when the sweep is expanded rather than a trial failing later."""
    try:
        Trainer()
    except HarnessError as exc:  # gin appends "In call to configurable 'Trainer'": keep the first line
        raise ConfigError(str(exc).splitlines()[0]) from None
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"Trainer: {str(exc).strip().splitlines()[0]}") from None


def device_name(device: torch.device | str | None = None) -> str:
    """What the trial computes on, for the record and the report's provenance: `device` (a
    method's), or the GPU when there is one."""
    dev = torch.device(device) if device is not None else pick_device("auto")
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"CPU ({os.cpu_count()} cores, torch {torch.__version__})"


def run_trial(trial_dir: Path, job_info: dict | None = None, wait: bool = True) -> dict:
    """Run the trial whose Gin config is already parsed; manages status and the lock.

    If another process (a second sweep of the same experiment) holds the trial's lock, wait for
    it (`wait`) and then return its result (or raise its failure) instead of training again; a
    trial it left unfinished (killed) is resumed."""
    world = distributed.world()
    if not world.writer:
        return _follow(trial_dir, world.rank)
    record = TrialRecord(trial_dir)
    with record.lock(wait=wait) as waited:
        status = record.status()
        if status.get("state") == "done":
            distributed.broadcast_flag(0)  # the other ranks have nothing to train
            return record.metrics() or {}
        if waited and status.get("state") in FINAL_STATES:  # not done (above): as the other run left it
            distributed.broadcast_flag(0)
            raise RecordError(f"{record.dir}: {status['state']} in another sweep: {status.get('error', '')}")
        for folder in (record.dir, record.renders_dir):  # leftovers of writes cut by a kill
            if folder.is_dir():
                remove_temp_files(folder)
        if world.size > 1:
            distributed.clear_rank_errors(record.dir)
            distributed.broadcast_flag(1)
        _pin_threads(record)
        code = _code_of_this_run(record, status)
        record.begin_attempt(torch_threads=torch.get_num_threads(), device=device_name(), code=code,
                             environment=provenance.environment(), **(job_info or {}))
        try:
            with _StopSignals():
                metrics = Trainer().run(record)
            record.set_state("done", psnr=metrics.get("psnr"))
        except TrialDiverged as exc:
            last = checkpoints.newest_valid(record.checkpoint_dir)
            _record_end(record, "diverged", error=str(exc), diverged_at=exc.step,
                        last_checkpoint=last.name if last else None, divergence=getattr(exc, "diagnosis", None))
            raise
        except pruning.TrialPruned as exc:  # a search stopped it at a rung; that step is checkpointed
            _record_end(record, "pruned", error=str(exc), pruned_at=exc.step, pruned_value=exc.value)
            raise
        except TrialCollapsed as exc:  # final like `diverged`; metrics.json is written
            _record_end(record, "collapsed", error=str(exc), collapse=exc.checks,
                        psnr=exc.checks.get("psnr", {}).get("test"))
            raise
        except BaseException as exc:
            import traceback

            tail = "".join(traceback.format_exception(exc))[-2000:]
            # SystemExit: submitit's preemption handler requeues the job, then exits inside training
            stopped = isinstance(exc, (KeyboardInterrupt, SystemExit, TrialInterrupted))
            state = "preempted" if stopped else "failed"
            error = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
            if world.size > 1 and distributed.is_collective_error(exc):  # another rank's failure, if it said so
                peer = distributed.peer_error(record.dir)
                if peer is not None:
                    error, tail = f"rank {peer['rank']}: {peer['error']}", peer.get("traceback", tail)
                    if peer.get("kind") == "TrialInterrupted":  # a stop signal that rank alone got outside training
                        state = "preempted"
            _record_end(record, state, error=error, traceback=tail)
            raise
        return metrics


def _follow(trial_dir: Path, rank: int) -> dict:
    """A rank other than 0 (data parallel): trains in step with rank 0, writes nothing but its error
    (`ranks/<rank>.error`, which rank 0 records when its collectives fail because of it)."""
    record = distributed.FollowerRecord(trial_dir)
    if not distributed.broadcast_flag(0):  # rank 0 found the trial done (or another sweep's)
        return {}
    try:
        with _StopSignals():
            return Trainer().run(record)
    except BaseException as exc:
        import traceback

        distributed.write_rank_error(record.dir, rank, exc, "".join(traceback.format_exception(exc)))
        raise


def _code_of_this_run(record: TrialRecord, status: dict) -> dict:
    """The source fingerprint this attempt runs (the project's folders and the modules of the trial's
    configurables, e.g. a method defined elsewhere); a resume under other code than the attempt that
    wrote the checkpoints is said in the log and kept in `code_changes`."""
    from harness.run.identity import operative_modules

    code = provenance.source_fingerprint(operative_modules())
    old = status.get("code") or {}
    if old.get("source_sha256") and old["source_sha256"] != code["source_sha256"] \
            and any(record.checkpoint_dir.glob("step_*.pt")):
        log.warning("trial %s resumes under other code than its last attempt (%s -> %s): its result mixes them",
                    record.dir.name, provenance.short_code(old), provenance.short_code(code))
        record.update(code_changes=status.get("code_changes", []) + [{"from": provenance.short_code(old),
                                                                        "to": provenance.short_code(code)}])
    return code


def _record_end(record: TrialRecord, state: str, **fields) -> None:
    """Record how an attempt ended; if even that write fails (disk full), log it and let the
    original error propagate (the status stays `running`, and a re-run resumes)."""
    try:
        record.set_state(state, **fields)
    except OSError as exc:
        log.error("could not record state %s for %s: %s", state, record.dir, exc)


def _pin_threads(record: TrialRecord) -> None:
    """Resume with the torch thread count the checkpoints were made with: float reductions (and
    so the result) depend on it, and a resumed trial must match an uninterrupted one bit for bit."""
    recorded = record.status().get("torch_threads")
    if recorded and recorded != torch.get_num_threads() and any(record.checkpoint_dir.glob("step_*.pt")):
        log.warning("trial %s: using its recorded %d torch threads (not %d) to resume bit-identically",
                    record.dir.name, recorded, torch.get_num_threads())
        torch.set_num_threads(int(recorded))
