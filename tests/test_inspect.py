"""`harness inspect` (issue 25, item 3): the samples a method reports for a ray are the ones its render
composites (both baselines), and the command writes one CSV and one plot per ray, picks the worst
pixels, and says what is wrong with a bad request in one line."""

import csv
import json
import re
import shutil

import gin
import numpy as np
import pytest
import torch

from baselines.block_nerf.parts import Appearance
from baselines.plenoxels import Plenoxels
from harness.cli import main
from harness.core.data.rays import RaySampler, image_rays
from harness.run import inspect as insp
from harness.run import sweep
from tests.conftest import harness
from tests.test_block_nerf import small
from tests.test_block_nerf_toy import toy_scene
from tests.test_plenoxels import random_batch, synthetic_scene

TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread_no_bindings():
    """One torch thread; no Gin bindings left by a parsed trial config reach the models built here."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    gin.clear_config()
    yield
    gin.clear_config()
    torch.set_num_threads(old)


def composited(out: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(acc, rgb) of the final pass's samples, blended over the background as the method does."""
    s = out["passes"][out["final"]]
    acc = torch.zeros(n, dtype=torch.float64).index_add(0, s["ray"], s["weight"].double())
    weighted = s["weight"].double()[:, None] * s["rgb"].double()
    rgb = torch.zeros(n, 3, dtype=torch.float64).index_add(0, s["ray"], weighted)
    if out["background"] is not None:
        rgb = rgb + (1 - acc[:, None]) * out["background"].double()
    else:  # Block-NeRF blends over nothing and clamps
        rgb = rgb.clamp(0, 1)
    return acc, rgb


def assert_matches_render(out: dict, rendered: dict, n: int) -> None:
    acc, rgb = composited(out, n)
    assert (acc - rendered["acc"].double()).abs().max() < TOL
    assert (rgb - rendered["rgb"].double()).abs().max() < TOL
    for s in out["passes"].values():
        assert torch.allclose(s["transmittance"] * s["alpha"], s["weight"], atol=1e-6)


def test_plenoxels_samples_are_what_render_composites():
    m = Plenoxels(synthetic_scene(), 0, resolution=32, upsample_steps=(), prune_steps=(), sh_degree=1,
                  batch_size=512, device="cpu", render_chunk=16)  # several chunks: ray indices must carry over
    for step in range(12):
        m.train_step(step, random_batch(step))
    b = random_batch(99, 48)
    out = m.ray_samples(b["origins"], b["directions"])
    assert set(out["passes"]) == {"render"} and len(out["passes"]["render"]["t"]) > 48
    assert out["passes"]["render"]["ray"].max() > 16
    assert_matches_render(out, m.render(b["origins"], b["directions"]), 48)


@pytest.mark.parametrize("mode", ["appearance_id", "image"])
def test_block_nerf_samples_are_what_the_scored_render_composites(mode):
    """Coarse and fine passes; with view=(split, i), the conditioning of the scored render (the code of
    the view's appearance_id, or one fitted on the left half) and the same pixels as render_view."""
    scene = toy_scene()
    m = small(scene, device="cpu", appearance=Appearance(mode=mode, dim=4, fit_steps=6, fit_rays=64))
    tr = m.trial_scene.split("train")
    sampler = RaySampler(tr.images, tr.cameras, 0)
    for step in range(6):
        m.train_step(step, sampler.sample(step, 128))
    test = m.trial_scene.split("test")
    o, d = image_rays(test.cameras, 0)
    out = m.ray_samples(o[:30], d[:30])
    assert set(out["passes"]) == {"coarse", "fine"} and out["final"] == "fine"
    assert_matches_render(out, m.render(o[:30], d[:30]), 30)
    w = test.cameras.width
    pick = torch.arange(test.cameras.height) * w + w - 1  # the last column: scored under both protocols
    out = m.ray_samples(o[pick], d[pick], view=(test, 0))
    scored = torch.from_numpy(m.render_view(test, 0)[:, -1].copy())
    assert_matches_render(out, {"rgb": scored, "acc": out["acc"]}, len(pick))
    assert ("fitted" in out["conditioning"]) == (mode == "image")


# ---- the command ----------------------------------------------------------------------------------
EXPERIMENT = """include 'base/plenoxels.gin'
load_scene.path = '{scene}'
load_scene.format = 'nerfstudio'
ITERATIONS = 30
Plenoxels.resolution = 32
Plenoxels.upsample_steps = (20,)
Plenoxels.prune_steps = (10,)
Plenoxels.batch_size = 256
Plenoxels.device = 'cpu'
Trainer.checkpoint_every = 10
Trainer.validate_every = 10
Evaluation.metrics = ('psnr',)
Trainer.collapse_psnr = None
Trainer.min_loss_drop = None
Sweep.seeds = [0]
launch.cluster = 'debug'
"""


