"""Block-NeRF depth supervision (baselines/block_nerf/depth.py, issue #28): zero at the truth, pulls a
tiny field's surface to the true depth, skips rays without a depth, sky rule, shard additivity, settings."""

import math

import pytest
import torch

from baselines.block_nerf.depth import DepthLoss, depth_error, depth_loss, expected_depth, kernel_masses
from baselines.block_nerf.sampling import composite
from harness.core.errors import ConfigError

KINDS = ("l1", "line_of_sight")


def linear_edges(m: int, s: int, near: float = 1.0, far: float = 9.0) -> torch.Tensor:
    return torch.linspace(near, far, s + 1).expand(m, s + 1).contiguous()


def truncated_gaussian(edges: torch.Tensor, z: float, eps: float) -> torch.Tensor:
    """Masses of N(z, (eps/3)^2) cut to [z - eps, z + eps] per interval, built apart from depth.py."""
    normal = torch.distributions.Normal(torch.tensor(z, dtype=torch.float64), eps / 3)
    cut = torch.tensor([z - eps, z + eps], dtype=torch.float64)
    cdf = normal.cdf(torch.maximum(torch.minimum(edges.double(), cut[1]), cut[0]))
    mass = normal.cdf(cut[1]) - normal.cdf(cut[0])
    return ((cdf[:, 1:] - cdf[:, :-1]) / mass).float()


