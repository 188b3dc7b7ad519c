"""Reference kernels: ray-box, marching, compositing, trilinear interpolation, total variation."""

import math

import pytest
import torch

from kernels.grid import interpolate, sample_dense, trilinear_corners
from kernels.render import composite, early_termination, march, ray_aabb, transmittance
from kernels.tv import total_variation, tv_neighbours

LO, HI = torch.full((3,), -1.0), torch.full((3,), 1.0)


def unit(v):
    v = torch.as_tensor(v, dtype=torch.float32)
    return v / v.norm(dim=-1, keepdim=True)


# ---- ray-box and marching ----------------------------------------------------------------------
def test_ray_aabb_axis_aligned_oblique_and_miss():
    origins = torch.tensor([[0.0, 0.0, -3.0], [-3.0, -3.0, -3.0], [0.0, 2.0, -3.0], [0.5, 0.5, 0.0]])
    dirs = unit([[0, 0, 1], [1, 1, 1], [0, 0, 1], [1, 0, 0]])
    t0, t1, hit = ray_aabb(origins, dirs, LO, HI)
    assert hit.tolist() == [True, True, False, True]
    torch.testing.assert_close(t0[[0, 1]], torch.tensor([2.0, 2 * math.sqrt(3)]))
    torch.testing.assert_close(t1[[0, 1]], torch.tensor([4.0, 4 * math.sqrt(3)]))
    assert t0[3] == 0 and t1[3] == pytest.approx(0.5)  # starts inside: clipped at near = 0


def test_ray_aabb_clips_to_near_far():
    t0, t1, hit = ray_aabb(torch.tensor([[0.0, 0.0, -3.0]]), unit([[0, 0, 1]]), LO, HI, near=2.5, far=3.5)
    assert (t0.item(), t1.item(), hit.item()) == (2.5, 3.5, True)
    _, _, hit = ray_aabb(torch.tensor([[0.0, 0.0, -3.0]]), unit([[0, 0, 1]]), LO, HI, near=0, far=1.5)
    assert not hit.item()


def test_march_places_midpoint_samples_and_skips_empty_rays():
    ray, t = march(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([2.0, 0.0, 3.25]), step=0.25)
    assert ray.tolist() == [0, 0, 0, 0, 2]
    torch.testing.assert_close(t, torch.tensor([1.125, 1.375, 1.625, 1.875, 3.125]))


# ---- compositing -------------------------------------------------------------------------------
def _const_box_render(sigma, colour, bg, n_steps, length):
    """One ray through a slab of constant density, sampled by march + composite."""
    step = length / n_steps
    ray, t = march(torch.tensor([2.0]), torch.tensor([2.0 + length]), step)
    s = torch.full_like(t, sigma)
    rgb = torch.tensor(colour).expand(t.shape[0], 3)
    return composite(s, rgb, step, ray, 1, t=t, background=torch.tensor(bg))


@pytest.mark.parametrize("sigma", [0.3, 2.0, 10.0])
def test_constant_density_gives_analytic_opacity_and_colour(sigma):
    length, colour, bg = 1.5, (0.2, 0.6, 0.9), (1.0, 1.0, 1.0)
    out = _const_box_render(sigma, colour, bg, 64, length)
    opacity = 1 - math.exp(-sigma * length)
    assert out["acc"].item() == pytest.approx(opacity, abs=1e-5)
    expected = [opacity * c + (1 - opacity) * b for c, b in zip(colour, bg)]
    torch.testing.assert_close(out["rgb"][0], torch.tensor(expected), atol=1e-5, rtol=0)
    # expected depth of an exponential density starting at t=2, truncated at 2 + length
    a = sigma
    depth = (1 - math.exp(-a * length) * (1 + a * length)) / a + 2 * opacity
    assert out["depth"].item() == pytest.approx(depth, rel=2e-3)


def test_packed_rays_are_independent_and_empty_rays_show_background():
    sigma = torch.tensor([1.0, 2.0, 0.5, 3.0, 0.7])
    rgb = torch.rand(5, 3)
    ray = torch.tensor([0, 0, 2, 2, 2])  # ray 1 and ray 3 have no samples
    bg = torch.tensor([0.1, 0.2, 0.3])
    out = composite(sigma, rgb, 0.1, ray, 4, background=bg)
    for r in (1, 3):
        torch.testing.assert_close(out["rgb"][r], bg)
        assert out["acc"][r] == 0
    alone = composite(sigma[2:], rgb[2:], 0.1, torch.zeros(3, dtype=torch.long), 1, background=bg)
    torch.testing.assert_close(out["rgb"][2], alone["rgb"][0])


