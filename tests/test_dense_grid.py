"""The third method (baselines/dense_grid), added through the Method protocol alone (issue 23): it
trains, is scored, resumes bit for bit, and runs as an ordinary experiment."""

import json

import numpy as np
import torch

from baselines.dense_grid import DenseGrid
from harness.core.method import Method
from harness.run import sweep
from tests.conftest import ROOT, harness


def _experiment(tmp_path):
    path = tmp_path / "dense.gin"
    path.write_text((ROOT / "baselines" / "dense_grid" / "dense_grid.gin").read_text()
                    .replace("include 'base/scenes/lego_100.gin'", "include 'base/scenes/tiny.gin'")
                    + "Trainer.iterations = 300\nDenseGrid.samples = 32\nDenseGrid.batch_size = 256\n"
                    + "Sweep.axes = {'DenseGrid.resolution': [16]}\nEvaluation.metrics = ('psnr', 'ssim')\n")
    return path


def test_dense_grid_trains_as_an_experiment_above_the_mean_colour(tmp_path):
    exp = _experiment(tmp_path)
    proc = harness("sweep", exp, "--runs-dir", tmp_path / "runs", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    (trial,) = sweep.expand(str(exp))
    folder = tmp_path / "runs" / "dense" / trial.id
    status = json.loads((folder / "status.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert status["state"] == "done", status  # `collapsed` would mean no better than the mean colour
    assert metrics["psnr"] > metrics["collapse"]["psnr"]["floor"] + 3, metrics["collapse"]


def test_dense_grid_is_a_method_and_resumes_bit_for_bit():
    from harness.run import config

    config.parse([ROOT / "experiments" / "base" / "scenes" / "tiny.gin"], [])
    from harness.core.data.load_scene import load_scene

    scene = load_scene()
    rays = scene.split("train")
    gen = np.random.default_rng(0)
    from harness.core.data.rays import image_rays

    o, d = image_rays(rays.cameras, 0)
    pick = torch.as_tensor(gen.choice(o.shape[0], 128, replace=False))
    batch = {"origins": o[pick], "directions": d[pick],
             "rgb": torch.as_tensor(rays.images[0].reshape(-1, 3))[pick]}

    def run(method, steps):
        return [method.train_step(s, batch)["loss"] for s in steps]

    a = DenseGrid(scene, seed=3, resolution=8, samples=16)
    assert isinstance(a, Method)
    run(a, range(5))
    saved = a.state_dict()
    b = DenseGrid(scene, seed=3, resolution=8, samples=16)
    b.load_state_dict(saved)
    assert run(a, range(5, 10)) == run(b, range(5, 10))
    assert torch.equal(a.grid, b.grid)


def test_capabilities_are_declared_and_checked(tmp_path):
    """A method uses a capability only by declaring it; a wrong declaration, or a capability's member
    present but not declared, is one line (at expansion for the class, when built for the instance)."""
    from harness.core.method import method_problems

    assert method_problems(DenseGrid) == []

    class Broken(DenseGrid):
        capabilities = ("device", "views", "teleport")

    problems = method_problems(Broken)
    assert "Broken declares the 'views' capability but has no render_view" in problems
    assert any("names 'teleport': known capabilities are" in p for p in problems)

    class Undeclared:  # a patch size the runner would silently ignore
        def __init__(self):
            self.patch_size = 4

        train_step = render = state_dict = load_state_dict = stats = staticmethod(lambda *a: None)

    assert method_problems(Undeclared) == []
    assert method_problems(Undeclared()) == ["Undeclared has patch_size but does not declare the 'patches' "
                                             "capability (add it to Undeclared.capabilities)"]

    exp = _experiment(tmp_path)
    exp.write_text(exp.read_text().replace("import baselines.dense_grid", "import baselines.dense_grid\n"
                                           "import tests.fixtures.broken_method")
                   .replace("Trainer.method = @DenseGrid", "Trainer.method = @NoRender"))
    proc = harness("sweep", exp, "--runs-dir", tmp_path / "runs", "--dry-run")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith(f"error: {exp}, trial ") and last.endswith(
        "Trainer.method = @NoRender: NoRender has no render() (harness.core.method.Method)"), proc.stderr
