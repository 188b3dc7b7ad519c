"""The tracking backends harness.run.tracking drives: TensorBoard (torch's SummaryWriter), Weights &
Biases and MLflow (optional extras). Each exposes text, start_hparams, scalars, images and finish;
any exception reaches Tracker._call, which switches the backend off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TRIAL_TAG = "harness.trial_id"  # MLflow: the run of a trial is found by this tag on resume
STEP_KEY = "train/loss"  # logged at every scalar step: a resumed run holds the steps up to its last


class TensorBoard:
    """Event files in the trial's tb/ folder. A resumed trial opens a new event file with
    purge_step = the checkpoint's step + 1, so readers drop what the killed attempt logged past it."""

    def __init__(self, log_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_step + 1 if start_step > 0 else None,
                                    flush_secs=10)
        # summaries SummaryWriter has no add_* for (the HParams session protos) go through its file writer
        events: Any = self.writer.file_writer  # made by SummaryWriter.__init__
        self.events = events

    def text(self, tag: str, text: str, step: int) -> None:
        # indented four spaces: TensorBoard renders text as markdown, and Gin lines as code
        self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def start_hparams(self, hparams: dict) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        # the session start (the trial's swept bindings) in the run's own event file; no experiment
        # summary: TensorBoard's HParams dashboard builds one from the sessions of all runs shown
        self.events.add_summary(hparams_summary(hparams, {})[1])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        for tag, image in images.items():
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, final: dict[str, float], step: int, state: str, hparams: bool) -> None:
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
        if hparams:
            self.events.add_summary(_session_end(state))
        self.writer.close()


def _session_end(state: str):
    """The HParams session-end summary with the trial's outcome (done: success, else failure)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    status = api_pb2.Status.Value("STATUS_SUCCESS" if state == "done" else "STATUS_FAILURE")
    content = plugin_data_pb2.HParamsPluginData(session_end_info=plugin_data_pb2.SessionEndInfo(status=status),
                                                version=metadata.PLUGIN_DATA_VERSION)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                  content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=meta)])


class WandB:
    """One W&B run per trial: id = the trial id (a requeued trial resumes the same run), grouped by
    experiment, named by the trial's label, config = its swept bindings and its whole Gin config."""

    def __init__(self, trial_dir: Path, info: dict, project: str, entity: str | None):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, entity=entity, id=info["trial_id"], resume="allow",
                              group=info["experiment"] or None, name=info["label"], dir=str(trial_dir),
                              config={**info["bindings"], "gin_config": info["config"]}, reinit="create_new",
                              settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
        self.held = int(self.run.step or 0)  # a resumed run's steps below this are not sent again

    def text(self, tag: str, text: str, step: int) -> None:
        pass  # the config is in the run's config (gin_config)

    def start_hparams(self, hparams: dict) -> None:
        pass  # W&B's config is its hyper-parameter table

    def flush(self) -> None:
        pass  # W&B streams on its own

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if step >= self.held:
            self.run.log(values, step=step)

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        if step >= self.held:
            self.run.log({k: self.wandb.Image(v) for k, v in images.items()}, step=step)

    def finish(self, final: dict[str, float], step: int, state: str, hparams: bool) -> None:
        for key, value in final.items():
            self.run.summary[key] = value
        self.run.summary["state"] = state
        self.run.finish(exit_code=0 if state == "done" else 1)


def _artifacts(uri: str) -> str | None:
    """Where a SQLite store's artifacts (config.gin, view panels) go: beside the store, not in the
    working directory's ./mlruns (MLflow's default); other stores decide for themselves."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlflow-artifacts").resolve().as_uri()
    return None


class MLflow:
    """One MLflow run per trial in an MLflow experiment named after ours, tagged with the trial id
    (found again on resume) and its label; params = the swept bindings; config.gin as an artifact
    text. Metrics go in batches through MlflowClient."""

    def __init__(self, uri: str, info: dict):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        name = info["experiment"] or "harness"
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name, _artifacts(uri))
        runs = self.client.search_runs([experiment], f"tags.`{TRIAL_TAG}` = '{info['trial_id']}'", max_results=1)
        if runs:
            self.run_id = runs[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment, run_name=info["label"][:250],
                                                 tags={TRIAL_TAG: info["trial_id"]}).info.run_id
        # steps already held (a resumed trial repeats them bit for bit): not sent again
        self.held = max((m.step for m in self.client.get_metric_history(self.run_id, STEP_KEY)), default=-1)
        self.params_logged = bool(runs)

    def text(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{tag}.gin")

    def start_hparams(self, hparams: dict) -> None:
        if not self.params_logged:  # MLflow params are write-once
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k[:250], str(v)[:6000]) for k, v in hparams.items()])

    def flush(self) -> None:
        pass  # every call is written to the store at once

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if step > self.held:
            self._log(step, values)

    def _log(self, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ms, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        if step > self.held:
            for tag, image in images.items():
                self.client.log_image(self.run_id, image, f"{tag.replace('/', '_')}_{step:07d}.png")

    def finish(self, final: dict[str, float], step: int, state: str, hparams: bool) -> None:
        if final:
            self._log(step, final)
        self.client.set_terminated(self.run_id, status="FINISHED" if state == "done" else "FAILED")
