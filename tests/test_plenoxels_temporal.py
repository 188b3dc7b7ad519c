"""Temporal consistency losses (baselines/plenoxels_temporal/losses.py): feature change between steps on tiny
grids known by hand, the bilinear back-warp against known shifts, flow from depth against an independent
projection, and one ConfigError line per bad setting."""

import math

import numpy as np
import pytest
import torch

from baselines.plenoxels_temporal.losses import (
    FeatureTemporal,
    FlowConsistency,
    feature_temporal,
    flow_consistency,
    flow_from_depth,
    warp_back,
)
from harness.core.data.loader_kit import cameras_from_arrays
from harness.core.data.rays import image_rays
from harness.core.errors import ConfigError


def _features(seed: int, n: int = 5, c: int = 27):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, generator=g, dtype=torch.float64), torch.randn(n, c, generator=g, dtype=torch.float64)


# ---- feature temporal -------------------------------------------------------------------------
def test_feature_temporal_is_zero_for_identical_grids():
    d, s = _features(0)
    occ = torch.tensor([True, False, True, True, False])
    assert float(feature_temporal(d, s, d.clone(), s.clone(), occ, occ)) == 0.0
    assert FeatureTemporal()(d, s, d, s, occ, occ)["feature_temporal"].item() == 0.0


def test_feature_temporal_matches_a_hand_computation():
    # 4 cells, 2 SH channels; cell 3 is empty at both steps, so its (large) change is free
    da, db = torch.tensor([[1.0], [0.0], [2.0], [0.0]]), torch.tensor([[0.0], [3.0], [2.0], [9.0]])
    sa = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    sb = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 3.0], [5.0, 5.0]])
    occ_a, occ_b = torch.tensor([True, False, True, False]), torch.tensor([False, True, False, False])
    # S = {0, 1, 2}: density squares 1 + 9 + 0 over 3; SH squares 0 + 4 + 4 over 3 * 2
    assert float(feature_temporal(da, sa, db, sb, occ_a, occ_b)) == pytest.approx(10 / 3 + 8 / 6)
    assert float(feature_temporal(da, sa, db, sb, occ_a, occ_b, density_weight=2.0, sh_weight=0.5)) == \
        pytest.approx(2 * 10 / 3 + 0.5 * 8 / 6)
    out = FeatureTemporal(weight=0.1)(da, sa, db, sb, occ_a, occ_b)
    assert float(out["feature_temporal"]) == pytest.approx(0.1 * (10 / 3 + 8 / 6))


def test_feature_temporal_gradient_is_two_differences_over_n():
    da, sa = _features(1)
    db, sb = _features(2)
    db.requires_grad_(True)
    sb.requires_grad_(True)
    occ_a = torch.tensor([True, False, False, True, False])
    occ_b = torch.tensor([False, False, True, True, False])
    feature_temporal(da, sa, db, sb, occ_a, occ_b, density_weight=3.0).backward()
    rows, n = (occ_a | occ_b)[:, None], 3
    want_d = torch.where(rows, 3.0 * 2 * (db - da) / n, 0.0)
    want_s = torch.where(rows, 2 * (sb - sa) / (n * 27), 0.0)
    torch.testing.assert_close(db.grad, want_d.detach())
    torch.testing.assert_close(sb.grad, want_s.detach())


def test_feature_temporal_with_nothing_occupied_is_a_differentiable_zero():
    d, s = _features(3)
    d.requires_grad_(True)
    none = torch.zeros(5, dtype=torch.bool)
    value = feature_temporal(d, s, d + 1, s, none, none)
    value.backward()
    assert value.item() == 0.0 and d.grad.abs().sum().item() == 0.0


def test_feature_temporal_rejects_misaligned_rows():
    d, s = _features(4)
    occ = torch.ones(5, dtype=torch.bool)
    with pytest.raises(ValueError, match="feature_temporal: need"):
        feature_temporal(d, s, d[:4], s[:4], occ, occ)