def test_transmittance_is_exclusive_per_ray():
    sd = torch.tensor([0.5, 1.0, 2.0, 0.25])
    ray = torch.tensor([0, 0, 1, 1])
    expected = torch.tensor([1.0, math.exp(-0.5), 1.0, math.exp(-2.0)])
    torch.testing.assert_close(transmittance(sd, ray, 2), expected)


def test_early_termination_keeps_a_prefix_and_changes_colour_by_less_than_threshold():
    torch.manual_seed(0)
    sigma = torch.rand(200) * 40
    rgb = torch.rand(200, 3)
    ray = torch.arange(4).repeat_interleave(50)
    keep = early_termination(sigma * 0.05, ray, 4, threshold=1e-3)
    full = composite(sigma, rgb, 0.05, ray, 4)
    cut = composite(sigma[keep], rgb[keep], 0.05, ray[keep], 4)
    assert keep.sum() < 200
    for r in range(4):  # kept samples are a prefix of each ray
        k = keep[ray == r]
        assert not torch.any(k[1:] & ~k[:-1])
    assert (full["rgb"] - cut["rgb"]).abs().max() < 1e-3


def test_composite_gradcheck_float64():
    torch.manual_seed(1)
    sigma = (torch.rand(7, dtype=torch.float64) * 3).requires_grad_()
    rgb = torch.rand(7, 3, dtype=torch.float64).requires_grad_()
    delta = torch.rand(7, dtype=torch.float64) * 0.5 + 0.1
    t = torch.cumsum(delta, 0)
    ray = torch.tensor([0, 0, 0, 2, 2, 3, 3])
    bg = torch.tensor([0.3, 0.5, 1.0], dtype=torch.float64)

    def f(s, c):
        out = composite(s, c, delta, ray, 4, t=t, background=bg)
        return out["rgb"], out["depth"], out["acc"]

    assert torch.autograd.gradcheck(f, (sigma, rgb))


# ---- trilinear interpolation -------------------------------------------------------------------
def test_trilinear_is_exact_at_voxel_centres():
    torch.manual_seed(2)
    grid = torch.randn(5, 6, 7, 4)
    idx = torch.cartesian_prod(torch.arange(5), torch.arange(6), torch.arange(7))
    out = sample_dense(grid, idx.float())
    torch.testing.assert_close(out, grid[idx[:, 0], idx[:, 1], idx[:, 2]])


