"""Plenoxels grid operations on a grid trained on real images (lego 100x100): upsampling keeps the
rendered image, pruning keeps every voxel that carries rendering weight, memory accounting."""

import numpy as np
import pytest
import torch

from baselines.plenoxels import Plenoxels
from harness.core.metrics import psnr
from tests.conftest import SHARED_DATA, requires_shared

LEGO = SHARED_DATA / "nerf_synthetic" / "lego_100"
VIEWS = (0, 50, 100)


@pytest.fixture(scope="module")
def trained():
    """A 32^3 -> 64^3 model after 250 steps on lego_100 (~8 s on one thread)."""
    from harness.core.data.blender import load_blender
    from harness.core.data.rays import RaySampler

    scene = load_blender(LEGO, splits=("train", "test"))
    train = scene.split("train")
    m = Plenoxels(scene, 0, resolution=64, upsample_steps=(120,), prune_steps=(60,), lr_decay_steps=250,
                  batch_size=2048)
    sampler = RaySampler(train.images, train.cameras, seed=0)
    for step in range(250):
        m.train_step(step, sampler.sample(step, m.batch_size))
    return m, scene


def _render(m, scene):
    from harness.core.data.rays import image_rays

    test = scene.split("test")
    return [m.render(*image_rays(test.cameras, i))["rgb"].numpy() for i in VIEWS]


def _rays(scene, n=4000):
    from harness.core.data.rays import RaySampler

    train = scene.split("train")
    batch = RaySampler(train.images, train.cameras, seed=99).sample(0, n)
    return batch["origins"], batch["directions"]


@requires_shared("nerf_synthetic", "lego_100")
def test_upsampling_a_trained_grid_preserves_the_rendered_image(trained):
    m, scene = trained
    before = _render(m, scene)
    keep_all = torch.ones(m.grid.links.numel(), dtype=torch.bool)
    m_up = Plenoxels(scene, 0, resolution=64, upsample_steps=(120,), prune_steps=(60,))
    m_up.load_state_dict(m.state_dict())
    m_up.grid = m_up.grid.upsampled(tuple(2 * r for r in m.grid.resolution), keep_all & (m.grid.links >= 0))
    m_up.refresh_occupancy()
    after = _render(m_up, scene)
    scores = [psnr(a, b) for a, b in zip(after, before)]
    assert m_up.grid.resolution == (128, 128, 128) and min(scores) >= 40, scores


@requires_shared("nerf_synthetic", "lego_100")
def test_pruning_keeps_every_voxel_with_weight_above_the_threshold(trained):
    m, scene = trained
    m.prune_dilation = 0  # the guarantee must hold without the safety margin
    m.max_weight = torch.zeros(m.grid.n_rows)
    o, d = _rays(scene)
    weights = m.voxel_weights(o, d)
    m.max_weight = weights.clone()
    heavy = m.grid.voxels[weights > m.prune_weight]
    light = m.grid.voxels[(weights > 0) & (weights <= m.prune_weight)]
    assert heavy.numel() > 100 and light.numel() > 0  # both sides of the threshold are exercised
    pruned, _ = m.grid.pruned(m._keep())
    assert bool((pruned.links[heavy] >= 0).all())
    assert not bool((pruned.links[light] >= 0).any())
    # pruning leaves the renders of these rays as they were (only near-zero weights were dropped)
    m.grid = pruned
    m.refresh_occupancy()
    m.max_weight = torch.zeros(m.grid.n_rows)
    after = m.voxel_weights(o, d)
    assert float(after.max()) == pytest.approx(float(weights.max()), rel=1e-3)


@requires_shared("nerf_synthetic", "lego_100")
def test_memory_stats_compare_the_sparse_grid_with_the_dense_one(trained):
    m, _ = trained
    s = m.stats()
    n, channels = m.grid.links.numel(), 1 + m.grid.sh.shape[1]
    assert s["dense_bytes"] == 4 * n * channels
    assert s["grid_bytes"] == 4 * (s["voxels"] * channels + n)
    assert s["memory_fraction"] == pytest.approx(s["grid_bytes"] / s["dense_bytes"])
    assert s["memory_fraction"] < 0.5  # lego is mostly empty space after pruning
    assert s["train_rays_per_s"] > 0


