"""Watching trials train: TensorBoard event files in every trial's folder (`tb/`), and Weights &
Biases or MLflow runs when Gin names them (`Tracker.backends`). Tracking is bookkeeping: it never
enters a trial's id and never changes what the trial computes (tests/test_tracking.py).

What is logged (every `scalar_every` steps unless said): the total loss and each named term, the
method's telemetry (learning rate and gradient norm per parameter group, model facts such as the
voxel count; the 'telemetry' capability, harness.core.method), steps/s and rays/s, memory (RSS;
CUDA allocated and peak on a GPU), validation scores when validation runs; every `image_every`
steps a validation view's render, ground truth, error map and depth side by side; once, the trial's
config.gin as text and its swept bindings as HParams, with the test scores at the end.

Resume: a resumed trial continues the same curves. TensorBoard's writer purges the events past the
checkpoint's step (`purge_step`, which TensorBoard's readers honour); W&B's run id is the trial id
and MLflow's run is found by its `harness.trial_id` tag, and steps the backend already holds are
not sent again (training repeats them bit for bit, so their values are the same).
Failures: a backend that raises is switched off after one warning naming it; training goes on and
status.json lists the failure under `tracking_errors`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import gin
import numpy as np

from harness.core.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("tensorboard", "wandb", "mlflow")
SCORES = ("psnr", "ssim", "lpips")  # metrics.json's scores, logged as test/<score> when the trial ends


def check_backends(backends) -> tuple[str, ...]:
    """The chosen backends, each known and importable: one ConfigError line otherwise (the sweep
    calls this when it expands, before anything trains)."""
    if isinstance(backends, str) or not isinstance(backends, (list, tuple)):
        raise ConfigError(f"Tracker.backends = {backends!r}: expected a list such as ['tensorboard']")
    for name in backends:
        if name not in BACKENDS:
            raise ConfigError(f"Tracker.backends: unknown backend {name!r} (known: {', '.join(BACKENDS)})")
        try:
            __import__(name)  # each backend is the package of its name
        except ImportError:
            install = "pip install -e ." if name == "tensorboard" else f"pip install -e '.[{name}]'"  # extras
            raise ConfigError(f"Tracker.backends names {name!r} but the {name} package is not installed "
                              f"({install})") from None
    return tuple(backends)


def _every(value, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"Tracker.{name} = {value!r}: expected an integer >= 0 (0: never) or None")
    return value


@gin.configurable
class Tracker:
    """How a trial is watched while it trains (see the module docstring).

    `scalar_every` / `image_every`: steps between scalar / image logs; None scales the designs' 100
    and 1000 steps to the run (1% and 10% of `Trainer.iterations`, at most 100 and 1000); 0: never.
    `image_view`: index into `Trainer.validation_views` of the view shown. `wandb_project`,
    `wandb_entity`: where W&B runs go (`WANDB_MODE=offline` keeps them local). `mlflow_uri`: the
    MLflow tracking store (default: SQLite `runs/mlflow.db` beside the trials)."""

    def __init__(self, backends=("tensorboard",), scalar_every: int | None = None, image_every: int | None = None,
                 images: bool = True, image_view: int = 0, hparams: bool = True, config_text: bool = True,
                 wandb_project: str = "nerf-harness", wandb_entity: str | None = None, mlflow_uri: str | None = None):
        self.backend_names = check_backends(backends)
        self.scalar_every_setting, self.image_every_setting = scalar_every, image_every
        _every(scalar_every, "scalar_every", 0)
        _every(image_every, "image_every", 0)
        self.images, self.image_view = bool(images), int(image_view)
        self.hparams, self.config_text = bool(hparams), bool(config_text)
        self.wandb_project, self.wandb_entity = wandb_project, wandb_entity
        self.mlflow_uri = mlflow_uri
        self.backends: dict = {}
        self.errors: list[str] = []
        self.record = None
        # (step, train time) of the previous scalar log: throughput is over the interval since
        self._last: tuple[int, float] | None = None

    # ---- lifetime ------------------------------------------------------------------------------
    def open(self, record, iterations: int, start_step: int) -> None:
        """Start (or, resumed, continue) the trial's runs in every backend."""
        self.scalar_every = _every(self.scalar_every_setting, "scalar_every", max(1, min(100, iterations // 100)))
        self.image_every = _every(self.image_every_setting, "image_every", max(1, min(1000, iterations // 10)))
        self.record = record
        info = _trial_info(record)
        for name in self.backend_names:
            self._call(name, lambda name=name: self._start(name, record, info, start_step))

    def _start(self, name: str, record, info: dict, start_step: int) -> None:
        from harness.run import trackers

        # the config and the HParams session once per run: again only if the first attempt's never
        # reached the disk (killed before its first flush)
        once = start_step == 0 or not any((record.dir / "tb").glob("events.out.tfevents.*"))
        backend: trackers.TensorBoard | trackers.WandB | trackers.MLflow
        if name == "tensorboard":
            backend = trackers.TensorBoard(record.dir / "tb", start_step)
        elif name == "wandb":
            backend = trackers.WandB(record.dir, info, self.wandb_project, self.wandb_entity)
        else:
            uri = self.mlflow_uri or f"sqlite:///{Path(record.dir).resolve().parent.parent / 'mlflow.db'}"
            backend = trackers.MLflow(uri, info)
        self.backends[name] = backend
        if self.config_text and (once or name != "tensorboard"):
            backend.text("config", info["config"], 0)
        if self.hparams and (once or name != "tensorboard"):
            backend.start_hparams(info["hparams"])

    def close(self, metrics: dict | None, step: int, state: str) -> None:
        """The test scores (as `test/<metric>` at the last step) and the end of the runs."""
        final = {f"test/{k}": v for k, v in (metrics or {}).items() if k in SCORES and _number(v)}
        for name, backend in list(self.backends.items()):
            self._call(name, lambda backend=backend: backend.finish(final, step, state, self.hparams))
        self.backends.clear()

    # ---- what is logged --------------------------------------------------------------------------
    def scalars_due(self, step: int, last: bool = False) -> bool:
        return bool(self.backends) and self.scalar_every > 0 and (step % self.scalar_every == 0 or last)

    def images_due(self, step: int) -> bool:
        return bool(self.backends) and self.images and self.image_every > 0 and step % self.image_every == 0

    def log_scalars(self, step: int, values: dict, train_time: float | None = None, rays: int | None = None) -> None:
        """Finite numbers of `values` at `step`; with `train_time` (s) and `rays` (per step) also steps/s
        and rays/s since the previous call, and the process's memory."""
        out = {k: float(v) for k, v in values.items() if _number(v)}
        if train_time is not None:
            if self._last is not None and train_time > self._last[1] and step > self._last[0]:
                rate = (step - self._last[0]) / (train_time - self._last[1])
                out["perf/steps_per_s"] = rate
                if rays:
                    out["perf/rays_per_s"] = rate * rays
            self._last = (step, train_time)
            out.update(memory())
        for name, backend in list(self.backends.items()):
            self._call(name, lambda backend=backend: backend.scalars(step, out))

    def flush(self) -> None:
        """Everything logged so far onto the disk (called at each checkpoint: a trial killed later
        resumes from it with its curves up to it kept)."""
        for name, backend in list(self.backends.items()):
            self._call(name, backend.flush)

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        for name, backend in list(self.backends.items()):
            self._call(name, lambda backend=backend: backend.images(step, images))

    # ---- failures --------------------------------------------------------------------------------
    def _call(self, name: str, fn) -> None:
        """Run one backend call; the first failure switches the backend off, with one warning and a
        note in status.json, and training goes on."""
        try:
            fn()
        except Exception as exc:  # any failure of a logging backend: never the trial's
            self.backends.pop(name, None)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            message = f"{name}: {exc.__class__.__name__}: {first}"
            self.errors.append(message)
            log.warning("tracking backend %s failed and is off for the rest of this trial (%s)", name, message)
            if self.record is not None:
                try:
                    self.record.update(tracking_errors=self.errors)
                except OSError:  # the disk that failed the backend may fail this too: the log has it
                    pass


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _trial_info(record) -> dict:
    """What the backends name and describe a trial's run with."""
    status = record.status()
    bindings = status.get("bindings") or {}
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else repr(v)) for k, v in bindings.items()}
    config = record.config_path.read_text() if record.config_path.exists() else ""
    return {"trial_id": record.dir.name, "experiment": status.get("experiment", ""),
            "label": status.get("label") or record.dir.name, "bindings": bindings, "hparams": hparams,
            "config": config}


def memory() -> dict[str, float]:
    """The process's resident memory and, with CUDA, the allocated and peak GPU memory (MB)."""
    out = {}
    try:
        with open("/proc/self/statm") as f:
            out["memory/rss_mb"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux
        import resource

        out["memory/rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["memory/cuda_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
        out["memory/cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def view_panel(render: np.ndarray, target: np.ndarray, depth: np.ndarray | None,
               background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Render | ground truth | error map | depth (when known), side by side, as 8-bit HWC; the ground
    truth composited on the scene's background as the scores see it."""
    from harness.core.metrics import error_map, prepare, to_uint8

    truth = prepare(target, "view", "target", tuple(float(c) for c in background))
    panels = [to_uint8(render), to_uint8(truth), np.asarray(error_map(render, truth))]
    if depth is not None and depth.shape[:2] == render.shape[:2]:
        finite = np.isfinite(depth)
        d = np.where(finite, depth, 0.0)
        lo, hi = (float(d[finite].min()), float(d[finite].max())) if finite.any() else (0.0, 1.0)
        grey = to_uint8(((d - lo) / max(hi - lo, 1e-8)).astype(np.float32))
        panels.append(np.repeat(grey[..., None], 3, axis=2))
    return np.concatenate(panels, axis=1)


def view_image(method, split, index: int, evaluation, background) -> np.ndarray:
    """The panel of view `index` of `split`: through the method's own view protocol when it has one
    (no depth then), else a plain render of the view with its depth."""
    from harness.core.method import has as has_capability
    from harness.run.evaluation import render_maps

    if has_capability(method, "views"):
        [(_, image, target, *_)] = list(evaluation.views(method, split, [index], shared=False))
        return view_panel(image, target, None, background)
    maps = render_maps(method, split, index, evaluation.chunk)
    return view_panel(maps["rgb"], split.images[index], maps.get("depth"), background)
