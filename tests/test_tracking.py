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
                       "Trainer.min_loss_drop = None\n")
        trial = Trial(exp, tmp_path / f"runs{len(results)}")
        trial.run_here()
        _, payload = checkpoints.load_latest(trial.dir / "checkpoints")
        results.append((trial.metrics()["psnr"], trial.log_rows(), payload["method"]["grid"]))
        if images:
            acc = _events(trial.dir)
            assert {"lr/density", "lr/sh", "grad_norm/density", "grad_norm/sh", "model/voxels",
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
    tracked = sweep.expand(str(write_experiment(tmp_path, tiny_scene, TRACKED.replace("Trainer.validate_every = 20\n", "")
                                                + "Tracker.backends = []\n", name="b")))
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
