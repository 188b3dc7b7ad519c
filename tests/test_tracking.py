"""Live tracking (harness/run/tracking.py): TensorBoard event files read back with TensorBoard's own
reader, resume after kill -9, failures that never fail a trial, bad settings at expansion, and that
tracking never changes what a trial computes."""

import logging
import math
import sys

import numpy as np
import pytest

from harness.core.errors import ConfigError
from harness.run import sweep
from tests.reliability_tools import Trial, final_state, write_experiment

TRACKED = """Trainer.validate_every = 20
Tracker.scalar_every = 5
Tracker.image_every = 20
"""


def _events(trial_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trial_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _hparams(acc) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = {}
    for tag, content in acc.PluginTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        out[tag.split("/")[-1]] = data
    return out


def test_event_files_hold_scalars_images_config_and_hparams(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene, TRACKED + "Sweep.axes = {'ToyColour.lr': [0.05]}\n")
    trial = Trial(exp, tmp_path / "runs")
    trial.run_here()
    acc = _events(trial.dir)
    scalars = _scalars(acc)
    steps = list(range(5, 41, 5))
    for tag in ("train/loss", "memory/rss_mb"):
        assert [s for s, _ in scalars[tag]] == steps, tag
    assert [s for s, _ in scalars["perf/steps_per_s"]] == steps[1:]  # a rate needs two logs
    assert all(v > 0 for _, v in scalars["perf/rays_per_s"])
    # the values are the run's: the loss logged live is the one in train.jsonl
    logged = {row["step"]: row["loss"] for row in trial.log_rows() if "loss" in row}
    assert [round(v, 5) for s, v in scalars["train/loss"] if s in logged] == \
        [round(logged[s], 5) for s, _ in scalars["train/loss"] if s in logged]
    assert [s for s, _ in scalars["val/psnr"]] == [20, 40]
    assert scalars["test/psnr"] == [(40, pytest.approx(trial.metrics()["psnr"], abs=1e-4))]
    images = acc.Images([t for t in acc.Tags()["images"] if t.startswith("view/")][0])
    assert [i.step for i in images] == [20, 40] and images[0].width == 4 * 16  # render | truth | error | depth
    assert "Trainer.iterations = 40" in acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    hp = _hparams(acc)
    start = hp["session_start_info"].session_start_info.hparams
    assert start["ToyColour.lr"].number_value == 0.05 and start["seed"].number_value == 0
    assert hp["session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS


def test_kill_9_and_resume_continue_the_same_curves(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene, TRACKED.replace("Tracker.scalar_every = 5", "Tracker.scalar_every = 1")
                           + "ToyColour.step_delay = 0.004\n")
    reference = Trial(exp, tmp_path / "reference")
    reference.run_here()
    expected = _scalars(_events(reference.dir))
    trial = Trial(exp, tmp_path / "runs")
    # killed at step 27: checkpoints at 10 and 20, events up to 27 on disk (the writer's queue is short)
    assert trial.run(fault="action=kill point=step nth=27") == "killed"
    assert max(s for s, _ in _scalars(_events(trial.dir))["train/loss"]) > 20
    assert trial.run() == "ok" and trial.status()["attempts"] == 2
    got = _scalars(_events(trial.dir))
    assert got.keys() == expected.keys()
    for tag, points in got.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: steps repeat or go back: {steps}"
        if not tag.startswith(("perf/", "memory/")):  # timings and memory differ between runs
            assert points == expected[tag], tag
    assert final_state(trial) == final_state(reference)


def test_tracking_never_changes_what_a_plenoxels_trial_computes(tmp_path):
    """Renders for the image panels between training steps, telemetry every step: the metrics and
    the final grid are bit-identical with tracking off (Tracker.backends = [])."""
    import torch

    from harness.run import checkpoints

    pytest.importorskip("baselines.plenoxels")
    results = []
    for backends, images in (("['tensorboard']", 5), ("[]", 0)):
        exp = tmp_path / f"p{len(results)}.gin"
        exp.write_text("include 'base/plenoxels.gin'\ninclude 'base/scenes/lego_100.gin'\n"
                       "ITERATIONS = 20\nPlenoxels.resolution = 32\nPlenoxels.upsample_steps = ()\n"
                       "Plenoxels.prune_steps = (10,)\nPlenoxels.batch_size = 512\nTVLoss.weight_density = 1e-4\n"
                       "Evaluation.metrics = ('psnr',)\n"
                       f"Tracker.backends = {backends}\nTracker.scalar_every = 1\nTracker.image_every = {images}\n"
                       "Trainer.validate_every = 10\nTrainer.checkpoint_every = 10\nTrainer.collapse_psnr = None\n"
                       "Trainer.min_loss_drop = None\nGradientHealth.every = 5\n")
        trial = Trial(exp, tmp_path / f"runs{len(results)}")
        trial.run_here()
        _, payload = checkpoints.load_latest(trial.dir / "checkpoints")
        results.append((trial.metrics()["psnr"], trial.log_rows(), payload["method"]["grid"]))
        if images:
            acc = _events(trial.dir)
            assert {"lr/density", "lr/sh", "grad/density/norm", "grad/sh/zeros", "model/voxels",
                    "model/occupied_fraction"} <= set(acc.Tags()["scalars"])
            assert len(acc.Images(acc.Tags()["images"][0])) == 4
            assert acc.Images(acc.Tags()["images"][0])[0].width == 4 * 100  # with depth
        else:
            assert not (trial.dir / "tb").exists()
    (psnr_a, log_a, grid_a), (psnr_b, log_b, grid_b) = results
    assert psnr_a == psnr_b and log_a == log_b
    for key in grid_a:
        if torch.is_tensor(grid_a[key]):
            assert torch.equal(grid_a[key], grid_b[key]), key


def test_a_failing_backend_never_fails_the_trial(tiny_scene, tmp_path, monkeypatch, caplog):
    from harness.run import trackers

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trackers.TensorBoard, "scalars", full)
    exp = write_experiment(tmp_path, tiny_scene, TRACKED)
    trial = Trial(exp, tmp_path / "runs")
    with caplog.at_level(logging.WARNING, logger="harness.run.tracking"):
        trial.run_here()
    status = trial.status()
    assert status["state"] == "done"
    assert status["tracking_errors"] == ["tensorboard: OSError: [Errno 28] No space left on device"]
    assert len([r for r in caplog.records if "tracking backend" in r.message]) == 1


def test_a_backend_that_cannot_start_is_noted_and_training_goes_on(tiny_scene, tmp_path, monkeypatch):
    from harness.run import trackers

    def down(*args, **kwargs):
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(trackers.TensorBoard, "__init__", down)
    trial = Trial(write_experiment(tmp_path, tiny_scene, TRACKED), tmp_path / "runs")
    trial.run_here()
    assert trial.status()["state"] == "done"
    assert trial.status()["tracking_errors"][0].startswith("tensorboard: ConnectionError: tracking server")


@pytest.mark.parametrize("line, match", [
    ("Tracker.backends = ['tensorbored']\n", r"Tracker\.backends: unknown backend 'tensorbored'"),
    ("Tracker.backends = 'tensorboard'\n", r"Tracker\.backends = 'tensorboard': expected a list"),
    ("Tracker.image_every = -1\n", r"Tracker\.image_every = -1: expected an integer >= 0"),
])
def test_bad_tracker_settings_are_one_line_at_expansion(tiny_scene, tmp_path, line, match):
    exp = write_experiment(tmp_path, tiny_scene, line)
    with pytest.raises(ConfigError, match=match) as info:
        sweep.expand(str(exp))
    assert "\n" not in str(info.value)


def test_a_backend_whose_package_is_missing_is_one_line_at_expansion(tiny_scene, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: import raises ImportError
    exp = write_experiment(tmp_path, tiny_scene, "Tracker.backends = ['tensorboard', 'mlflow']\n")
    with pytest.raises(ConfigError, match=r"names 'mlflow' but the mlflow package is not installed "
                                          r"\(pip install -e '\.\[mlflow\]'\)"):
        sweep.expand(str(exp))


def test_tracker_settings_never_change_a_trial_id(tiny_scene, tmp_path):
    plain = sweep.expand(str(write_experiment(tmp_path, tiny_scene, "", name="a")))
    settings = TRACKED.replace("Trainer.validate_every = 20\n", "") + "Tracker.backends = []\n"
    tracked = sweep.expand(str(write_experiment(tmp_path, tiny_scene, settings, name="b")))
    assert [t.id for t in plain] == [t.id for t in tracked]


def test_view_panel_is_render_truth_error_and_depth():
    from harness.run.tracking import view_panel

    render = np.full((4, 5, 3), 0.5, np.float32)
    truth = np.zeros((4, 5, 4), np.float32)  # RGBA, transparent: the background shows
    depth = np.linspace(1, 2, 20, dtype=np.float32).reshape(4, 5)
    depth[0, 0] = math.inf
    panel = view_panel(render, truth, depth, background=(1.0, 1.0, 1.0))
    assert panel.shape == (4, 20, 3) and panel.dtype == np.uint8
    assert (panel[:, 5:10] == 255).all()  # the ground truth composited on white
    assert panel[0, 15, 0] == 0 and panel[3, 19, 0] == 255  # inf shown as the nearest; depth normalised


# ---- Weights & Biases (offline) and MLflow (a real SQLite store), read back with their own APIs ----

def _wandb_records(trial_dir) -> list:
    """The protobuf Records of the trial's offline W&B run (wandb.proto's Record), read from its
    .wandb file: W&B's 7-byte header, then a LevelDB-style log (32 KiB blocks of chunks, each with a
    4-byte checksum, a 2-byte length and a type: 1 full, 2 first, 3 middle, 4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    [path] = sorted((trial_dir / "wandb").glob("offline-run-*/run-*.wandb"))[-1:]
    data, pos, chunks, part = path.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):  # block padding
            pos += left
            continue
        body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        part = body if kind in (1, 2) else part + body
        if kind in (1, 4):
            chunks.append(part)
    return [wandb_internal_pb2.Record.FromString(c) for c in chunks]


def _wandb_history(records) -> dict[str, dict[int, float]]:
    import json

    out: dict[str, dict[int, float]] = {}
    for rec in records:
        if rec.WhichOneof("record_type") != "history":
            continue
        items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
        for key, value in items.items():
            if isinstance(value, (int, float)) and not key.startswith("_"):
                out.setdefault(key, {})[int(items["_step"])] = float(value)
    return out


def test_wandb_offline_and_mlflow_runs_hold_the_scalars_and_the_config(tiny_scene, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    store = tmp_path / "mlflow.db"
    exp = write_experiment(tmp_path, tiny_scene, "Tracker.backends = ['tensorboard', 'wandb', 'mlflow']\n"
                           f"Tracker.scalar_every = 5\nTracker.mlflow_uri = 'sqlite:///{store}'\n"
                           "Sweep.axes = {'ToyColour.lr': [0.05]}\n")
    trial = Trial(exp, tmp_path / "runs")
    trial.run_here()
    assert trial.status()["state"] == "done" and "tracking_errors" not in trial.status()
    tb = {tag: dict(points) for tag, points in _scalars(_events(trial.dir)).items()}

    records = _wandb_records(trial.dir)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_id == trial.dir.name and run.run_group == "rel" and run.display_name == "ToyColour.lr=0.05, seed=0"
    config = {u.key: u.value_json for u in run.config.update}
    assert config["ToyColour.lr"] == "0.05" and "Trainer.iterations = 40" in config["gin_config"]
    history = _wandb_history(records)
    assert history["train/loss"] == pytest.approx(tb["train/loss"]) and sorted(history["train/loss"]) == \
        list(range(5, 41, 5))

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    [found] = client.search_runs([client.get_experiment_by_name("rel").experiment_id])
    assert found.data.tags["harness.trial_id"] == trial.dir.name and found.info.status == "FINISHED"
    assert found.data.params["ToyColour.lr"] == "0.05"
    loss = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "train/loss")}
    assert loss == pytest.approx(tb["train/loss"])
    assert found.data.metrics["test/psnr"] == pytest.approx(trial.metrics()["psnr"])
    assert any((tmp_path / "mlflow-artifacts").rglob("config.gin"))  # beside the store, not in ./mlruns
    import wandb

    wandb.teardown()  # its service is this process's: forked runs of later tests must not share it


def test_wandb_and_mlflow_runs_resume_after_kill_9_without_repeating_steps(tiny_scene, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # W&B's service is per process: each forked run below must start its own, as a job does
    settings = "Tracker.scalar_every = 1\nToyColour.step_delay = 0.004\n"
    reference = write_experiment(tmp_path, tiny_scene, settings + "Tracker.backends = ['mlflow']\n"
                                 f"Tracker.mlflow_uri = 'sqlite:///{tmp_path}/reference.db'\n", name="ref")
    Trial(reference, tmp_path / "reference").run_here()  # also imports what the forked runs need
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/reference.db")
    [first] = client.search_runs([client.get_experiment_by_name("ref").experiment_id])
    expected = {m.step: m.value for m in client.get_metric_history(first.info.run_id, "train/loss")}
    exp = write_experiment(tmp_path, tiny_scene, settings + "Tracker.backends = ['wandb', 'mlflow']\n"
                           f"Tracker.mlflow_uri = 'sqlite:///{tmp_path}/resumed.db'\n")
    trial = Trial(exp, tmp_path / "runs")
    assert trial.run(fault="action=kill point=step nth=27") == "killed"
    assert trial.run() == "ok"
    assert trial.status()["attempts"] == 2 and "tracking_errors" not in trial.status()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/resumed.db")
    [found] = client.search_runs([client.get_experiment_by_name("rel").experiment_id])  # one run, resumed
    history = client.get_metric_history(found.info.run_id, "train/loss")
    steps = [m.step for m in history]
    assert sorted(steps) == sorted(set(steps)) == list(range(1, 41))
    assert {m.step: m.value for m in history} == expected
    # W&B: the resumed attempt continued the trial's run (same id), from the step it held
    runs = [r.run for r in _wandb_records(trial.dir) if r.WhichOneof("record_type") == "run"]
    assert {r.run_id for r in runs} == {trial.dir.name} and runs[-1].resume
    logged = _wandb_history(_wandb_records(trial.dir))["train/loss"]
    assert min(logged) > 20 and logged == pytest.approx({s: v for s, v in expected.items() if s in logged})


# ---- make tensorboard: a real server over a sweep's trials, queried through its HTTP API ----------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _get(url: str):
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_sweeps_runs_named_by_their_bindings(tiny_scene, tmp_path):
    import subprocess
    import time
    import urllib.parse

    from harness.run.driver import run_sweep
    from tests.conftest import ROOT

    runs = tmp_path / "runs"
    exp = write_experiment(tmp_path, tiny_scene, "Tracker.scalar_every = 5\n"
                           "Sweep.axes = {'ToyColour.lr': [0.01, 0.1]}\n", name="board")
    assert set(run_sweep(str(exp), [], runs, {"threads": 1}).values()) == {"done"}
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "tensorboard", "board", "--runs-dir", str(runs),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"TensorBoard: http://localhost:{port}/") and "2 runs of board" in line, \
            line + proc.stderr.read() if proc.poll() is not None else line
        base = f"http://localhost:{port}"
        wanted = {"ToyColour.lr=0.01, seed=0", "ToyColour.lr=0.1, seed=0"}
        deadline = time.monotonic() + 60
        while set(_get(f"{base}/data/runs")) != wanted:  # TensorBoard loads the runs in the background
            assert time.monotonic() < deadline, _get(f"{base}/data/runs")
            time.sleep(0.5)
        tags = _get(f"{base}/data/plugin/scalars/tags")
        assert {"train/loss", "perf/steps_per_s", "test/psnr"} <= set(tags["ToyColour.lr=0.1, seed=0"])
        query = urllib.parse.urlencode({"run": "ToyColour.lr=0.1, seed=0", "tag": "train/loss"})
        points = _get(f"{base}/data/plugin/scalars/scalars?{query}")
        assert [p[1] for p in points] == list(range(5, 41, 5))  # [wall time, step, value]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_tensorboard_without_a_sweep_is_one_line(tmp_path):
    from harness.core.errors import HarnessError
    from harness.run.board import link_runs

    with pytest.raises(HarnessError, match=r"sweep\.json: no trials of 'nope' here \(run `make sweep EXP=nope` first"):
        link_runs(tmp_path, ["nope"])


def test_report_plots_every_logged_term_and_every_learning_rate(tmp_path):
    """From train.jsonl rows alone (a runs folder without event files still builds its report)."""
    import pandas as pd

    from reports import figures

    rows = [{"key": k, "step": s, "time": 0.1 * s, "loss": 1 / s, "mse": 0.9 / s, "tv_density": 0.1 / s,
             "samples_per_ray": 3.0, "lr/density": 3.0 / s, "lr/sh": 0.05 / s, "grad/density/norm": 1.0 / s,
             "model/voxels": 1e4, "variant": v, "scene": "lego", "seed": 0}
            for k, v in (("a", "TVLoss.weight_density=0"), ("b", "TVLoss.weight_density=1e-4")) for s in (10, 20, 30)]
    rows.append({"key": "a", "step": 30, "time": 3.0, "val_psnr": 25.0, "variant": "TVLoss.weight_density=0",
                 "scene": "lego", "seed": 0})
    curves = pd.DataFrame(rows)
    curves["variant"] = pd.Categorical(curves["variant"])
    terms, rates = figures.curve_columns(curves)
    assert terms == ["loss", "mse", "samples_per_ray", "tv_density", "val_psnr"] and rates == ["lr/density", "lr/sh"]
    made = figures.training_curves(curves, tmp_path)
    assert [f.name for f in made] == ["training_curves", "learning_rates", "gradient_norms"]
    assert all((tmp_path / f.png).stat().st_size > 10_000 for f in made)
