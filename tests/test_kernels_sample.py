"""Trilinear sampling of a (sparse) density + SH grid fused with SH evaluation, and the generic
`interpolate`: reference checks (independent values, gradcheck in float64) and the Triton kernels
against the reference (values and scattered gradients) on random, structured and trained grids."""

from __future__ import annotations

import pytest
import torch

from kernels import _impl
from kernels.grid import interpolate
from kernels.sample import sample_grid_sh
from kernels.sh import sh_basis
from tests.test_kernels_fixtures import DEVICE, ball_grid, ball_rays, lego_grid, march_grid

needs_triton = pytest.mark.skipif(not _impl.triton_available(), reason="triton does not import")


def random_grid(res, n_basis, sparse, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = res[0] * res[1] * res[2]
    links = None
    rows = n
    if sparse:
        present = torch.rand(n, generator=g) > 0.4
        links = torch.full((n,), -1, dtype=torch.int32)
        rows = int(present.sum())
        links[present] = torch.arange(rows, dtype=torch.int32)
    density = torch.randn(rows, 1, generator=g, dtype=dtype)
    sh = torch.randn(rows, 3 * n_basis, generator=g, dtype=dtype)
    return density, sh, links


def random_points(res, n, n_rays, dtype=torch.float64, seed=1):
    """Points over the grid and a little beyond (clamped to the border), unit directions per ray."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(n, 3, generator=g, dtype=dtype) * (torch.tensor(res, dtype=dtype) + 0.6) - 0.8
    dirs = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=g, dtype=dtype), dim=1)
    ray = torch.sort(torch.randint(0, n_rays, (n,), generator=g))[0]
    return coords, dirs, ray


def _run(impl, density, sh, coords, dirs, res, links, ray, sigmoid, seed=2):
    d = density.detach().to(DEVICE).requires_grad_()
    s = sh.detach().to(DEVICE).requires_grad_()
    dev = lambda x: x.to(DEVICE) if x is not None else None  # noqa: E731
    sigma, rgb = sample_grid_sh(d, s, dev(coords), dev(dirs), res, links=dev(links), ray_index=dev(ray),
                                sigmoid=sigmoid, impl=impl)
    g = torch.Generator().manual_seed(seed)
    loss = (sigma * torch.randn(sigma.shape, generator=g, dtype=sigma.dtype).to(DEVICE)).sum() + \
        (rgb * torch.randn(rgb.shape, generator=g, dtype=rgb.dtype).to(DEVICE)).sum()
    gd, gs = torch.autograd.grad(loss, [d, s])
    return [x.detach().cpu() for x in (sigma, rgb, gd, gs)]


# ---- the reference -------------------------------------------------------------------------------
def test_reference_at_voxel_centres_is_the_voxel_colour():
    res = (4, 5, 6)
    density, sh, _ = random_grid(res, 9, sparse=False)
    idx = torch.tensor([[0, 0, 0], [1, 2, 3], [3, 4, 5], [2, 0, 4]])
    flat = (idx[:, 0] * 5 + idx[:, 1]) * 6 + idx[:, 2]
    dirs = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
    sigma, rgb = sample_grid_sh(density, sh, idx.double(), dirs, res, impl="torch")
    torch.testing.assert_close(sigma, density[flat, 0])
    basis = sh_basis(dirs, 2)
    expected = torch.sigmoid((sh[flat].view(4, 3, 9) * basis.unsqueeze(1)).sum(-1))
    torch.testing.assert_close(rgb, expected)


def test_reference_absent_voxels_read_as_zero():
    res = (3, 3, 3)
    density, sh, _ = random_grid(res, 4, sparse=False)
    links = torch.arange(27, dtype=torch.int32)
    links[13] = -1  # the centre voxel is absent
    dense_density, dense_sh = density.clone(), sh.clone()
    dense_density[13], dense_sh[13] = 0, 0
    coords, dirs, _ = random_points(res, 50, 50)
    a = sample_grid_sh(density, sh, coords, dirs, res, links=links, sigmoid=False, impl="torch")
    b = sample_grid_sh(dense_density, dense_sh, coords, dirs, res, sigmoid=False, impl="torch")
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("sparse", [False, True])
def test_reference_gradcheck_float64(sparse):
    res = (3, 4, 3)
    density, sh, links = random_grid(res, 4, sparse)
    coords, dirs, ray = random_points(res, 12, 4)
    f = lambda d, s: sample_grid_sh(d, s, coords, dirs, res, links=links, ray_index=ray, impl="torch")  # noqa: E731
    assert torch.autograd.gradcheck(f, (density.requires_grad_(), sh.requires_grad_()))


# ---- Triton against the reference ----------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("n_basis", [1, 4, 9, 16])
@pytest.mark.parametrize("sparse", [False, True])
def test_triton_matches_reference_on_random_grids(n_basis, sparse, small_blocks):
    res = (5, 6, 7)
    density, sh, links = random_grid(res, n_basis, sparse, dtype=torch.float32, seed=n_basis)
    coords, dirs, ray = random_points(res, 300, 40, dtype=torch.float32)
    ref = _run("torch", density, sh, coords, dirs, res, links, ray, True)
    got = _run("triton", density, sh, coords, dirs, res, links, ray, True)
    for name, a, b in zip(("sigma", "rgb", "d_density", "d_sh"), ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)


@needs_triton
@pytest.mark.parametrize("sigmoid", [False, True])
def test_triton_per_sample_directions_and_float64(sigmoid, small_blocks):
    res = (4, 4, 5)
    density, sh, links = random_grid(res, 9, True)
    coords, dirs, _ = random_points(res, 150, 150)
    ref = _run("torch", density, sh, coords, dirs, res, links, None, sigmoid)
    got = _run("triton", density, sh, coords, dirs, res, links, None, sigmoid)
    for name, a, b in zip(("sigma", "rgb", "d_density", "d_sh"), ref, got):
        # the kernel's SH constants are float32 literals: float64 agrees to ~1e-7 relative
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=name)


@needs_triton
def test_triton_on_structured_and_trained_grids():
    for grid, o, d, step in [(ball_grid(), *ball_rays(), 0.02), lego_grid()]:
        ray, _, coords = march_grid(grid, o, d, step)
        res = grid["resolution"]
        ref = _run("torch", grid["density"], grid["sh"], coords, d, res, grid["links"], ray, True)
        got = _run("triton", grid["density"], grid["sh"], coords, d, res, grid["links"], ray, True)
        for name, a, b in zip(("sigma", "rgb", "d_density", "d_sh"), ref, got):
            scale = a.abs().max().item()
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * max(scale, 1.0), msg=name)


def test_bad_shapes_are_clear_errors():
    density, sh, _ = random_grid((3, 3, 3), 4, False)
    coords, dirs, ray = random_points((3, 3, 3), 5, 2)
    with pytest.raises(ValueError, match="sh must be"):
        sample_grid_sh(density, sh[:, :10], coords, dirs, 3)
    with pytest.raises(ValueError, match="dirs must be"):
        sample_grid_sh(density, sh, coords, dirs, 3)  # (R, 3) directions without ray_index
    with pytest.raises(ValueError, match="dense grid needs 64"):
        sample_grid_sh(density, sh, coords, dirs, 4, ray_index=ray)


# ---- generic interpolate -------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("channels", [1, 5, 27])
def test_interpolate_triton_matches_reference(channels, small_blocks):
    g = torch.Generator().manual_seed(channels)
    feats = torch.randn(40, channels, generator=g)
    index = torch.randint(0, 40, (8, 500), generator=g)  # many repeats: atomics collide
    weight = torch.rand(8, 500, generator=g)
    grad_out = torch.randn(500, channels, generator=g)
    res = []
    for impl in ("torch", "triton"):
        f, w = feats.to(DEVICE).requires_grad_(), weight.to(DEVICE).requires_grad_()
        out = interpolate(f, index.to(DEVICE), w, impl=impl)
        res.append([out.detach().cpu()] + [x.cpu() for x in torch.autograd.grad(out, [f, w], grad_out.to(DEVICE))])
    for name, a, b in zip(("out", "d_features", "d_weight"), *res):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)
