"""Plenoxels loss family: each term's value on tiny grids where it is known by hand, Gin wiring,
and the training paths that use them (SSIM on patches, learned background)."""

import math

import numpy as np
import pytest
import torch

from baselines.plenoxels import Plenoxels, Reconstruction, Smoothness, Sparsity, TVLoss
from baselines.plenoxels.grid import SparseGrid
from baselines.plenoxels.losses import axis_neighbours
from baselines.plenoxels.optim import lr_factor
from harness.core.data.rays import RaySampler
from harness.core.data.scene import Cameras
from harness.core.metrics import ssim
from tests.test_plenoxels import random_batch, synthetic_scene


def _grid(values: torch.Tensor) -> SparseGrid:
    """A dense R^3 grid whose density is `values` (R, R, R) and whose SH is 2 * density."""
    r = values.shape[0]
    g = SparseGrid.dense(r, torch.zeros(3), torch.ones(3), 3, 0.0)
    g.density = values.reshape(-1, 1).float().clone()
    g.sh = 2 * g.density.repeat(1, 3)
    return g


def _all_rows(g: SparseGrid):
    return g.links[g.voxels].long(), axis_neighbours(g.resolution, g.links, g.voxels)


# ---- reconstruction ---------------------------------------------------------------------------
def test_l2_and_l1_have_their_textbook_values():
    pred = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    target = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 1.0]])
    # differences 0.5, 0, 1, 0, 1, 0: squares sum 2.25, abs sum 2.5, over 6 values
    l2 = Reconstruction(kind="l2", weight=2.0)(pred, target)
    l1 = Reconstruction(kind="l1", weight=3.0)(pred, target)
    assert l2.keys() == {"mse"} and l1.keys() == {"l1"}
    assert float(l2["mse"]) == pytest.approx(2.0 * 2.25 / 6)
    assert float(l1["l1"]) == pytest.approx(3.0 * 2.5 / 6)


def test_ssim_term_is_one_minus_the_evaluation_ssim_per_patch():
    g = torch.Generator().manual_seed(0)
    p = 12
    target = torch.rand(2, p, p, 3, generator=g)
    pred = (target + 0.1 * torch.randn(2, p, p, 3, generator=g)).clamp(0, 1)
    rec = Reconstruction(weight=0.0, ssim_weight=0.5, patch_size=p)
    out = rec(pred.reshape(-1, 3), target.reshape(-1, 3))
    expected = 0.5 * (1 - (ssim(pred[0], target[0]) + ssim(pred[1], target[1])) / 2)
    assert out.keys() == {"ssim"}
    assert float(out["ssim"]) == pytest.approx(float(expected), rel=1e-6)
    # identical images: no loss
    assert float(rec(target.reshape(-1, 3), target.reshape(-1, 3))["ssim"]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "huber"}, "Reconstruction.kind"),
    ({"weight": -1.0}, "Reconstruction.weight"),
    ({"ssim_weight": 0.1, "patch_size": 8}, "patch_size must be >= 11"),
])
def test_bad_reconstruction_parameters_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Reconstruction(**kwargs)


def test_ssim_on_a_batch_that_is_not_whole_patches_is_a_clear_error():
    rec = Reconstruction(ssim_weight=0.1, patch_size=11)
    with pytest.raises(ValueError, match="whole 11x11 patches"):
        rec(torch.rand(130, 3), torch.rand(130, 3))


# ---- sparsity ---------------------------------------------------------------------------------
def test_sparsity_cauchy_and_l1_known_values():
    sigma = torch.tensor([0.0, 1.0, 2.0])
    cauchy = Sparsity(weight=0.1, kind="cauchy")(sigma)["sparsity"]
    l1 = Sparsity(weight=0.1, kind="l1")(sigma)["sparsity"]
    assert float(cauchy) == pytest.approx(0.1 * (math.log(1) + math.log(3) + math.log(9)) / 3)
    assert float(l1) == pytest.approx(0.1 * 1.0)
    assert Sparsity(weight=0.0)(sigma) == {}


# ---- TV and smoothness --------------------------------------------------------------------------
def test_tv_and_smoothness_of_a_constant_grid_are_zero():
    g = _grid(torch.full((4, 4, 4), 3.0))
    gen = torch.Generator().manual_seed(0)
    tv = TVLoss(weight_density=1.0, weight_sh=1.0, fraction=1.0)
    out = tv(g.density, g.sh, tv.draw(g, gen))
    assert float(out["tv_density"]) == 0.0 and float(out["tv_sh"]) == 0.0
    sm = Smoothness(weight_density=1.0, weight_sh=1.0)
    out = sm(g.density, g.sh, _all_rows(g))
    assert float(out["smooth_density"]) == 0.0 and float(out["smooth_sh"]) == 0.0