def field_weights(params: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    return composite(torch.nn.functional.softplus(params), edges)[0]


def fit(params: torch.Tensor, edges: torch.Tensor, depth: torch.Tensor, settings: DepthLoss, steps: int) -> dict:
    """`steps` Adam steps (lr 0.2) of the densities `params` on the depth term alone; the last step's statistics."""
    opt = torch.optim.Adam([params], lr=0.2)
    for _ in range(steps):
        loss, stats = depth_loss(field_weights(params, edges), edges, depth, settings)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return stats


def test_zero_when_the_rendering_is_the_truth():
    edges = linear_edges(1, 64)
    mids = (edges[:, 1:] + edges[:, :-1]) / 2
    z = float(mids[0, 37])
    delta = torch.zeros(1, 64)
    delta[0, 37] = 1.0
    loss, stats = depth_loss(delta, edges, torch.tensor([z]), DepthLoss(kind="l1"))
    assert abs(float(loss)) < 1e-6 and stats["depth_l1"] < 1e-6 and stats["depth_rays"] == 1.0
    for z, eps in [(5.3, 0.5), (4.0, 1.0), (6.77, 0.3)]:  # kernel edges on and off the sample edges
        target = truncated_gaussian(edges, z, eps)
        assert torch.allclose(target, kernel_masses(edges, torch.tensor([z]), eps), atol=1e-6)
        loss, _ = depth_loss(target, edges, torch.tensor([z]), DepthLoss(kind="line_of_sight", epsilon=eps))
        assert abs(float(loss)) < 1e-6, (z, eps, float(loss))
        # a sharp surface at the right depth, or the kernel moved by eps, is not the target
        for other in (delta, truncated_gaussian(edges, z + eps, eps)):
            assert float(depth_loss(other, edges, torch.tensor([z]), DepthLoss(kind="line_of_sight",
                                                                               epsilon=eps))[0]) > 0.1


def test_line_of_sight_is_the_integral_of_urf():
    """With no weight at all the loss is int K_eps^2 dt of the truncated Gaussian (sigma = eps/3), the
    continuous value, whatever the (fine) sampling; weight before z - eps costs int w(t)^2 dt."""
    eps, sigma, z = 0.6, 0.2, 5.0
    norm = math.erf(3 / math.sqrt(2))
    exact = math.erf(3) / (2 * math.sqrt(math.pi) * sigma * norm ** 2)
    for s in (2000, 3001):
        loss, _ = depth_loss(torch.zeros(1, s), linear_edges(1, s), torch.tensor([z]),
                             DepthLoss(kind="line_of_sight", epsilon=eps))
        assert float(loss) == pytest.approx(exact, rel=2e-3)
    edges = torch.tensor([[1.0, 2.0, 4.0, 4.2, 4.4]])  # z - eps = 4.4: all before it
    w = torch.tensor([[0.1, 0.2, 0.3, 0.0]])
    loss, _ = depth_loss(w, edges, torch.tensor([z]), DepthLoss(kind="line_of_sight", epsilon=eps))
    assert float(loss) == pytest.approx(0.1 ** 2 / 1.0 + 0.2 ** 2 / 2.0 + 0.3 ** 2 / 0.2, rel=1e-5)


@pytest.mark.parametrize("kind, concentrated", [("l1", 0.6), ("line_of_sight", 0.85)])
def test_a_tiny_field_learns_the_surface_from_depth_alone(kind, concentrated):
    """One ray, 64 intervals, learnable densities: Adam on the depth term alone brings the expected
    depth to the surface and the weight mass into [z - eps, z + eps] (the L1 only fixes the mean, so
    it concentrates less than the line-of-sight kernel)."""
    settings, edges, z = DepthLoss(kind=kind), linear_edges(1, 64), 5.3
    mids = (edges[:, 1:] + edges[:, :-1]) / 2
    window = (mids - z).abs() <= settings.epsilon
    params = torch.full((1, 64), -2.0, requires_grad=True)
    with torch.no_grad():
        before = float(field_weights(params, edges)[window].sum())
    fit(params, edges, torch.tensor([z]), settings, 80)
    with torch.no_grad():
        w = field_weights(params, edges)
    assert abs(float(expected_depth(w, edges)[0]) - z) < settings.epsilon
    assert before < 0.1 and float(w[window].sum()) > concentrated, (before, float(w[window].sum()))


def test_rays_without_a_depth_contribute_nothing_and_sky_rays_follow_the_rule():
    depth = torch.tensor([4.0, float("nan"), 0.0, -2.0, float("inf"), float("-inf")])
    edges = linear_edges(6, 32)
    for kind in KINDS:
        for sky in ("free_space", "far", "skip"):
            params = torch.zeros(6, 32, requires_grad=True)
            loss, stats = depth_loss(field_weights(params, edges), edges, depth, DepthLoss(kind=kind, sky=sky))
            loss.backward()
            grad = params.grad
            assert grad is not None
            assert torch.isfinite(loss) and torch.isfinite(grad).all()
            assert (grad[[1, 2, 3, 5]] == 0).all() and grad[0].abs().sum() > 0
            assert (grad[4].abs().sum() > 0) == (sky != "skip"), (kind, sky)
            with torch.no_grad():
                alone, _ = depth_loss(field_weights(params[:1], edges[:1]), edges[:1], depth[:1], DepthLoss(kind=kind))
                far = torch.tensor([float(edges[4, -1])])  # 'far': the sky ray as a surface at its far end
                sky_part = {"free_space": float(field_weights(params[4:5], edges[:1]).sum()), "skip": 0.0,
                            "far": float(depth_loss(field_weights(params[4:5], edges[4:5]), edges[4:5], far,
                                                    DepthLoss(kind=kind))[0])}[sky]
            assert float(loss.detach()) == pytest.approx((float(alone) + sky_part) / 6, rel=1e-5)  # a mean over all 6
            assert stats["depth_rays"] == pytest.approx(1 / 6) and stats["depth_sky"] == pytest.approx(1 / 6)
            assert all(math.isfinite(v) for v in stats.values())


def test_free_space_pushes_a_sky_rays_opacity_down():
    edges, depth = linear_edges(1, 32), torch.tensor([float("inf")])
    params = torch.zeros(1, 32, requires_grad=True)
    with torch.no_grad():
        start = float(field_weights(params, edges).sum())
    stats = fit(params, edges, depth, DepthLoss(sky="free_space"), 30)
    with torch.no_grad():
        assert start > 0.9 and float(field_weights(params, edges).sum()) < 0.1
    assert stats == {"depth_l1": 0.0, "depth_rays": 0.0, "depth_sky": 1.0}  # no finite depth: finite stats


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sky", ["free_space", "far", "skip"])
def test_shards_weighted_by_their_share_sum_to_the_whole_batch(kind, sky):
    gen = torch.Generator().manual_seed(0)
    m, s = 7, 24
    edges = torch.sort(1 + 8 * torch.rand(m, s + 1, generator=gen), -1).values
    weights = torch.rand(m, s, generator=gen) / s
    depth = torch.tensor([3.0, float("inf"), 5.5, float("nan"), 7.2, 0.0, 2.1])
    settings = DepthLoss(kind=kind, sky=sky)
    whole, _ = depth_loss(weights, edges, depth, settings)
    parts = [slice(0, 3), slice(3, 7)]
    summed = sum(depth_loss(weights[p], edges[p], depth[p], settings)[0] * (p.stop - p.start) / m for p in parts)
    assert float(summed) == pytest.approx(float(whole), rel=1e-6, abs=1e-7)


def test_depth_error_over_finite_depths_only():
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    depth = torch.tensor([1.5, float("nan"), 2.0, float("inf"), -1.0])
    assert depth_error(expected, depth) == pytest.approx(0.75)
    assert math.isnan(depth_error(expected[:2], torch.tensor([float("inf"), float("nan")])))
    with pytest.raises(ValueError, match="differ in shape"):
        depth_error(expected, depth[:3])
    with pytest.raises(ValueError, match="need edges"):
        depth_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2), DepthLoss())