def test_trilinear_is_linear_between_neighbouring_centres():
    torch.manual_seed(3)
    grid = torch.randn(4, 4, 4, 2)
    a, b = torch.tensor([1.0, 2.0, 1.0]), torch.tensor([2.0, 3.0, 2.0])  # opposite cell corners
    s = torch.linspace(0, 1, 11).unsqueeze(1)
    out = sample_dense(grid, a + s * (b - a))
    ga, gb = grid[1, 2, 1], grid[2, 3, 2]
    # along the diagonal the trilinear function is cubic in s; on an edge it is linear
    edge = sample_dense(grid, a + s * torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(edge, (1 - s) * ga + s * grid[2, 2, 1])
    torch.testing.assert_close(out[[0, -1]], torch.stack([ga, gb]))


def test_trilinear_reproduces_affine_functions_and_clamps_outside():
    res = (6, 5, 4)
    idx = torch.cartesian_prod(*[torch.arange(r, dtype=torch.float32) for r in res])
    coef = torch.tensor([0.5, -1.25, 2.0])
    grid = (idx @ coef + 0.75).view(*res, 1)
    torch.manual_seed(4)
    pts = torch.rand(100, 3) * (torch.tensor(res) - 1)
    torch.testing.assert_close(sample_dense(grid, pts)[:, 0], pts @ coef + 0.75)
    outside = torch.tensor([[-0.4, 2.0, 1.0], [7.0, 2.0, 1.0]])
    inside = torch.tensor([[0.0, 2.0, 1.0], [5.0, 2.0, 1.0]])
    torch.testing.assert_close(sample_dense(grid, outside), sample_dense(grid, inside))


def test_trilinear_weights_sum_to_one_and_index_is_flat():
    idx, w = trilinear_corners(torch.tensor([[0.25, 1.5, 2.75]]), (3, 4, 5))
    torch.testing.assert_close(w.sum(0), torch.ones(1))
    assert idx[0, 0].item() == (0 * 4 + 1) * 5 + 2 and idx[7, 0].item() == (1 * 4 + 2) * 5 + 3


def test_interpolate_gradcheck_float64():
    torch.manual_seed(5)
    feats = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 10, (8, 6))
    weight = torch.rand(8, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: interpolate(f, index, w), (feats, weight))
    grid = torch.randn(3, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    pts = torch.rand(9, 3, dtype=torch.float64) * 2
    assert torch.autograd.gradcheck(lambda g: sample_dense(g, pts), (grid,))


def test_kernel_impl_switch():
    # index-arithmetic helpers have only the reference; the hot ops also have fast impls
    with pytest.raises(ValueError, match="not provided for this op"):
        ray_aabb(torch.zeros(1, 3), torch.ones(1, 3), LO, HI, impl="triton")
    with pytest.raises(ValueError, match="not provided for this op"):
        interpolate(torch.zeros(2, 1), torch.zeros(8, 1, dtype=torch.long), torch.zeros(8, 1), impl="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            composite(torch.zeros(1), torch.zeros(1, 3), 0.1, torch.zeros(1, dtype=torch.long), 1, impl="cuda")
    with pytest.raises(ValueError, match="unknown impl"):
        ray_aabb(torch.zeros(1, 3), torch.ones(1, 3), LO, HI, impl="jax")
    # 'auto' on CPU tensors is the reference
    out = composite(torch.ones(2), torch.ones(2, 3), 0.1, torch.zeros(2, dtype=torch.long), 1, impl="auto")
    ref = composite(torch.ones(2), torch.ones(2, 3), 0.1, torch.zeros(2, dtype=torch.long), 1, impl="torch")
    assert torch.equal(out["rgb"], ref["rgb"])


# ---- total variation ---------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["l2", "squared"])
def test_tv_of_constant_grid_is_zero(norm):
    grid = torch.full((4 * 5 * 6, 3), 2.5)
    assert total_variation(grid, (4, 5, 6), norm=norm).item() == 0.0


def test_tv_of_known_grid_matches_hand_computation():
    # v(i, j, k) = i + 2 j + 4 k on a 2x2x2 grid: forward differences 1, 2, 4 where a +neighbour exists
    idx = torch.cartesian_prod(torch.arange(2), torch.arange(2), torch.arange(2)).float()
    values = (idx @ torch.tensor([1.0, 2.0, 4.0])).unsqueeze(1)
    l2 = (math.sqrt(21) + math.sqrt(20) + math.sqrt(17) + math.sqrt(5) + 4 + 2 + 1 + 0) / 8
    assert total_variation(values, 2, norm="l2").item() == pytest.approx(l2, rel=1e-6)
    assert total_variation(values, 2, norm="squared").item() == pytest.approx(84 / 8, rel=1e-6)


def test_tv_on_sparse_grid_and_voxel_subset():
    torch.manual_seed(6)
    res = (3, 4, 5)
    dense = torch.randn(60, 2)
    present = torch.rand(60) > 0.3
    links = torch.full((60,), -1, dtype=torch.int32)
    links[present] = torch.arange(int(present.sum()), dtype=torch.int32)
    sparse = dense[present]
    # absent neighbours contribute no difference: equal to a dense grid whose absent voxels copy
    # nothing; check one voxel by hand
    v = int(torch.nonzero(present)[0])
    row, nbs = tv_neighbours(res, links, torch.tensor([v]))
    expected = torch.zeros(2)
    for nb in nbs[:, 0]:
        if nb >= 0:
            expected += (sparse[nb] - sparse[row[0]]) ** 2
    got = total_variation(sparse, res, links, torch.tensor([v]), norm="squared")
    assert got.item() == pytest.approx(expected.mean().item(), rel=1e-6)
    # with every voxel present, sparse == dense
    full_links = torch.arange(60, dtype=torch.int32)
    torch.testing.assert_close(total_variation(dense, res, full_links), total_variation(dense, res))


def test_tv_gradcheck_float64():
    torch.manual_seed(7)
    values = torch.randn(2 * 3 * 2, 2, dtype=torch.float64, requires_grad=True)
    for norm in ("l2", "squared"):
        assert torch.autograd.gradcheck(lambda x, norm=norm: total_variation(x, (2, 3, 2), norm=norm), (values,))
