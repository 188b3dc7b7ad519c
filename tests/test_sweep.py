"""Sweep expansion: axes, zipped groups, seeds, scenes; content-hashed ids."""

import json

import pytest

from harness.core.errors import ConfigError
from harness.run import sweep
from tests.conftest import TOY, harness


def _write(tmp_path, text, name="exp.gin"):
    path = tmp_path / name
    path.write_text("import tests.fixtures.toy_method\ninclude 'base/scenes/lego_100.gin'\n"
                    "Trainer.method = @ToyColour\n" + text)
    return path


def test_cartesian_product_and_seeds(tmp_path):
    exp = _write(tmp_path, "Sweep.axes = {'ToyColour.lr': [0.1, 0.2, 0.3], 'ToyColour.buckets': [4, 8]}\n"
                           "Sweep.seeds = [0, 1]\n")
    trials = sweep.expand(str(exp))
    assert len(trials) == 12
    assert len({t.id for t in trials}) == 12
    assert {(t.bindings["ToyColour.lr"], t.bindings["ToyColour.buckets"], t.bindings["seed"]) for t in trials} == \
        {(lr, b, s) for lr in (0.1, 0.2, 0.3) for b in (4, 8) for s in (0, 1)}


def test_zipped_axes_vary_together(tmp_path):
    exp = _write(tmp_path, "Sweep.zipped = {'ToyColour.lr': [0.1, 0.2], 'ToyColour.buckets': [4, 8]}\n")
    pairs = [(t.bindings["ToyColour.lr"], t.bindings["ToyColour.buckets"]) for t in sweep.expand(str(exp))]
    assert pairs == [(0.1, 4), (0.2, 8)]


def test_zipped_length_mismatch_is_an_error(tmp_path):
    exp = _write(tmp_path, "Sweep.zipped = {'ToyColour.lr': [0.1, 0.2], 'ToyColour.buckets': [4]}\n")
    with pytest.raises(ConfigError, match="differ in length"):
        sweep.expand(str(exp))


def test_empty_sweep_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="must be a non-empty list"):
        sweep.expand(str(_write(tmp_path, "Sweep.axes = {'ToyColour.lr': []}\n")))
    with pytest.raises(ConfigError, match="Sweep.seeds is empty"):
        sweep.expand(str(_write(tmp_path, "Sweep.seeds = []\n", "b.gin")))


def test_ids_change_with_config_not_with_launch_settings(tmp_path):
    base = sweep.expand(str(_write(tmp_path, "Sweep.seeds = [0]\n")))[0].id
    same = sweep.expand(str(_write(tmp_path, "Sweep.seeds = [0]\nlaunch.cluster = 'debug'\nlaunch.parallel = 3\n",
                                   "b.gin")))[0].id
    other = sweep.expand(str(_write(tmp_path, "Sweep.seeds = [0]\nToyColour.buckets = 5\n", "c.gin")))[0].id
    assert base == same
    assert base != other


def test_ids_stable_across_processes():
    """The dry-run JSON (a fresh interpreter each time) gives the same ids twice."""
    first = json.loads(harness("sweep", TOY, "--dry-run", "--json", check=True).stdout)
    second = json.loads(harness("sweep", TOY, "--dry-run", "--json", check=True).stdout)
    assert first == second
    assert [set(t) for t in first] == [{"id", "bindings"}] * 4
    assert len({t["id"] for t in first}) == 4


def test_user_bindings_change_ids():
    plain = json.loads(harness("sweep", TOY, "--dry-run", "--json", check=True).stdout)
    bound = json.loads(harness("sweep", TOY, "--dry-run", "--json", "--bind", "ToyColour.buckets=3",
                               check=True).stdout)
    assert {t["id"] for t in plain}.isdisjoint({t["id"] for t in bound})


def test_scenes_axis_includes_scene_files(tmp_path):
    exp = tmp_path / "s.gin"
    exp.write_text("import tests.fixtures.toy_method\nTrainer.method = @ToyColour\n"
                   "Sweep.scenes = ['lego_100', 'tiny']\n")  # both ship (tiny is generated)
    trials = sweep.expand(str(exp))
    assert [t.bindings["scene"] for t in trials] == ["lego_100", "tiny"]
    assert "'tiny'" in trials[1].config and "'tiny'" not in trials[0].config
    assert trials[0].identity["data"]["files"] > 300 and trials[1].identity["data"]["procedural"] == "tiny"


def test_negative_learning_rates_of_the_baselines_stop_the_sweep_before_anything_runs(tmp_path):
    """Plenoxels and Block-NeRF declare their learning rates positive (Block-NeRF's in its Optimization
    part, which the sweep reaches through `BlockNeRF.optimization = @Optimization()`); `%MACRO` values
    are resolved."""
    for exp, binding, key in [("plenoxels_tv", "Plenoxels.lr_sh = -0.1", "Plenoxels.lr_sh = -0.1"),
                              ("block_nerf_ablation", "Optimization.lr_pose = -1e-3", "Optimization.lr_pose = -0.001"),
                              ("plenoxels_tv", "ITERATIONS = 0", "Plenoxels.lr_decay_steps = 0")]:
        proc = harness("sweep", exp, "--runs-dir", tmp_path, "--bind", binding)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and f"{key}: expected" in lines[-1], proc.stderr
        assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was written
