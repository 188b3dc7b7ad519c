"""A report reads records only (issue 23, item 1): a runs folder copied elsewhere, with its scene
deleted, builds its report, ground truth included, from what the trials recorded."""

import json
import shutil

import numpy as np

from harness.core.data.images import read_image
from harness.core.data.load_scene import loader_for
from harness.core.metrics import to_uint8
from reports.build import build_report
from tests.conftest import harness
from tests.reliability_tools import write_experiment


def test_a_copied_runs_folder_without_its_scene_builds_its_report_with_ground_truth(tiny_scene, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene, scene)
    exp = write_experiment(tmp_path, scene, "Sweep.axes = {'ToyColour.lr': [0.01, 0.05]}\n", name="port")
    harness("sweep", exp, "--runs-dir", tmp_path / "runs", check=True)
    test = loader_for("nerfstudio")(scene, splits=("test",)).split("test")
    shutil.rmtree(scene)

    copied = tmp_path / "elsewhere" / "runs"
    shutil.copytree(tmp_path / "runs", copied, symlinks=True)  # the experiment's links into .trials/ stay relative
    shutil.rmtree(tmp_path / "runs")
    for trial in (p for p in (copied / "port").iterdir() if p.is_dir()):
        recorded = json.loads((trial / "metrics.json").read_text())["ground_truth"]
        assert sorted(recorded) == sorted(test.names)
        for i, name in enumerate(test.names):  # the target as scored, 8-bit
            assert np.array_equal(to_uint8(read_image(trial / recorded[name])[..., :3]), to_uint8(test.images[i]))

    out = build_report(["port"], copied, tmp_path / "report", bench_paths=[])
    html = out.read_text()
    assert "no ground truth recorded" not in html
    shown = sorted(p.name for p in (tmp_path / "report" / "assets").glob("grid_0/v*_gt.png"))
    assert shown and all(f'grid_0/{name}' in html for name in shown)