def test_density_pruning_keeps_voxels_above_the_density_threshold():
    from tests.test_plenoxels import synthetic_scene

    m = Plenoxels(synthetic_scene(), 0, resolution=16, upsample_steps=(), prune_steps=(),
                  prune_by="density", prune_density=1.0, prune_dilation=0)
    vals = torch.zeros(16 ** 3)
    vals[::7] = 2.0
    vals[1::7] = 0.5
    m.grid.density = vals.view(-1, 1).clone()
    pruned, _ = m.grid.pruned(m._keep())
    assert pruned.n_rows == int((vals > 1.0).sum())
    assert bool((pruned.density > 1.0).all())
    assert np.array_equal(pruned.voxels.numpy(), torch.nonzero(vals > 1.0)[:, 0].numpy())


# ---- grids that are not cubes (NDC boxes of forward-facing scenes) ----------------------------------
def _linear_grid(shape):
    """A dense grid over [-1, 1]^3 whose density and SH are a linear function of position."""
    from baselines.plenoxels.grid import SparseGrid

    g = SparseGrid.dense(shape, -torch.ones(3), torch.ones(3), 3, 0.0)
    idx = torch.nonzero(g.links >= 0)[:, 0]
    X, Y, Z = shape
    cells = torch.stack([idx // (Y * Z), idx // Z % Y, idx % Z], 1).float()
    centres = -1 + (cells + 0.5) * (2 / torch.tensor(shape, dtype=torch.float32))
    f = centres @ torch.tensor([1.0, -2.0, 3.0]) + 0.5
    g.density = f.view(-1, 1).clone()
    g.sh = torch.stack([f, 2 * f, -f], 1)
    return g, f


def test_non_cubic_upsampling_reproduces_a_linear_field_exactly():
    g, _ = _linear_grid((12, 10, 6))
    up = g.upsampled((24, 20, 12), torch.ones(g.links.numel(), dtype=torch.bool))
    ref, f_ref = _linear_grid((24, 20, 12))
    assert up.resolution == (24, 20, 12) and up.n_rows == 24 * 20 * 12
    # away from the border (where interpolation clamps) the resampled field is the linear one
    X, Y, Z = up.resolution
    c = torch.cartesian_prod(torch.arange(X), torch.arange(Y), torch.arange(Z))
    interior = ((c >= 1) & (c <= torch.tensor([X - 2, Y - 2, Z - 2]))).all(1)
    torch.testing.assert_close(up.density[interior, 0], f_ref[interior], atol=1e-5, rtol=0)
    torch.testing.assert_close(up.sh[interior, 1], 2 * f_ref[interior], atol=1e-5, rtol=0)


def test_non_cubic_model_trains_upsamples_and_resumes():
    from tests.test_plenoxels import random_batch, synthetic_scene

    def model():
        return Plenoxels(synthetic_scene(), 0, resolution=(32, 32, 16), upsample_steps=(4,), prune_steps=(2,),
                         batch_size=256, occupancy_every=3)
    m = model()
    assert m.grid.resolution == (16, 16, 8)
    losses = [m.train_step(s, random_batch(s, 256)) for s in range(6)]
    assert m.grid.resolution == (32, 32, 16) and all(np.isfinite(out["loss"]) for out in losses)
    resumed = model()
    resumed.load_state_dict(m.state_dict())
    assert resumed.grid.resolution == (32, 32, 16)
    assert resumed.train_step(6, random_batch(6, 256)) == m.train_step(6, random_batch(6, 256))
    with pytest.raises(ValueError, match="3 ints"):
        Plenoxels(synthetic_scene(), 0, resolution=(32, 30, 16), upsample_steps=(4, 8))