def test_defaults():
    d = DepthLoss()
    assert (d.weight, d.kind, d.epsilon, d.sky, d.unit) == (0.1, "l1", 0.5, "far", None)
    assert DepthLoss.positive_settings == ("epsilon",)


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "l2"}, "DepthLoss.kind = 'l2': expected one of ('l1', 'line_of_sight')"),
    ({"weight": -0.1}, "DepthLoss.weight = -0.1: expected a number >= 0"),
    ({"weight": float("nan")}, "DepthLoss.weight = nan: expected a number >= 0"),
    ({"epsilon": 0.0}, "DepthLoss.epsilon = 0.0: expected a positive number"),
    ({"epsilon": -1}, "DepthLoss.epsilon = -1: expected a positive number"),
    ({"sky": "ignore"}, "DepthLoss.sky = 'ignore': expected one of ('far', 'free_space', 'skip')"),
    ({"unit": 0}, "DepthLoss.unit = 0: expected a positive number"),
])
def test_bad_settings_are_one_config_error_line(kwargs, message):
    with pytest.raises(ConfigError) as info:
        DepthLoss(**kwargs)
    assert str(info.value) == message


def test_far_sky_pulls_a_sky_rays_weight_to_its_far_end():
    edges, depth = linear_edges(1, 32), torch.tensor([float("inf")])
    params = torch.zeros(1, 32, requires_grad=True)
    fit(params, edges, depth, DepthLoss(sky="far"), 60)
    with torch.no_grad():
        w = field_weights(params, edges)
        assert float(expected_depth(w, edges)[0]) > 0.9 * float(edges[0, -1])


@pytest.mark.parametrize("kind", KINDS)
def test_the_loss_is_the_same_in_any_unit_of_length(kind):
    """Depths in metres with unit u give the loss of the same scene measured in units of u."""
    edges = linear_edges(3, 32) * 7.0
    depth = torch.tensor([9.0, 20.0, float("inf")])
    weights = field_weights(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), edges)
    settings = DepthLoss(kind=kind, epsilon=2.1)
    metres, stats = depth_loss(weights, edges, depth, settings, unit=7.0)
    units, _ = depth_loss(weights, edges / 7.0, depth / 7.0, DepthLoss(kind=kind, epsilon=0.3))
    assert float(metres) == pytest.approx(float(units), rel=1e-5)
    assert stats["depth_l1"] > 1.0  # the statistic stays in metres
