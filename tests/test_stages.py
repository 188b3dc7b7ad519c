"""Training in stages (harness/run/stages.py), the centre precrop and masked rays: a stage boundary switches
the trained groups and the rays' resolution at its step, also across a kill and resume; frozen groups keep
their optimiser state; the precrop and the masks restrict the drawn pixels; bad stage lists are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core.data.images import downscale
from harness.core.data.rays import RaySampler
from harness.core.data.scene import Cameras
from harness.core.errors import ConfigError
from harness.run import stages
from tests.reliability_tools import Trial

BLOCK_NERF = """import baselines.block_nerf
import harness.core.data.procedural
load_scene.path = 'street'
load_scene.format = 'procedural'
Trainer.method = @BlockNeRF
Trainer.iterations = 20
Trainer.checkpoint_every = 100
Trainer.keep_checkpoints = 5
Trainer.log_every = 1
Trainer.collapse_psnr = None
Trainer.min_loss_drop = None
Trainer.stages = [{'name': 'coarse', 'steps': 10, 'downscale': 2, 'train': ['mlp']},
                  {'name': 'fine', 'steps': 10, 'set': {'coarse_loss_weight': 0.0}}]
Evaluation.metrics = ('psnr',)
Tracker.backends = []
Sweep.seeds = [0]
launch.cluster = 'debug'
BlockNeRF.block = 1
BlockNeRF.batch_size = 128
BlockNeRF.field = @MipField()
MipField.n_coarse = 8
MipField.n_fine = 8
MipField.width = 32
MipField.near = 0.5
BlockNeRF.pose_refinement = @PoseRefinement()
BlockNeRF.appearance = @Appearance()
Appearance.fit_steps = 2
"""


def _cameras(n=2, w=8, h=6) -> Cameras:
    c2w = np.tile(np.eye(4, dtype=np.float32)[:3], (n, 1, 1))
    f = np.full(n, 10.0, np.float32)
    return Cameras(c2w, f, f, np.full(n, w / 2, np.float32), np.full(n, h / 2, np.float32), w, h)


def _images(n=2, w=8, h=6) -> np.ndarray:
    return np.random.default_rng(0).random((n, h, w, 3)).astype(np.float32)


def test_stage_lists_are_checked_in_one_line():
    for spec, match in (
            ([{"steps": 5}, {"steps": 4}], r"sum to 9, but Trainer.iterations = 10"),
            ([{"steps": 10, "lr": 1}], r"Trainer.stages\[0\]: unknown key\(s\) \['lr'\]"),
            ([{"name": "a", "steps": 10, "downscale": 0}], r"\(.a.\) downscale: expected an integer"),
            ([{"steps": 10, "train": "mlp"}], r"train: expected 'all' or a list"),
            ([{"name": "b"}], r"\('b'\): 'steps' is required"),
            ("coarse", r"expected a list of dicts")):
        with pytest.raises(ConfigError, match=match):
            stages.parse(spec, 10)
    assert stages.parse(None, 10) == [] and stages.parse([], 10) == []

    class Method:
        capabilities = ("stages",)
        stage_values = ("w",)

        def parameter_groups(self):
            return {"mlp": [], "codes": []}

        def freeze(self, groups):
            pass

    for spec, match in (([{"steps": 10, "train": []}], r"freezes every group"),
                        ([{"steps": 10, "train": ["mlp", "pose"]}], r"unknown group\(s\) \['pose'\]; Method has"),
                        ([{"name": "x", "steps": 10, "set": {"v": 1}}], r"\('x'\) set: \['v'\] cannot be set")):
        with pytest.raises(ConfigError, match=match):
            stages.check_method(stages.parse(spec, 10), Method())
    with pytest.raises(ConfigError, match="does not declare the 'stages' capability"):
        stages.check_method(stages.parse([{"steps": 10}], 10), object())


def test_the_rays_of_a_downscaled_stage_are_those_of_the_box_filtered_images():
    images, cams = _images(), _cameras()
    plan = stages.parse([{"steps": 3, "downscale": 2}, {"steps": 3}], 6)
    rays = stages.TrainingRays(images, cams, 7, plan)
    small = RaySampler(np.stack([downscale(i, 2) for i in images]), stages.downscaled_cameras(cams, 2), 7)
    full = RaySampler(images, cams, 7)
    for step in range(6):
        want = (small if step < 3 else full).sample(step, 32)
        got = rays.sample(step, 32)
        assert all(torch.equal(got[k], want[k]) for k in want), step


def test_precrop_draws_the_centre_only_for_its_steps():
    images, cams = _images(n=3, w=20, h=10), _cameras(n=3, w=20, h=10)
    rays = stages.TrainingRays(images, cams, 0, [], precrop_steps=4, precrop_frac=0.5)
    for step in range(8):
        batch = rays.sample(step, 2000)
        u, v = _pixels(batch, cams)
        central = (u >= 5) & (u < 15) & (v >= 2) & (v < 8)  # the centre half of 20 x 10 (rounded)
        assert central.all() if step < 4 else not central.all(), step
    again = stages.TrainingRays(images, cams, 0, [], precrop_steps=4, precrop_frac=0.5)
    assert torch.equal(again.sample(2, 64)["rgb"], rays.sample(2, 64)["rgb"])  # a function of (seed, step)


def _pixels(batch, cams) -> tuple[np.ndarray, np.ndarray]:
    """The pixel (u, v) each ray goes through, from its direction (identity camera rotation)."""
    d = batch["directions"].numpy()
    u = np.floor(d[:, 0] / -d[:, 2] * cams.fx[0] + cams.cx[0]).astype(int)
    v = np.floor(-d[:, 1] / -d[:, 2] * cams.fy[0] + cams.cy[0]).astype(int)
    return u, v


def test_masked_pixels_never_enter_a_batch_and_depth_travels_with_the_rays():
    images, cams = _images(n=2, w=8, h=6), _cameras(n=2, w=8, h=6)
    masks = np.ones((2, 6, 8), bool)
    masks[0, :, :4] = False  # the left half of image 0: a transient object
    masks[1, 2:4, 2:6] = False
    depth = np.arange(2 * 6 * 8, dtype=np.float32).reshape(2, 6, 8)
    rays = RaySampler(images, cams, 3, masks=masks, depth=depth)
    for step in range(20):
        batch = rays.sample(step, 256)
        u, v = _pixels(batch, cams)
        cam = batch["image_index"].numpy()
        assert masks[cam, v, u].all(), step
        assert np.array_equal(batch["depth"].numpy(), depth[cam, v, u])
        assert np.array_equal(batch["rgb"].numpy(), images[cam, v, u])
    with pytest.raises(ValueError, match="the masks keep none"):
        RaySampler(images, cams, 3, masks=np.zeros((2, 6, 8), bool)).sample(0, 4)
    # downscaled: a pixel is kept only where all its source pixels are, depth where they agree
    small = stages.sampler(images, cams, 3, 2, masks, depth)
    assert small.masks is not None and small.masks.shape == (2, 3, 4) and not small.masks[0, :, :2].any()
    assert small.masks[0, :, 2:].all() and not small.masks[1, 1, 1:3].any()
    assert small.depth is not None and np.isnan(small.depth.numpy()).all()  # neighbours differ by more than 5%


def test_downscaled_depth_keeps_agreeing_blocks_and_the_sky():
    d = np.array([[10.0, 10.2, 5.0, 9.0],
                  [10.1, 10.3, 5.0, 5.0],
                  [np.inf, np.inf, np.nan, 1.0],
                  [np.inf, np.inf, 1.0, 1.0]], np.float32)[None]
    out = stages.downscaled_depth(d, 2)
    assert out[0, 0, 0] == pytest.approx(10.15) and np.isnan(out[0, 0, 1])  # 5 vs 9: an edge
    assert np.isinf(out[0, 1, 0]) and np.isnan(out[0, 1, 1])  # sky kept; a block with no depth stays none


def _state(d: Path, step: int) -> dict:
    from harness.run.checkpoints import named_tensors

    return named_tensors(torch.load(d / "checkpoints" / f"step_{step:08d}.pt", weights_only=False)["method"])


def test_block_nerf_stages_switch_groups_and_resolution_and_survive_a_kill(tmp_path):
    exp = tmp_path / "staged.gin"
    exp.write_text(BLOCK_NERF)
    reference = Trial(exp, tmp_path / "reference")
    reference.run_here()
    status = json.loads((reference.dir / "status.json").read_text())
    assert [s["name"] for s in status["stages"]] == ["coarse", "fine"]
    assert status["stages"][0] == {"name": "coarse", "start": 0, "steps": 10, "downscale": 2, "train": ["mlp"],
                                   "set": {}}
    rows = [json.loads(line) for line in (reference.dir / "train.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows if "loss" in r] == ["coarse"] * 10 + ["fine"] * 10
    # the boundary is checkpointed; the coarse stage trained the MLP only: the codes and poses did not move
    # and their optimiser state is untouched (none yet); the fine stage trains them
    boundary, end = _state(reference.dir, 10), _state(reference.dir, 20)
    first = torch.load(reference.dir / "checkpoints" / "step_00000010.pt", weights_only=False)["method"]
    assert not first["opt"]["appearance"]["state"] and not first["opt"]["pose"]["state"]
    assert first["opt"]["mlp"]["state"]
    codes = [k for k in boundary if k.startswith("codes")]
    assert codes and all(not torch.equal(boundary[k], end[k]) for k in codes)
    # coarse rays came from the images at half resolution: the loss of its steps is that of 48 x 32 images
    assert rows[0]["mse"] != pytest.approx(rows[10]["mse"], rel=1e-9)

    killed = Trial(exp, tmp_path / "killed")
    assert killed.run(fault="action=kill point=step nth=13") == "killed"  # in the fine stage, after step 10's save
    assert killed.run() == "ok"
    status = json.loads((killed.dir / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 2
    a, b = _state(reference.dir, 20), _state(killed.dir, 20)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_b = [json.loads(line) for line in (killed.dir / "train.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in r.items() if k != "time"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in rows_b]


LEGO = Path(__file__).resolve().parents[1] / "data" / "nerf_synthetic" / "lego_100"


@pytest.mark.skipif(not LEGO.is_dir(), reason="lego_100 not present")
def test_plenoxels_trains_in_stages_too(tmp_path):
    """A first stage on the density alone at half resolution: the SH grid is not updated (no optimiser state,
    values as initialised) until the second stage trains it."""
    exp = tmp_path / "staged.gin"
    exp.write_text(f"""import baselines.plenoxels
