"""Shared inputs for the kernel tests (test_kernels_*.py), and checks that they have the structure
the tests rely on: a hand-built sparse grid with a surface, a Plenoxels grid trained for a few
dozen steps on lego_100, packed samples through each (rays with no samples, rays that terminate
early), and a fixture that shrinks the interpreter's Triton blocks so every loop runs several
chunks and programs.

Triton runs on this CPU in interpreter mode: TRITON_INTERPRET must be set before the kernels are
first defined (kernels.triton.* import lazily), so every kernel test module imports this first.
"""

from __future__ import annotations

import functools
import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import _impl
from kernels.grid import as_resolution, world_to_grid
from kernels.render import march, ray_aabb
from tests.conftest import SHARED_DATA

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LEGO = SHARED_DATA / "nerf_synthetic" / "lego_100"


def cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "impl='cuda' needs a CUDA GPU (torch.cuda.is_available() is False)"
    from kernels.cuda.composite import unavailable_reason

    return unavailable_reason()


def fast_impls():
    """pytest params for the fast implementations, each skipped with its reason when it cannot run."""
    triton_skip = None if _impl.triton_available() else "triton does not import"
    reason = cuda_skip_reason()
    return [pytest.param("triton", marks=pytest.mark.skipif(triton_skip is not None, reason=str(triton_skip))),
            pytest.param("cuda", marks=pytest.mark.skipif(reason is not None, reason=str(reason)))]


@pytest.fixture
def small_blocks(monkeypatch):
    """Interpreter blocks small enough that test inputs span many programs and chunks."""
    from kernels import triton as kt

    # the GPU sizes stay as launched (kernels.triton.BLOCKS)
    for name, interp in (("composite_rays", 8), ("composite_samples", 16), ("samples", 64), ("tv", 32)):
        monkeypatch.setitem(kt.BLOCKS, name, (interp, kt.BLOCKS[name][1]))


def random_packed(counts, dtype=torch.float64, seed=0, sigma_scale=4.0):
    """Random packed samples for rays of the given sample counts: sigma, rgb, delta, t, ray_index."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.as_tensor(counts)
    S = int(counts.sum())
    ray = torch.repeat_interleave(torch.arange(counts.shape[0]), counts)
    sigma = torch.rand(S, generator=g, dtype=dtype) * sigma_scale
    rgb = torch.rand(S, 3, generator=g, dtype=dtype)
    delta = torch.rand(S, generator=g, dtype=dtype) * 0.2 + 0.01
    t = torch.cumsum(delta, 0)
    return sigma, rgb, delta, t, ray


@functools.cache
def ball_grid(resolution: int = 24, n_basis: int = 9, seed: int = 0):
    """A sparse grid with a surface: density rising steeply inside a ball of radius 0.35 (box
    [-0.5, 0.5]^3), absent voxels outside radius 0.45, random SH. Returns a dict with density
    (N, 1), sh (N, 3B), links (R^3,), resolution, bbox_min, bbox_max."""
    g = torch.Generator().manual_seed(seed)
    r = resolution
    centres = (torch.cartesian_prod(*[torch.arange(r)] * 3).float() + 0.5) / r - 0.5
    dist = centres.norm(dim=1)
    present = dist < 0.45
    links = torch.full((r ** 3,), -1, dtype=torch.int32)
    links[present] = torch.arange(int(present.sum()), dtype=torch.int32)
    density = (torch.clamp(0.35 - dist[present], min=-0.1) * 400 + torch.rand(int(present.sum()), generator=g)
               ).unsqueeze(1)
    sh = torch.randn(int(present.sum()), 3 * n_basis, generator=g) * 0.5
    return {"density": density, "sh": sh, "links": links, "resolution": r,
            "bbox_min": torch.full((3,), -0.5), "bbox_max": torch.full((3,), 0.5)}


def march_grid(grid: dict, origins: torch.Tensor, dirs: torch.Tensor, step: float):
    """Packed fixed-step samples through the grid's box: ray_index, t, grid coordinates."""
    t0, t1, hit = ray_aabb(origins, dirs, grid["bbox_min"], grid["bbox_max"])
    t1 = torch.where(hit, t1, t0)
    ray, t = march(t0, t1, step)
    pts = origins[ray] + t.unsqueeze(1) * dirs[ray]
    coords = world_to_grid(pts, grid["bbox_min"], grid["bbox_max"], grid["resolution"])
    return ray, t, coords


def ball_rays(n: int = 300, seed: int = 1):
    """Rays from a sphere of radius 1.5 aimed near the centre; every 7th ray aims away (misses
    the box: no samples)."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1) * 1.5
    aim = torch.rand(n, 3, generator=g) * 0.8 - 0.4
    dirs = torch.nn.functional.normalize(aim - origins, dim=1)
    dirs[::7] = -dirs[::7]
    return origins, dirs


@functools.cache
def lego_grid(steps: int = 40):
    """The grid of a Plenoxels model trained for `steps` steps on lego_100 (resolution 32, pruned
    at step 30, so sparse), and 256 rays of test view 0. Skips when lego_100 is absent."""
    if not LEGO.is_dir():
        pytest.skip(f"shared test data not found: {LEGO}")
    from baselines.plenoxels import Plenoxels
    from harness.core.data.blender import load_blender
    from harness.core.data.rays import RaySampler, image_rays

    scene = load_blender(LEGO, splits=("train", "test"))
    model = Plenoxels(scene, 0, resolution=32, upsample_steps=(), prune_steps=(30,), sh_degree=2)
    sampler = RaySampler(scene.split("train").images, scene.split("train").cameras, seed=0)
    for step in range(steps):
        model.train_step(step, sampler.sample(step, 2048))
    gr = model.grid
    o, d = image_rays(scene.split("test").cameras, 0)
    sel = torch.linspace(0, o.shape[0] - 1, 256).long()
    step_world = float(gr.voxel_size.min())
    return ({"density": gr.density.detach().clone(), "sh": gr.sh.detach().clone(),
             "links": gr.links.clone(), "resolution": as_resolution(gr.resolution),
             "bbox_min": gr.bbox_min.clone(), "bbox_max": gr.bbox_max.clone()},
            o[sel].float(), d[sel].float(), step_world)


# ---- the fixtures have the structure the tests need ---------------------------------------------
def test_ball_grid_rays_include_empty_and_early_terminating_rays():
    from kernels.render import early_termination
    from kernels.sample import sample_grid_sh

    grid = ball_grid()
    o, d = ball_rays()
    ray, t, coords = march_grid(grid, o, d, 0.02)
    counts = torch.bincount(ray, minlength=o.shape[0])
    assert (counts == 0).sum() >= 20 and counts.max() > 40
    sigma, _ = sample_grid_sh(grid["density"], grid["sh"], coords, d, grid["resolution"],
                              links=grid["links"], ray_index=ray, impl="torch")
    keep = early_termination(torch.relu(sigma) * 0.02, ray, o.shape[0], 1e-3)
    stopped = torch.bincount(ray[~keep], minlength=o.shape[0]) > 0
    assert stopped.sum() >= 50, "few rays terminate early: the ball is not opaque enough"


def test_lego_grid_is_trained_and_sparse():
    grid, o, d, step = lego_grid()
    n_vox = math.prod(grid["resolution"])
    assert 0 < grid["density"].shape[0] < n_vox, "pruning at step 30 should leave a sparse grid"
    assert grid["sh"].abs().max() > 0 and grid["density"].std() > 0
    assert math.isfinite(step) and o.shape == d.shape == (256, 3)