# ---- warp and flow consistency ----------------------------------------------------------------
def _ramp(h: int, w: int) -> torch.Tensor:
    """An image linear in (x, y) per channel, so bilinear interpolation of it is exact."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([x, y, 0.5 * x - 2 * y + 3], dim=-1)


def _constant_flow(h: int, w: int, du: float, dv: float) -> torch.Tensor:
    return torch.tensor([du, dv], dtype=torch.float64).expand(h, w, 2).clone()


def test_warp_moves_an_image_by_an_integer_shift_exactly():
    g = torch.Generator().manual_seed(0)
    h, w = 6, 7
    image = torch.rand(h, w, 3, generator=g, dtype=torch.float64)
    warped, valid = warp_back(image, _constant_flow(h, w, 2.0, -1.0))
    warped, valid = warped.view(h, w, 3), valid.view(h, w)
    # pixel (x, y) of frame t reads frame t+1 at (x + 2, y - 1): valid for x < w - 2, y >= 1
    want = torch.zeros(h, w, dtype=torch.bool)
    want[1:, : w - 2] = True
    assert torch.equal(valid, want)
    assert torch.equal(warped[1:, : w - 2], image[:-1, 2:])


def test_warp_of_a_linear_ramp_by_a_subpixel_shift_is_exact():
    h, w = 5, 8
    warped, valid = warp_back(_ramp(h, w), _constant_flow(h, w, 0.25, 1.5))
    # ramp(x + 0.25, y + 1.5): where valid (y + 1.5 <= h - 1, x + 0.25 <= w - 1) exactly that
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    want = torch.stack([x + 0.25, y + 1.5, 0.5 * (x + 0.25) - 2 * (y + 1.5) + 3], dim=-1)
    inside = (y + 1.5 <= h - 1) & (x + 0.25 <= w - 1)
    assert torch.equal(valid.view(h, w), inside)
    torch.testing.assert_close(warped.view(h, w, 3)[inside], want[inside], rtol=0, atol=1e-12)


def test_loss_is_zero_when_frame_t1_is_frame_t_moved_by_the_flow():
    h, w = 6, 6
    frame_t = _ramp(h, w)
    frame_t1 = _ramp(h, w) - torch.tensor([0.75, -0.5, 0.5 * 0.75 + 1.0], dtype=torch.float64)  # moved (0.75, -0.5)
    flow = _constant_flow(h, w, 0.75, -0.5)
    assert float(flow_consistency(frame_t, frame_t1, flow)) == pytest.approx(0.0, abs=1e-12)
    # and not for another flow
    assert float(flow_consistency(frame_t, frame_t1, _constant_flow(h, w, 0.0, 0.0))) > 0.1


def test_nan_flow_pixels_are_excluded():
    g = torch.Generator().manual_seed(1)
    h, w = 4, 5
    frame_t, frame_t1 = torch.rand(h, w, 3, generator=g), torch.rand(h, w, 3, generator=g)
    flow = torch.zeros(h, w, 2)
    flow[0, :] = torch.nan  # the top row's flow is unknown ...
    flow[1, 2, 0] = torch.nan  # ... and one pixel's u only
    frame_t[0] = 100.0  # ... so its huge error must not count
    frame_t[1, 2] = 100.0
    keep = torch.ones(h, w, dtype=torch.bool)
    keep[0], keep[1, 2] = False, False
    value = flow_consistency(frame_t, frame_t1, flow)
    assert torch.isfinite(value)
    assert float(value) == pytest.approx(float((frame_t[keep] - frame_t1[keep]).square().mean()))
    # every pixel NaN: a zero, not NaN
    assert float(flow_consistency(frame_t, frame_t1, torch.full((h, w, 2), torch.nan))) == 0.0


def test_gradients_reach_both_frames_and_stay_finite_with_nan_flow():
    g = torch.Generator().manual_seed(2)
    h, w = 5, 5
    frame_t = torch.rand(h, w, 3, generator=g, requires_grad=True)
    frame_t1 = torch.rand(h, w, 3, generator=g, requires_grad=True)
    flow = _constant_flow(h, w, 0.5, 0.25).float()
    flow[2, 2] = torch.nan
    out = FlowConsistency(weight=1.0)(frame_t, frame_t1, flow)
    out["flow_consistency"].backward()
    for grad in (frame_t.grad, frame_t1.grad):
        assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    assert float(frame_t.grad[2, 2].abs().sum()) == 0.0  # the NaN pixel gets nothing


def test_batch_of_pixels_matches_the_full_frame():
    g = torch.Generator().manual_seed(3)
    h, w = 4, 6
    frame_t, frame_t1 = torch.rand(h, w, 3, generator=g), torch.rand(h, w, 3, generator=g)
    flow = (torch.rand(h, w, 2, generator=g) - 0.5) * 2
    pixels = torch.arange(h * w)
    full = flow_consistency(frame_t, frame_t1, flow)
    assert float(flow_consistency(frame_t.reshape(-1, 3)[pixels], frame_t1, flow, pixels)) == pytest.approx(float(full))
    some = torch.tensor([3, 7, 20])
    _, valid = warp_back(frame_t1, flow, some)
    sub = flow_consistency(frame_t.reshape(-1, 3)[some], frame_t1, flow, some)
    warped = warp_back(frame_t1, flow)[0][some]
    want = (frame_t.reshape(-1, 3)[some][valid] - warped[valid]).square().mean()
    assert float(sub) == pytest.approx(float(want))


# ---- flow from depth --------------------------------------------------------------------------
def _look_at(centre, target) -> np.ndarray:
    """c2w (3, 4), OpenGL axes (-z looks at `target`, +y roughly up)."""
    centre, target = np.asarray(centre, float), np.asarray(target, float)
    back = centre - target
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    return np.column_stack([right, np.cross(back, right), back, centre])


def test_flow_from_depth_maps_points_to_their_projection_at_t1():
    h, w, fx, fy, cx, cy = 12, 16, 14.0, 15.0, 8.2, 5.9
    c2w_t, c2w_t1 = _look_at([3.0, 0.5, 1.0], [0, 0, 0]), _look_at([2.8, 0.9, 1.2], [0.1, 0, 0])
    depth = torch.from_numpy(np.random.default_rng(0).uniform(2.0, 4.0, (h, w)))
    flow = flow_from_depth(depth, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], c2w_t, c2w_t1)
    # independent check: the harness's rays of camera t, the points at `depth`, projected into camera t+1
    cams = cameras_from_arrays(np.stack([c2w_t, c2w_t1]), fx, fy, cx, cy, w, h)
    origins, dirs = (x.double().numpy() for x in image_rays(cams, 0))
    points = origins + dirs * depth.numpy().reshape(-1, 1)
    x, y, z = ((points - c2w_t1[:, 3]) @ c2w_t1[:, :3]).T
    q = np.stack([cx + fx * x / -z, cy - fy * y / -z], axis=-1)
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    pixel = np.stack([u, v], axis=-1).reshape(-1, 2)
    inside = (q[:, 0] >= 0) & (q[:, 0] <= w) & (q[:, 1] >= 0) & (q[:, 1] <= h)
    flow = flow.reshape(-1, 2).numpy()
    assert inside.mean() > 0.5 and np.isnan(flow[~inside]).all()
    np.testing.assert_allclose(pixel[inside] + flow[inside], q[inside], rtol=0, atol=1e-4)  # rays are float32


def test_flow_from_depth_by_hand_and_invalid_pixels():
    h, w, f = 3, 3, 2.0
    still = np.eye(4)
    depth = torch.full((h, w), 4.0, dtype=torch.float64)
    assert float(flow_from_depth(depth, (f, f, 1.5, 1.5), still, still).abs().max()) == 0.0
    # camera slides +0.5 along its x: the centre pixel's point (4 ahead) moves by -f * 0.5 / 4 in u
    moved = still.copy()
    moved[0, 3] = 0.5
    flow = flow_from_depth(depth, (f, f, 1.5, 1.5), still, moved)
    assert flow[1, 1].tolist() == pytest.approx([-0.25, 0.0])
    # NaN depth -> NaN; +inf depth (sky) does not move under translation; a point behind at t+1 -> NaN
    depth[0, 0], depth[2, 2] = math.nan, math.inf
    flow = flow_from_depth(depth, (f, f, 1.5, 1.5), still, moved)
    assert torch.isnan(flow[0, 0]).all() and flow[2, 2].tolist() == [0.0, 0.0]
    ahead = still.copy()
    ahead[2, 3] = -10.0  # the camera passes the points (the sky stays ahead)
    flow = flow_from_depth(depth, (f, f, 1.5, 1.5), still, ahead)
    assert torch.isnan(flow[torch.isfinite(depth)]).all() and flow[2, 2].tolist() == [0.0, 0.0]


def test_flow_consistency_source_depth_uses_flow_from_depth_of_the_detached_depth():
    depth = torch.full((3, 3), 4.0, requires_grad=True)
    moved = np.eye(4)
    moved[0, 3] = 0.5
    flow = FlowConsistency(source="depth").flow(depth=depth, K=(2.0, 2.0, 1.5, 1.5), c2w_t=np.eye(4), c2w_t1=moved)
    assert not flow.requires_grad and flow[1, 1].tolist() == pytest.approx([-0.25, 0.0])
    scene_flow = torch.zeros(3, 3, 2)
    assert FlowConsistency().flow(scene_flow=scene_flow) is scene_flow


# ---- settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("build, match", [
    (lambda: FeatureTemporal(weight=-1.0), "FeatureTemporal.weight"),
    (lambda: FeatureTemporal(sh_weight=math.nan), "FeatureTemporal.sh_weight"),
    (lambda: FlowConsistency(weight=-0.1), "FlowConsistency.weight"),
    (lambda: FlowConsistency(weight="high"), "FlowConsistency.weight"),
    (lambda: FlowConsistency(source="lidar"), "FlowConsistency.source"),
])
def test_bad_settings_are_one_config_error_line(build, match):
    with pytest.raises(ConfigError, match=match) as err:
        build()
    assert "\n" not in str(err.value)


def test_zero_weight_computes_nothing():
    d, s = _features(5)
    occ = torch.ones(5, dtype=torch.bool)
    assert FeatureTemporal(weight=0.0)(d, s, d + 1, s, occ, occ) == {}
    assert FlowConsistency(weight=0.0)(torch.zeros(2, 2, 3), torch.zeros(2, 2, 3), torch.zeros(2, 2, 2)) == {}