load_scene.path = '{LEGO}'
load_scene.format = 'blender'
load_scene.downscale = 2
Trainer.method = @Plenoxels
Trainer.iterations = 30
Trainer.checkpoint_every = 100
Trainer.keep_checkpoints = 5
Trainer.collapse_psnr = None
Trainer.min_loss_drop = None
Trainer.stages = [{{'name': 'density', 'steps': 10, 'downscale': 2, 'train': ['density']}}, {{'steps': 20}}]
Plenoxels.resolution = 32
Plenoxels.upsample_steps = ()
Plenoxels.prune_steps = ()
Plenoxels.batch_size = 512
Evaluation.metrics = ('psnr',)
Tracker.backends = []
Sweep.seeds = [0]
launch.cluster = 'debug'
""")
    trial = Trial(exp, tmp_path / "runs")
    trial.run_here()
    first = torch.load(trial.dir / "checkpoints" / "step_00000010.pt", weights_only=False)["method"]
    last = torch.load(trial.dir / "checkpoints" / "step_00000030.pt", weights_only=False)["method"]
    assert "sh" not in first["optimizer"] and "density" in first["optimizer"]
    assert first["optimizer"]["density"]["t"] == 10 and last["optimizer"]["sh"]["t"] == 20
    assert not torch.equal(first["grid"]["sh"], last["grid"]["sh"])