@pytest.fixture(scope="module")
def trial(tiny_scene, tmp_path_factory):
    """A Plenoxels trial on the 16x16 tiny scene, 30 steps (a best and a latest checkpoint)."""
    folder = tmp_path_factory.mktemp("inspect")
    exp = folder / "pl.gin"
    exp.write_text(EXPERIMENT.format(scene=tiny_scene))
    runs = folder / "runs"
    harness("sweep", exp, "--runs-dir", runs, check=True)
    (t,) = sweep.expand(str(exp))
    return runs, t.id


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_inspect_writes_a_csv_and_a_plot_per_ray(trial, tmp_path):
    runs, tid = trial
    proc = harness("inspect", f"pl/{tid[:5]}", "--runs-dir", runs, "--ray", "0:8,8", "--ray", "test_001:3,12",
                   "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "checkpoint best (step" in lines[0]
    for view, x, y in (("test_000", 8, 8), ("test_001", 3, 12)):
        line = next(s for s in lines if s.startswith(f"{view} ({x}, {y})"))
        path = tmp_path / f"{view}_x{x}_y{y}.csv"
        with open(path) as f:
            assert tuple(next(csv.reader(f))) == insp.COLUMNS
        assert len(_csv(path)) == int(re.search(r"render: (\d+) samples", line)[1])
        assert (tmp_path / f"{view}_x{x}_y{y}.png").stat().st_size > 10_000
    rows = _csv(tmp_path / "test_000_x8_y8.csv")
    opacity = float(re.search(r"opacity ([\d.]+)", lines[1])[1])
    assert len(rows) > 0 and abs(sum(float(r["weight"]) for r in rows) - opacity) < 1e-3
    assert all(float(a["t"]) < float(b["t"]) for a, b in zip(rows, rows[1:]))


def test_worst_pixels_are_the_largest_errors(trial, tmp_path, capsys):
    runs, tid = trial
    assert main(["inspect", str(runs / "pl" / tid), "--worst", "2", "--view", "1", "--checkpoint", "latest",
                 "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "checkpoint latest (step 30)" in lines[0]
    errors = [float(m[1]) for x in lines if (m := re.search(r"squared error ([\d.e-]+)", x))]
    assert len(errors) == 2 and errors[0] >= errors[1] > 0
    assert len(list(tmp_path.glob("test_001_*.csv"))) == 2 and len(list(tmp_path.glob("test_001_*.png"))) == 2


@pytest.mark.parametrize("args, message", [
    (["--ray", "0:8"], "expected VIEW:X,Y"),
    (["--ray", "5:1,1"], "view 5 is out of range: the test split has 2 views"),
    (["--ray", "nope:1,1"], "no such test view"),
    (["--ray", "0:16,2"], "pixel (16, 2) is outside view test_000 (16x16"),
    ([], "give --ray VIEW:X,Y"),
    (["--ray", "0:1,1", "--view", "1"], "--view goes with --worst"),
])
def test_bad_requests_are_one_line(trial, args, message, capsys):
    runs, tid = trial
    assert main(["inspect", f"pl/{tid}", "--runs-dir", str(runs), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_trials_that_cannot_be_inspected_are_one_line(trial, tmp_path, capsys):
    runs, tid = trial
    bare = tmp_path / "exp" / "bare"
    bare.mkdir(parents=True)
    shutil.copy(runs / "pl" / tid / "config.gin", bare / "config.gin")  # no checkpoints
    toy = tmp_path / "exp" / "toy"
    toy.mkdir()
    (toy / "config.gin").write_text("import tests.fixtures.toy_method\nTrainer.method = @ToyColour\n")
    for target, message in ((str(bare), "no checkpoint to inspect"),
                            (str(toy), "ToyColour does not declare the 'samples' capability"),
                            ("exp/zz", "no trial folder in"),
                            ("nothing", "not a trial folder")):
        assert main(["inspect", target, "--runs-dir", str(tmp_path), "--ray", "0:1,1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (target, err)


def test_compositions_name_the_blended_blocks_and_weights(tmp_path):
    """A block trial's compositions are found through the compose index, and a view's blocks and
    weights are the ones its compose record kept."""
    from harness.core.records import TrialRecord

    trial = tmp_path / "bn" / "aaa"
    trial.mkdir(parents=True)
    (trial / "status.json").write_text(json.dumps({"experiment": "bn"}))
    comp = tmp_path / "bn" / "compose"
    (comp / "c1").mkdir(parents=True)
    (comp / "index.json").write_text(json.dumps({"records": [
        {"id": "c1", "variant": "full", "members": {"0": "aaa", "1": "bbb"}},
        {"id": "c2", "variant": "x", "members": {"0": "ccc"}}]}))
    (comp / "c1" / "metrics.json").write_text(json.dumps({"per_view": {
        "v8": {"blocks": [1, 0], "weights": [0.7, 0.3]}}}))
    found = insp.compositions(TrialRecord(trial), tmp_path)
    assert [(exp, entry["id"]) for exp, entry, _ in found] == [("bn", "c1")]
    blend = insp.blended_blocks(found[0][1], found[0][2], "v8")
    assert blend["blocks"] == [1, 0] and np.allclose(blend["weights"], [0.7, 0.3]) and blend["variant"] == "full"
    assert insp.blended_blocks(found[0][1], found[0][2], "v9") is None


BLOCKS = """include 'base/block_nerf.gin'
load_scene.path = '{scene}'
load_scene.format = 'nerfstudio'
ITERATIONS = 4
Trainer.checkpoint_every = 4
MipField.n_coarse = 8
MipField.n_fine = 6
MipField.width = 16
MipField.depth = 2
MipField.colour_width = 8
MipField.pos_freqs = 4
Appearance.dim = 4
Visibility.width = 8
Visibility.eval_stride = 16
BlockNeRF.batch_size = 64
BlockNeRF.device = 'cpu'
BlockPartition.n_blocks = 2
Evaluation.metrics = ('psnr',)
Trainer.collapse_psnr = None
Trainer.min_loss_drop = None
Sweep.axes = {{'BlockNeRF.block': [0, 1]}}
Sweep.seeds = [0]
Sweep.compose = {{'over': 'BlockNeRF.block', 'run': 'baselines.block_nerf.compose:Composition',
                 'options': {{'power': 4, 'visibility_threshold': 0.0}}}}
launch.cluster = 'debug'
"""


def test_a_composed_block_trial_shows_both_passes_and_the_blended_blocks(tmp_path):
    """Coarse and fine samples in the CSV; the blocks and weights of the compose record; the weighted
    blend of the blocks' pixels is the composed render's pixel (as saved, 8-bit)."""
    from PIL import Image

    from tests.test_data_street import generate

    scene = generate("street", tmp_path / "scene", n_blocks=2, n_images=32, width=16, height=12)
    exp = tmp_path / "bn.gin"
    exp.write_text(BLOCKS.format(scene=scene))
    runs = tmp_path / "runs"
    harness("sweep", exp, "--runs-dir", runs, check=True)
    (record,) = json.loads((runs / "bn" / "compose" / "index.json").read_text())["records"]
    comp, members = runs / "bn" / "compose" / record["id"], record["members"]
    composed = json.loads((comp / "metrics.json").read_text())
    view, tid = next((v, members[str(info["blocks"][0])]) for v, info in composed["per_view"].items()
                     if len(info["blocks"]) == 2)
    lines = insp.run_inspect(f"bn/{tid}", [f"{view}:9,6"], out=tmp_path / "out", runs_dir=runs)
    rows = _csv(tmp_path / "out" / f"{view}_x9_y6.csv")
    assert [r["pass"] for r in rows] == ["coarse"] * 8 + ["fine"] * 6
    assert any(x.startswith(f"view {view}: conditioning: the code learned for appearance_id") for x in lines)
    info = composed["per_view"][view]
    pairs = ", ".join(f"block {b} ({members[str(b)]}) weight {w:.4f}" for b, w in zip(info["blocks"], info["weights"]))
    assert any(x.endswith(f"blends view {view} from: {pairs}") for x in lines), lines
    blend = next(x for x in lines if x.startswith(f"  {view}_x9_y6: blend"))
    rgb = np.array([float(v) for v in re.search(r"blend \(([^)]*)\)", blend)[1].split(",")])
    saved = np.asarray(Image.open(comp / "renders" / f"{view}.png"))[6, 9] / 255
    assert np.abs(rgb - saved).max() < 0.5 / 255 + 1e-3  # the summary's 3 decimals
    assert len(list((tmp_path / "out").glob(f"{view}_x9_y6_block*.csv"))) == 2