def test_tv_of_a_linear_ramp_is_its_slope():
    # density = 2 * x: every voxel but the last x-layer differs by 2 along +x, 0 along y, z
    x = torch.arange(4.0).view(4, 1, 1).expand(4, 4, 4)
    g = _grid(2 * x)
    from kernels.tv import tv_neighbours

    all_rows = tv_neighbours(g.resolution, g.links, g.voxels)
    out = TVLoss(weight_density=1.0, norm="l2")(g.density, g.sh, all_rows)
    assert float(out["tv_density"]) == pytest.approx(2.0 * 48 / 64)  # 48 of 64 voxels have a +x neighbour
    out = TVLoss(weight_density=1.0, norm="squared")(g.density, g.sh, all_rows)
    assert float(out["tv_density"]) == pytest.approx(4.0 * 48 / 64)


def test_smoothness_ignores_ramps_and_measures_curvature():
    x = torch.arange(4.0).view(4, 1, 1).expand(4, 4, 4)
    ramp = Smoothness(weight_density=1.0)(_grid(3 * x).density, None, _all_rows(_grid(3 * x)))
    assert float(ramp["smooth_density"]) == pytest.approx(0.0, abs=1e-6)
    # x^2: second difference 2 along x at the 2 interior x-layers (32 stencils), 0 along y and z
    # at their interior layers (32 + 32 stencils): mean of squares = 32 * 4 / 96
    g = _grid(x * x)
    curved = Smoothness(weight_density=0.5, weight_sh=1.0)(g.density, g.sh, _all_rows(g))
    assert float(curved["smooth_density"]) == pytest.approx(0.5 * 32 * 4 / 96)
    assert float(curved["smooth_sh"]) == pytest.approx(32 * 16 / 96)  # sh = 2 * density


def test_axis_neighbours_mark_borders_and_unallocated_voxels():
    g = _grid(torch.ones(3, 3, 3))
    centre = torch.tensor([13])  # (1, 1, 1)
    nb = axis_neighbours(3, g.links, centre)[:, :, 0]
    assert nb.tolist() == [[4, 22], [10, 16], [12, 14]]
    corner = axis_neighbours(3, g.links, torch.tensor([0]))[:, :, 0]
    assert corner[:, 0].tolist() == [-1, -1, -1]
    links = g.links.clone()
    links[22] = -1
    assert int(axis_neighbours(3, links, centre)[0, 1, 0]) == -1


# ---- schedules and wiring ------------------------------------------------------------------------
def test_delayed_learning_rate_schedule_matches_svox2_formula():
    assert lr_factor(0, 0.1, 100) == 1.0
    assert lr_factor(100, 0.1, 100) == pytest.approx(0.1)
    assert lr_factor(50, 0.1, 100) == pytest.approx(0.1 ** 0.5)
    assert lr_factor(0, 1.0, 0, delay_steps=10, delay_mult=0.01) == pytest.approx(0.01)
    mid = 0.01 + 0.99 * math.sin(math.pi / 4)
    assert lr_factor(5, 1.0, 0, delay_steps=10, delay_mult=0.01) == pytest.approx(mid)
    assert lr_factor(20, 1.0, 0, delay_steps=10, delay_mult=0.01) == pytest.approx(1.0)


def test_gin_binds_every_loss_term():
    import gin

    import baselines.plenoxels  # noqa: F401 (registers the configurables)

    gin.clear_config()
    try:
        gin.parse_config(["Reconstruction.kind = 'l1'", "Sparsity.weight = 1e-3",
                          "Smoothness.weight_sh = 2e-3", "Plenoxels.reconstruction = @Reconstruction()",
                          "Plenoxels.sparsity = @Sparsity()", "Plenoxels.smoothness = @Smoothness()"])
        m = Plenoxels(synthetic_scene(), 0, resolution=16, upsample_steps=(), prune_steps=())
    finally:
        gin.clear_config()
    assert (m.reconstruction.kind, m.sparsity.weight, m.smoothness.weight_sh) == ("l1", 1e-3, 2e-3)


def _train(model, steps, batch=lambda s: random_batch(s)):
    return [model.train_step(s, batch(s)) for s in range(steps)]


