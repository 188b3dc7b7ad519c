"""Temporal Plenoxels (baselines/plenoxels_temporal/method.py) through the trial runner on the procedural dynamic
scene: each time step trains on its own views only, renders its views from its own grid, the temporal terms are
in the loss after step 0, a killed and resumed trial ends bit-identical to an uninterrupted one with the same
metrics, and a dynamic test split gets per-time-step scores and the flicker of its cameras."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core.data.rays import RaySampler
from harness.core.data.scene import Cameras
from harness.core.errors import ConfigError
from tests.reliability_tools import Trial

SCENE = """import baselines.plenoxels_temporal
import harness.core.data.procedural
load_scene.path = 'dynamic'
load_scene.format = 'procedural'
load_scene.background = (1.0, 1.0, 1.0)
dynamic_scene.size = 24
dynamic_scene.n_steps = 3
dynamic_scene.n_train = 6
dynamic_scene.n_test = 2
Trainer.method = @TemporalPlenoxels
TemporalPlenoxels.grid = @Plenoxels
Trainer.checkpoint_every = 100
Trainer.keep_checkpoints = 10
Trainer.log_every = 1
Trainer.collapse_psnr = None
Trainer.min_loss_drop = None
Plenoxels.resolution = (16, 16, 8)
Plenoxels.upsample_steps = ()
Plenoxels.prune_by = 'none'
Plenoxels.prune_steps = ()
Plenoxels.sh_degree = 0
Plenoxels.occupancy_threshold = 0.0
Plenoxels.batch_size = 256
TemporalPlenoxels.first_steps = 12
TemporalPlenoxels.steps_per_time_step = 6
TemporalPlenoxels.flow_rays = 64
TemporalPlenoxels.feature_temporal = @FeatureTemporal()
TemporalPlenoxels.flow_consistency = @FlowConsistency()
FeatureTemporal.weight = 0.01
FlowConsistency.weight = 0.1
Evaluation.metrics = ('psnr', 'ssim')
Tracker.backends = []
Sweep.seeds = [0]
launch.cluster = 'debug'
"""
ITERATIONS = 12 + 2 * 6


def _experiment(tmp_path: Path, extra: str = "", iterations: int = ITERATIONS) -> Path:
    exp = tmp_path / "temporal.gin"
    exp.write_text(SCENE + f"Trainer.iterations = {iterations}\n" + extra)
    return exp


def _rows(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "train.jsonl").read_text().splitlines()]


def _method_state(d: Path, step: int) -> dict:
    from harness.run.checkpoints import named_tensors

    return named_tensors(torch.load(d / "checkpoints" / f"step_{step:08d}.pt", weights_only=False)["method"])


def test_a_resumed_temporal_trial_equals_an_uninterrupted_one(tmp_path):
    exp = _experiment(tmp_path, "Trainer.checkpoint_every = 8\n")
    reference = Trial(exp, tmp_path / "reference")
    reference.run_here()
    rows = [r for r in _rows(reference.dir) if "loss" in r]
    assert [r["time_step"] for r in rows] == [0.0] * 12 + [1.0] * 6 + [2.0] * 6
    # the temporal terms are computed against the previous step from time step 1 on, and only then
    assert all("feature_temporal" not in r and "flow_consistency" not in r for r in rows[:12])
    assert all(r["feature_temporal"] >= 0 and r["flow_consistency"] > 0 for r in rows[12:])
    metrics = json.loads((reference.dir / "metrics.json").read_text())
    temporal = metrics["temporal"]
    assert [r["time_step"] for r in temporal["per_time_step"]] == [0, 1, 2]
    assert all(r["views"] == 2 for r in temporal["per_time_step"])
    assert np.mean([r["psnr"] for r in temporal["per_time_step"]]) == pytest.approx(metrics["psnr"], abs=1e-9)
    assert len(temporal["sequences"]) == 2 and all(len(names) == 3 for names in temporal["sequences"].values())
    assert metrics["warp_error"] == temporal["flicker"]["warp_error"] > 0
    assert temporal["flicker"]["num_cameras"] == 2 and temporal["flicker"]["per_camera"]
    assert metrics["temporal_training"]["time_steps_trained"] == 3

    killed = Trial(exp, tmp_path / "killed")
    assert killed.run(fault="action=kill point=step nth=20") == "killed"  # time step 2, resumed from step 16
    assert killed.run() == "ok"
    assert json.loads((killed.dir / "status.json").read_text())["attempts"] == 2
    a, b = _method_state(reference.dir, ITERATIONS), _method_state(killed.dir, ITERATIONS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = json.loads((killed.dir / "metrics.json").read_text())
    for key in ("psnr", "ssim", "warp_error", "warp_error_truth"):
        assert again[key] == metrics[key]
    assert again["per_view"] == metrics["per_view"]


def test_each_time_step_trains_on_its_views_and_renders_from_its_grid(tmp_path):
    import gin

    import baselines.plenoxels_temporal  # noqa: F401  (registers the configurables)
    from harness.core.data.load_scene import load_scene
    from harness.run import sweep

    exp = _experiment(tmp_path)
    trial = sweep.expand(str(exp))[0]
    sweep.trial_config(exp, [], trial.gin_bindings)
    scene = load_scene()
    method = gin.get_configurable("TemporalPlenoxels")(scene=scene, seed=0)
    train = scene.split("train")
    assert method.total_steps == ITERATIONS and method.n_steps == 3
    for step, k in ((0, 0), (11, 0), (12, 1), (17, 1), (18, 2), (23, 2)):
        assert set(train.time_step[method.train_images(step)]) == {k}
    with pytest.raises(ValueError, match="Trainer.iterations must be 24"):
        method.train_images(24)
    sampler = RaySampler(train.images, train.cameras, 0)
    for step in range(ITERATIONS):
        batch = sampler.sample(step, method.batch_size, images=method.train_images(step))
        assert set(train.time_step[batch["image_index"].numpy()]) == {method.segment_of(step)}
        method.train_step(step, batch)
    assert method.segment == 2 and len(method.frames) == 2
    # a view of a finished step renders from that step's grid; changing the snapshot changes that view only
    test = scene.split("test")
    first = int(np.flatnonzero(test.time_step == 0)[0])
    last = int(np.flatnonzero(test.time_step == 2)[0])
    before = method.render_view(test, first), method.render_view(test, last)
    method.frames[0]["density"].zero_()
    method.frames[0]["occupancy"] = type(method.frames[0]["occupancy"]).build(
        method.model.grid.__class__(method.model.grid.resolution, method.model.grid.bbox_min,
                                    method.model.grid.bbox_max, method.model.grid.links, method.frames[0]["density"],
                                    method.frames[0]["sh"]), 0.0, method.model.step_size)
    after = method.render_view(test, first), method.render_view(test, last)
    assert np.allclose(after[0], 1.0) and not np.allclose(before[0], 1.0)  # step 0: nothing left, white
    assert np.array_equal(before[1], after[1])


def test_bad_configurations_fail_in_one_line_before_training(tmp_path):
    from harness.run import sweep
    from harness.run.trial import run_trial

    for extra, iterations, match in (
            ("Plenoxels.prune_by = 'weight'\n", ITERATIONS, r"Plenoxels.prune_by must be 'none'"),
            ("Plenoxels.occupancy_threshold = 3.0\n", ITERATIONS, r"occupancy_threshold \(3.0\) must be below"),
            ("", 30, r"Trainer.iterations = 30, but TemporalPlenoxels's schedule over the time steps takes 24 steps")):
        exp = _experiment(tmp_path, extra, iterations)
        trial = Trial(exp, tmp_path / f"runs{len(extra)}{iterations}")
        sweep.trial_config(exp, [], trial.trial.gin_bindings)
        with pytest.raises(ConfigError, match=match):
            run_trial(trial.dir)


def test_static_scenes_are_refused(tmp_path):
    import gin

    import baselines.plenoxels_temporal  # noqa: F401
    from harness.core.data.load_scene import load_scene

    gin.clear_config()
    gin.parse_config(["import harness.core.data.procedural", "load_scene.path = 'tiny'",
                      "load_scene.format = 'procedural'", "tiny_scene.size = 16", "tiny_scene.n_train = 2",
                      "tiny_scene.n_test = 1"])
    try:
        with pytest.raises(ConfigError, match="has no time steps"):
            gin.get_configurable("TemporalPlenoxels")(scene=load_scene(), seed=0)
    finally:
        gin.clear_config()


def test_the_sampler_draws_from_the_given_images_only():
    n, w, h = 4, 8, 6
    c2w = np.tile(np.eye(4, dtype=np.float32)[:3], (n, 1, 1))
    f = np.full(n, 10.0, np.float32)
    cams = Cameras(c2w, f, f, np.full(n, w / 2, np.float32), np.full(n, h / 2, np.float32), w, h)
    images = np.random.default_rng(0).random((n, h, w, 3)).astype(np.float32)
    sampler = RaySampler(images, cams, seed=3)
    for subset in ([1], [0, 3]):
        for patch in (1, 2):
            batch = sampler.sample(5, 64, patch_size=patch, images=np.array(subset))
            assert set(batch["image_index"].numpy()) <= set(subset)
            again = sampler.sample(5, 64, patch_size=patch, images=np.array(subset))
            assert torch.equal(batch["rgb"], again["rgb"])  # a pure function of the step
    # no subset: the draws of before (every image)
    plain = RaySampler(images, cams, seed=3).sample(5, 512)
    assert set(plain["image_index"].numpy()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="non-empty selection of 0..3"):
        sampler.sample(0, 8, images=np.array([4]))


def test_flow_from_depth_under_a_fixed_rig_asks_each_pixel_to_keep_its_colour(tmp_path):
    """source='depth': flow_from_depth of the snapshot's depth between two poses of the same rig camera is 0
    (the camera did not move), so the flow rays are the pixel-centre rays of that camera at the next step and
    their targets the snapshot's colours of those pixels."""
    import gin

    import baselines.plenoxels_temporal  # noqa: F401
    from harness.core.data.load_scene import load_scene
    from harness.core.data.rays import image_rays
    from harness.run import sweep

    exp = _experiment(tmp_path, "FlowConsistency.source = 'depth'\n")
    trial = sweep.expand(str(exp))[0]
    sweep.trial_config(exp, [], trial.gin_bindings)
    scene = load_scene()
    method = gin.get_configurable("TemporalPlenoxels")(scene=scene, seed=0)
    train = scene.split("train")
    sampler = RaySampler(train.images, train.cameras, 0)
    for step in range(13):  # time step 0, then the first step of time step 1
        out = method.train_step(step, sampler.sample(step, method.batch_size, images=method.train_images(step)))
    assert method.segment == 1 and np.isfinite(out["flow_consistency"]) and out["flow_consistency"] >= 0
    cache = method._flow_targets()
    first = int(method.views_at[0][0])
    nxt = int(next(i for i in method.views_at[1] if train.camera_id[i] == train.camera_id[first]))
    o, d = image_rays(train.cameras, nxt)
    n = o.shape[0]  # every pixel of the first frame is valid (zero flow stays inside the image)
    assert torch.allclose(cache["origins"][:n], o, atol=1e-5) and torch.allclose(cache["directions"][:n], d, atol=1e-4)
    with method._at(0):
        rendered = method.model.render(*image_rays(train.cameras, first))["rgb"]
    assert torch.equal(cache["target"][:n], rendered)