def test_every_term_reaches_the_logged_losses_and_trains_finite():
    m = Plenoxels(synthetic_scene(), 0, resolution=32, upsample_steps=(), prune_steps=(), batch_size=512,
                  reconstruction=Reconstruction(kind="l1"), sparsity=Sparsity(weight=1e-3),
                  smoothness=Smoothness(weight_density=1e-3, weight_sh=1e-3),
                  tv=TVLoss(weight_density=1e-4, weight_sh=1e-4))
    logs = _train(m, 4)
    assert {"l1", "mse", "sparsity", "smooth_density", "smooth_sh", "tv_density", "tv_sh"} <= logs[-1].keys()
    assert all(math.isfinite(v) for log in logs for v in log.values())
    # the total is the sum of the terms (mse is only logged when L1 drives training)
    last = logs[-1]
    parts = sum(v for k, v in last.items() if k not in ("loss", "mse", "samples_per_ray"))
    assert last["loss"] == pytest.approx(parts, rel=1e-5)


def test_sparsity_lowers_total_density():
    def mass(weight):
        m = Plenoxels(synthetic_scene(), 0, resolution=16, upsample_steps=(), prune_steps=(),
                      batch_size=512, sparsity=Sparsity(weight=weight, kind="l1"))
        _train(m, 20)
        return float(torch.relu(m.grid.density).sum())
    assert mass(1.0) < 0.8 * mass(0.0)


def test_ssim_loss_trains_on_patches_from_the_ray_sampler():
    # a 32x32 image of a smooth pattern seen by one camera, sampled as 16x16 patches
    h = w = 32
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    img = np.stack([xx, yy, 0.5 * np.ones_like(xx)], -1)[None].astype(np.float32)
    c2w = np.eye(4, dtype=np.float32)[None, :3]
    c2w[0, 2, 3] = 4.0
    cams = Cameras(c2w=c2w, fx=np.array([40.0]), fy=np.array([40.0]), cx=np.array([16.0]),
                   cy=np.array([16.0]), width=w, height=h)
    sampler = RaySampler(img, cams, seed=0)
    m = Plenoxels(synthetic_scene(), 0, resolution=16, upsample_steps=(), prune_steps=(), batch_size=512,
                  reconstruction=Reconstruction(ssim_weight=0.5, patch_size=16))
    assert m.patch_size == 16
    logs = [m.train_step(s, sampler.sample(s, m.batch_size, m.patch_size)) for s in range(30)]
    assert logs[-1]["ssim"] < logs[0]["ssim"] and logs[-1]["mse"] < logs[0]["mse"]


def test_patch_batches_are_contiguous_squares():
    img = np.arange(2 * 20 * 30 * 3, dtype=np.float32).reshape(2, 20, 30, 3)
    cams = Cameras(c2w=np.tile(np.eye(4, dtype=np.float32)[:3], (2, 1, 1)), fx=np.full(2, 30.0),
                   fy=np.full(2, 30.0), cx=np.full(2, 15.0), cy=np.full(2, 10.0), width=30, height=20)
    batch = RaySampler(img, cams, seed=3).sample(7, 2 * 64 + 5, patch_size=8)
    assert batch["rgb"].shape == (128, 3)  # whole patches only
    pix = batch["rgb"][:, 0].long() // 3  # flat pixel index across images
    first = pix[:64].view(8, 8)
    assert (first[:, 1:] - first[:, :-1] == 1).all() and (first[1:, :] - first[:-1, :] == 30).all()
    assert len(set((batch["image_index"][:64]).tolist())) == 1
    with pytest.raises(ValueError, match="patch_size 40"):
        RaySampler(img, cams, seed=3).sample(0, 4096, patch_size=40)


def test_learned_background_moves_towards_the_true_one():
    # rays that miss everything see only the background: the scene says black, the images white
    m = Plenoxels(synthetic_scene(background=(0.0, 0.0, 0.0)), 0, resolution=16, upsample_steps=(),
                  prune_steps=(), batch_size=256, background="learned", lr_background=0.1)
    g = torch.Generator().manual_seed(0)
    for s in range(30):
        o = torch.randn(256, 3, generator=g) + torch.tensor([0.0, 0.0, 10.0])
        d = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 1.0]).expand(256, 3), dim=1)
        m.train_step(s, {"origins": o, "directions": d, "rgb": torch.ones(256, 3),
                         "image_index": torch.zeros(256, dtype=torch.long)})
    assert (m.background() > 0.5).all()
    state = m.state_dict()
    fresh = Plenoxels(synthetic_scene(background=(0.0, 0.0, 0.0)), 0, resolution=16, upsample_steps=(),
                      prune_steps=(), background="learned")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.background(), m.background())
