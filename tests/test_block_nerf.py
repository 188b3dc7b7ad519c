"""Block-NeRF units: IPE, partition, IDW, visibility, conditioning, pose refinement, appearance
matching, the left/right protocol, and how the ablation expands (docs/block_nerf.md)."""

import math

import gin
import numpy as np
import pytest
import torch

from baselines.block_nerf import protocol as proto
from baselines.block_nerf.compose import compose_view, idw_weights, match_code
from baselines.block_nerf.encoding import frustum_gaussian, integrated_pos_enc
from baselines.block_nerf.method import BlockNeRF
from baselines.block_nerf.model import VisibilityMLP
from baselines.block_nerf.partition import BlockPartition, overlap_fraction
from baselines.block_nerf.parts import Appearance, MipField, Optimization, PoseNoise, PoseRefinement, Visibility
from baselines.block_nerf.pose import (
    PoseOffsets,
    perturb_poses,
    pose_errors,
    pose_errors_aligned,
    remove_gauge,
    rigid_gauge,
)
from baselines.block_nerf.sampling import coarse_edges, composite
from baselines.block_nerf.seam import in_regions, paired_seam, seam_summary
from harness.core.errors import ConfigError
from tests.test_block_nerf_toy import toy_scene


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _no_gin_bindings():
    """BlockNeRF is Gin-configurable: bindings left by a test that parses an experiment (e.g. the
    ablation's pose_groups) must not reach the models the next test builds."""
    gin.clear_config()
    yield
    gin.clear_config()


PARTS = {"field": MipField, "appearance": Appearance, "visibility": Visibility, "pose_refinement": PoseRefinement,
         "pose_noise": PoseNoise, "optimization": Optimization}
SMALL = {"field": dict(n_coarse=8, n_fine=8, width=32, colour_width=16, pos_freqs=6, spacing="linear", near=0.5,
                       far=8.0),
         "appearance": dict(dim=4), "visibility": dict(width=16), "pose_refinement": {}, "optimization": {}}


def small(scene, **kw):
    """A small BlockNeRF with visibility and pose refinement and no pose noise. A part's keyword is a
    dict of settings over the small ones (`field={"width": 48}`), a part, or None (not used)."""
    args: dict = dict(batch_size=128, render_chunk=4096)
    for name, cls in PARTS.items():
        value = kw.pop(name, {})
        if isinstance(value, dict):
            value = cls(**{**SMALL.get(name, {}), **value}) if name in SMALL or value else None
        args[name] = value
    return BlockNeRF(scene, 0, **{**args, **kw})


# ---- integrated positional encoding ---------------------------------------------------------------
def _frustum_samples(o, d, t0, t1, r, n, gen):
    """Points uniform in the volume of the cone frustum (density ~ t^2 along the axis, uniform in the disc)."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    t = (t0 ** 3 + u * (t1 ** 3 - t0 ** 3)) ** (1 / 3)
    rho = r * t * torch.sqrt(torch.rand(n, generator=gen, dtype=torch.float64))
    th = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    a = torch.linalg.cross(d, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    a = a / a.norm()
    b = torch.linalg.cross(d, a)
    return o + t[:, None] * d + rho[:, None] * (torch.cos(th)[:, None] * a + torch.sin(th)[:, None] * b)


def _encode(points, n_freqs):
    scales = 2.0 ** torch.arange(n_freqs, dtype=points.dtype)
    y = (points[:, None, :] * scales[:, None]).flatten(1)
    return torch.cat([torch.sin(y), torch.cos(y)], -1)


@pytest.mark.parametrize("t0,t1,r", [(1.0, 2.0, 0.3), (3.0, 3.2, 0.02)])
def test_ipe_matches_monte_carlo_over_the_frustum(t0, t1, r):
    gen = torch.Generator().manual_seed(0)
    o = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    d = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
    mean, cov = frustum_gaussian(o[None], d[None], torch.tensor([[t0, t1]], dtype=torch.float64), r)
    pts = _frustum_samples(o, d, t0, t1, r, 400_000, gen)
    # the Gaussian has the frustum's exact mean and (diagonal) variance
    assert torch.allclose(mean[0, 0], pts.mean(0), atol=3e-3)
    assert torch.allclose(cov[0, 0], pts.var(0), rtol=0.02, atol=1e-6)
    n_freqs = 6
    ipe = integrated_pos_enc(mean, cov, n_freqs)[0, 0]
    # IPE is exactly the expected encoding under that Gaussian ...
    gauss = mean[0, 0] + torch.randn(400_000, 3, generator=gen, dtype=torch.float64) * cov[0, 0].sqrt()
    assert (ipe - _encode(gauss, n_freqs).mean(0)).abs().max() < 0.01
    # ... and matches the expected encoding over the frustum itself wherever the Gaussian approximation
    # holds (frequencies 2^l with 2^l * sigma <= 0.5; the frustum is not Gaussian at finer scales,
    # where both encodings are damped towards 0)
    mc = _encode(pts, n_freqs).mean(0)
    err = (ipe - mc).abs().reshape(2, n_freqs, 3).amax(dim=(0, 2))
    coarse = 2.0 ** torch.arange(n_freqs) * cov[0, 0].max().sqrt() <= 0.5
    assert coarse.sum() >= 1 and err[coarse].max() < 0.01, err
    assert err.max() < 0.15, err
    # a wrong variance (e.g. no cone radius) would not match
    assert (integrated_pos_enc(mean, cov * 0.25, n_freqs)[0, 0] - mc).abs().max() > 0.05


# ---- partition ----------------------------------------------------------------------------------
def _line_poses(xs, y=0.0):
    c2w = np.zeros((len(xs), 3, 4))
    c2w[:, :, :3] = np.eye(3)
    c2w[:, 0, 3] = xs
    c2w[:, 1, 3] = y
    return c2w


def test_block_assignment_on_a_hand_made_trajectory():
    xs = np.arange(0.0, 101.0)
    c2w = _line_poses(xs)
    part = BlockPartition(n_blocks=4, reach=0.75)
    blocks = part.blocks(c2w[:, :, 3])
    centres = sorted(b.center[0] for b in blocks)
    assert np.allclose(centres, [12.5, 37.5, 62.5, 87.5], atol=1e-6)
    assert all(abs(b.radius - 0.75 * 25) < 1e-6 for b in blocks)
    members = part.assign(blocks, c2w)
    assert set(np.concatenate(members)) == set(range(len(xs)))  # every image in a block
    order = np.argsort([b.center[0] for b in blocks])
    for a, b in zip(order[:-1], order[1:]):
        assert overlap_fraction(blocks[a], blocks[b]) == pytest.approx(0.5)  # 75% reach -> 50% overlap
        shared = np.intersect1d(members[a], members[b])
        assert len(shared) == pytest.approx(0.5 * 25, abs=1.5)  # half the spacing's cameras are in both
    # a camera off the trajectory, outside every block, goes to the nearest block only with cover_all
    c2w_out = np.concatenate([c2w, _line_poses([50.0], y=40.0)])
    assert len(c2w_out) - 1 in np.concatenate(part.assign(blocks, c2w_out))
    assert len(c2w_out) - 1 not in np.concatenate(part.assign(blocks, c2w_out, cover=False))
    # the overlap follows `reach`
    wide = BlockPartition(n_blocks=4, reach=1.0).blocks(c2w[:, :, 3])
    assert overlap_fraction(wide[0], wide[1]) == pytest.approx(1.0)



def test_shifted_partition_centres_blocks_where_the_unshifted_ones_meet():
    """shift = 0.5 moves every centre half a spacing along the trajectory (radii unchanged), so the
    overlaps of one partition are the interiors of the other (the paired seam check)."""
    c2w = _line_poses(np.arange(0.0, 101.0))
    base = BlockPartition(n_blocks=4, reach=0.75).blocks(c2w[:, :, 3])
    shifted = BlockPartition(n_blocks=4, reach=0.75, shift=0.5).blocks(c2w[:, :, 3])
    assert np.allclose(sorted(b.center[0] for b in shifted), [25.0, 50.0, 75.0, 100.0], atol=1e-6)
    assert [b.radius for b in shifted] == pytest.approx([b.radius for b in base])
    for x, regions_base, regions_shifted in ((25.0, 2, 1), (37.5, 1, 2), (50.0, 2, 1)):
        pos = np.array([x, 0.0, 0.0])
        assert (in_regions(pos, base), in_regions(pos, shifted)) == (regions_base, regions_shifted)
    with pytest.raises(ConfigError, match="shift"):
        BlockPartition(shift=1.0)


def test_seam_summary_compares_overlap_with_interior_views():
    s = seam_summary([20.0, 22.0, 18.0, 19.0, 30.0], [1, 1, 2, 3, 0])  # 0: outside every block, in neither set
    assert (s["n_overlap"], s["n_interior"]) == (2, 2)
    assert s["psnr_overlap"] == pytest.approx(18.5) and s["psnr_interior"] == pytest.approx(21.0)
    assert s["gap"] == pytest.approx(2.5) and s["psnr"] == pytest.approx(21.8)
    alone = seam_summary([20.0, 21.0], [1, 1])
    assert alone["psnr_overlap"] is None and alone["gap"] is None and alone["psnr_interior"] == pytest.approx(20.5)
    with pytest.raises(ValueError, match="2 PSNRs but 3"):
        seam_summary([1.0, 2.0], [1, 1, 2])

def test_scene_blocks_and_look_ahead():
    c2w = _line_poses(np.arange(0.0, 41.0))
    given = [{"center": [10.0, 0, 0], "radius": 6.0}, {"center": [30.0, 0, 0], "radius": 6.0}]
    blocks = BlockPartition(source="scene", reach=None).blocks(c2w[:, :, 3], given)
    assert [b.radius for b in blocks] == [6.0, 6.0]
    near_only = BlockPartition(source="scene", reach=None, cover_all=False).assign(blocks, c2w)
    assert list(near_only[0]) == list(range(4, 17))
    # cameras look down -z (identity rotation): looking 5 ahead adds no x reach, so nothing changes
    ahead = BlockPartition(source="scene", reach=None, cover_all=False, look_distance=5.0).assign(blocks, c2w)
    assert list(ahead[0]) == list(range(4, 17))
    with pytest.raises(Exception, match="no 'blocks'"):
        BlockPartition(source="scene").blocks(c2w[:, :, 3], None)


# ---- inverse distance weighting ----------------------------------------------------------------
def test_idw_weights_sum_to_one_and_reduce_to_a_single_block():
    rng = np.random.default_rng(0)
    for p in (1, 2, 4):
        d = rng.uniform(0.5, 30, size=5)
        w = idw_weights(d, p)
        assert w.sum() == pytest.approx(1.0)
        assert np.all(np.diff(w[np.argsort(d)]) <= 0)  # nearer blocks weigh more
        assert w == pytest.approx(d ** -p / (d ** -p).sum())
    assert idw_weights([7.0], 4) == pytest.approx([1.0])
    assert idw_weights([0.0, 5.0], 4)[0] > 0.999  # a camera at a block centre


def test_composed_view_with_one_block_is_that_blocks_render():
    scene = toy_scene()
    m = small(scene, block=0, partition=BlockPartition(n_blocks=2))
    m2 = small(scene, block=1, partition=BlockPartition(n_blocks=2))
    test = scene.split("test")
    i = 0  # at x = 0: inside block 0 only
    opts = {"power": 4.0, "select_radius": 1.0, "visibility_threshold": 0.0, "max_blocks": 0}
    img, info = compose_view({0: m, 1: m2}, test, i, opts, None)
    assert info["blocks"] == [0] and info["weights"] == [1.0]
    m.view = {"code": m.codes.detach()[int(test.appearance_id[i])], "exposure": float(test.exposure[i])}
    from harness.core.data.rays import image_rays

    ref = m.render(*image_rays(test.cameras, i))["rgb"].reshape(img.shape).numpy()
    assert np.allclose(img, ref, atol=1e-6)
    # a camera in the overlap blends both, with weights from its distances
    mid = int(np.argmin(np.abs(test.cameras.c2w[:, 0, 3] - 6.0)))
    _, info = compose_view({0: m, 1: m2}, test, mid, opts, None)
    assert sorted(info["blocks"]) == [0, 1] and sum(info["weights"]) == pytest.approx(1.0, abs=1e-3)


# ---- visibility ---------------------------------------------------------------------------------
def test_visibility_trained_against_transmittance_converges():
    """A slab of density (|y - 2| < 0.5) seen from the origin: the visibility MLP learns its transmittance."""
    gen = torch.Generator().manual_seed(0)
    net = VisibilityMLP(pos_freqs=4, dir_freqs=2, depth=2, width=32)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)

    def batch(n):
        d = torch.randn(n, 3, generator=gen)
        d[:, 1] = d[:, 1].abs() + 0.5
        d = d / d.norm(dim=-1, keepdim=True)
        o = torch.zeros(n, 3)
        edges = coarse_edges(n, 16, 0.1, 4.0, "linear", gen)
        mean, var = frustum_gaussian(o, d, edges, 0.01)
        density = ((mean[..., 1] - 2.0).abs() < 0.5).float() * 5.0
        _, trans = composite(density, edges)
        return mean / 4, var / 16, d, trans

    first = None
    for _ in range(300):
        mean, var, d, trans = batch(256)
        loss = ((net(mean, var, d) - trans) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    mean, var, d, trans = batch(1024)
    with torch.no_grad():
        mae = (net(mean, var, d) - trans).abs().mean().item()
    assert mae < 0.06 and loss.item() < 0.2 * first


# ---- conditioning ---------------------------------------------------------------------------------
def test_appearance_and_exposure_change_colour_not_density():
    m = small(toy_scene(), appearance={"dim": 8})
    torch.manual_seed(0)
    o, d = torch.zeros(64, 3), torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    a = m.render_rays(o, d, torch.randn(8), 1.0)
    b = m.render_rays(o, d, torch.randn(8), 2.0)
    assert torch.equal(a["coarse"]["density"], b["coarse"]["density"])
    assert torch.equal(a["fine"]["edges"], b["fine"]["edges"])  # same weights -> same fine samples
    assert (a["fine"]["rgb"] - b["fine"]["rgb"]).abs().max() > 1e-3


def test_exposure_input_changes_radiance_monotonically_after_training():
    scene = toy_scene(n=32, seed=1)
    m = small(scene, appearance={"mode": "none"}, pose_refinement=None, visibility=None, batch_size=256,
              optimization={"lr_mlp": 1e-2}, partition=BlockPartition(n_blocks=1))
    from harness.core.data.rays import RaySampler, image_rays

    tr = m.trial_scene.split("train")
    sampler = RaySampler(tr.images, tr.cameras, 0)
    for step in range(250):
        m.train_step(step, sampler.sample(step, m.batch_size))
    o, d = image_rays(tr.cameras, 0)
    means = []
    for e in (0.5, 0.7, 1.0, 1.4, 2.0):
        m.view = {"code": None, "exposure": e}
        means.append(float(m.render(o, d)["rgb"].mean()))
    assert all(b > a for a, b in zip(means[:-1], means[1:])), means
    assert means[-1] - means[0] > 0.1, means


# ---- pose refinement --------------------------------------------------------------------------------
def _sphere_colour(o, d, radius=3.0):
    b = (o * d).sum(-1)
    t = -b + torch.sqrt(b ** 2 - ((o ** 2).sum(-1) - radius ** 2))
    p = o + t[:, None] * d
    return 0.5 + 0.4 * torch.stack([torch.sin(2 * p[:, 0] + p[:, 2]), torch.sin(1.7 * p[:, 1] - 0.6 * p[:, 0]),
                                    torch.cos(1.3 * p[:, 2] + 0.8 * p[:, 1])], -1)


def test_pose_refinement_recovers_a_known_perturbation():
    """Cameras inside a textured sphere (parallax separates rotation from translation); the offsets are
    fitted to the true images through the rays of the perturbed poses."""
    n = 4
    true = np.zeros((n, 3, 4))
    true[:, :, :3] = np.eye(3)
    true[:, :, 3] = np.random.default_rng(0).uniform(-0.5, 0.5, (n, 3))
    noisy = perturb_poses(true, 2.0, 0.1, seed=3)
    before = pose_errors(noisy, true)
    assert before["rotation_deg"] == pytest.approx(2.0) and before["translation"] == pytest.approx(0.1)
    gen = torch.Generator().manual_seed(0)
    pose = PoseOffsets(n, reg_initial=0.0, reg_final=0.0)
    opt = torch.optim.Adam(pose.parameters(), lr=3e-3)
    for _ in range(400):
        idx = torch.randint(0, n, (512,), generator=gen)
        cam = torch.nn.functional.normalize(torch.cat([torch.rand(512, 2, generator=gen) * 1.6 - 0.8,
                                                       -torch.ones(512, 1)], -1), dim=-1).double()
        rot_t, rot_n = torch.from_numpy(true[:, :, :3])[idx], torch.from_numpy(noisy[:, :, :3])[idx]
        target = _sphere_colour(torch.from_numpy(true[:, :, 3])[idx], (rot_t @ cam[..., None])[..., 0])
        o, d = pose.apply(torch.from_numpy(noisy[:, :, 3])[idx].float(), (rot_n @ cam[..., None])[..., 0].float(),
                          idx)
        loss = ((_sphere_colour(o.double(), d.double()) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = pose_errors(pose.refined_c2w(noisy), true)
    assert after["rotation_deg"] < 0.5 * before["rotation_deg"], after
    assert after["translation"] < 0.5 * before["translation"], after


def test_sequence_noise_is_one_draw_per_group_and_offsets_follow_groups():
    true = np.zeros((6, 3, 4))
    true[:, :, :3] = np.eye(3)
    true[:, :, 3] = np.arange(18.0).reshape(6, 3)
    group = np.array([0, 0, 1, 1, 1, 0])
    noisy = perturb_poses(true, 1.0, 0.2, seed=5, group=group)
    moved = noisy[:, :, 3] - true[:, :, 3]
    np.testing.assert_allclose(moved[0], moved[1])
    np.testing.assert_allclose(moved[2], moved[4])
    assert not np.allclose(moved[0], moved[2])
    np.testing.assert_allclose(noisy[5, :, :3], noisy[0, :, :3])
    assert pose_errors(noisy, true) == pytest.approx({"rotation_deg": 1.0, "translation": 0.2})
    pose = PoseOffsets(2)
    with torch.no_grad():
        pose.translation[1] = torch.tensor([1.0, 2.0, 3.0])
    refined = pose.refined_c2w(true, group)
    np.testing.assert_allclose(refined[group == 1, :, 3] - true[group == 1, :, 3], [[1.0, 2.0, 3.0]] * 3)
    np.testing.assert_allclose(refined[group == 0], true[group == 0])


def test_aligned_pose_errors_remove_a_rigid_motion_of_all_cameras_only():
    rng = np.random.default_rng(0)
    true = perturb_poses(np.concatenate([np.eye(3)[None].repeat(8, 0), rng.uniform(-5, 5, (8, 3, 1))], 2),
                         30.0, 0.0, seed=1)  # varied orientations
    world = np.concatenate([perturb_poses(np.eye(3, 4)[None], 3.0, 0.0, seed=2)[0, :, :3],
                            np.array([[1.0], [-2.0], [0.5]])], 1)
    moved = np.empty_like(true)
    moved[:, :, :3] = world[:, :3] @ true[:, :, :3]
    moved[:, :, 3] = true[:, :, 3] @ world[:, :3].T + world[:, 3]
    np.testing.assert_allclose(rigid_gauge(moved, true), world, atol=1e-12)
    np.testing.assert_allclose(remove_gauge(moved, world), true, atol=1e-12)
    assert pose_errors(moved, true)["rotation_deg"] == pytest.approx(3.0)
    # arccos near 1
    assert pose_errors_aligned(moved, true) == pytest.approx({"rotation_deg": 0.0, "translation": 0.0}, abs=1e-4)
    noisy = perturb_poses(true, 1.0, 0.1, seed=4)  # independent per-camera noise is not a rigid motion
    assert pose_errors_aligned(noisy, true)["rotation_deg"] > 0.7


def test_pose_regulariser_is_strong_early():
    pose = PoseOffsets(3, reg_initial=10.0, reg_final=0.01, reg_steps=100)
    assert pose.reg_weight(0) == 10.0 and pose.reg_weight(100) == pytest.approx(0.01)
    assert pose.reg_weight(50) < pose.reg_weight(10)


# ---- appearance matching -----------------------------------------------------------------------------
def test_appearance_matching_reduces_the_difference_between_blocks():
    scene = toy_scene()
    a = small(scene, block=0, partition=BlockPartition(n_blocks=2), appearance={"dim": 8})
    b = small(scene, block=1, partition=BlockPartition(n_blocks=2), appearance={"dim": 8})
    b.field.load_state_dict(a.field.state_dict())  # same networks, different codes: matching must find A's look
    gen = torch.Generator().manual_seed(1)
    code_a, code_b = torch.randn(8, generator=gen) * 3, torch.randn(8, generator=gen) * 3
    from harness.core.data.rays import image_rays

    o, d = image_rays(scene.split("train").cameras, 5)
    code, info = match_code(a, code_a, b, code_b, o, d, 1.0, steps=80, lr=0.1, rays=128, seed=0)
    assert info["mse_after"] < 0.2 * info["mse_before"], info
    assert all(p.requires_grad for p in b.field.parameters())  # networks unfrozen afterwards


# ---- test-time appearance protocol ---------------------------------------------------------------------
def test_left_and_right_halves_split_the_image():
    for w, h in ((96, 64), (17, 5)):
        fit, score = proto.halves(w)
        assert fit.start == 0 and fit.stop == score.start == w // 2 and score.stop == w
        left, right = proto.half_pixels(w, h, "left"), proto.half_pixels(w, h, "right")
        assert len(np.intersect1d(left, right)) == 0 and len(left) + len(right) == w * h
        assert np.all(left % w < w // 2) and np.all(right % w >= w // 2)
    assert proto.choose("image", "auto") == "left_half"
    assert proto.choose("appearance_id", "auto") == "appearance_id"
    with pytest.raises(ValueError):
        proto.choose("image", "appearance_id")


def test_left_half_protocol_fits_on_left_and_scores_right():
    scene = toy_scene()
    m = small(scene, appearance={"mode": "image", "fit_steps": 5})
    test = m.trial_scene.split("test")
    assert m.protocol == "left_half"
    code, _ = m.view_condition(test, 0)
    # the fit sees only the left half: changing the right half of the target changes nothing
    test.images[0][:, test.cameras.width // 2:] = 1 - test.images[0][:, test.cameras.width // 2:]
    code2, _ = m.view_condition(test, 0)
    assert torch.equal(code, code2)
    test.images[0][:, :2] = 0.0
    code3, _ = m.view_condition(test, 0)
    assert not torch.equal(code, code3)
    pred = m.render_view(test, 0)
    assert pred.shape == (test.cameras.height, test.cameras.width - test.cameras.width // 2, 3)

    # the harness renders through the method's view protocol and scores only the right half
    from harness.core.method import ViewProtocol
    from harness.run.evaluation import Evaluation

    assert isinstance(m, ViewProtocol)
    rec = Evaluation(metrics=("psnr",), save_renders=False).score(m, test)
    assert set(rec["per_view"]) == set(test.names)
    assert rec["appearance_protocol"]["name"] == "left_half"
    assert rec["appearance_protocol"]["scored_columns"] == [test.cameras.width // 2, test.cameras.width]
    assert rec["block"]["index"] == 0 and len(rec["block"]["cameras"]) == len(m.train_index)
    assert "mae" in rec["visibility"] and rec["pose"]["refinement"] is True


# ---- experiment expansion -----------------------------------------------------------------------------
def test_ablation_expands_into_one_trial_per_block():
    from harness.run.composition import declared, groups
    from harness.run.config import experiment_path
    from harness.run.sweep import expand, read_spec

    trials = expand("block_nerf_ablation")
    per_variant = groups(trials, "BlockNeRF.block")
    sizes = sorted(len(v) for v in per_variant.values())
    assert sizes == [1, 4, 4, 4, 4]
    for members in per_variant.values():
        blocks = [t.bindings["BlockNeRF.block"] for t in members]
        n = members[0].bindings["BlockPartition.n_blocks"]
        assert sorted(blocks) == list(range(n))
    assert len({t.id for t in trials}) == len(trials) == 17
    assert declared(read_spec(experiment_path("block_nerf_ablation"), []))["over"] == "BlockNeRF.block"
    # the composition settings are not part of any trial's id
    assert "compose" not in trials[0].config and "visibility_threshold" not in trials[0].config
    # every row's pose noise is the same absolute amount, so the one-block row is not noisier
    assert all(t.bindings.get("PoseNoise.translation", 0.275) == 0.275 for t in trials)
    assert all("PoseNoise.translation = 0.275" in t.config for t in trials)
    # the row without pose refinement binds the part to None; every other row to @PoseRefinement()
    plain = [t for t in trials if t.bindings["BlockNeRF.pose_refinement"] is None]
    assert len(plain) == 4 and all("BlockNeRF.pose_refinement = None" in t.config for t in plain)
    assert all(t.bindings["BlockNeRF.pose_refinement"] == "@PoseRefinement()" for t in trials if t not in plain)


def test_blocks_experiment_compares_4_blocks_with_1_at_a_smaller_network():
    from harness.run.composition import groups
    from harness.run.sweep import expand

    trials = expand("block_nerf_blocks")
    sizes = {members[0].bindings["BlockPartition.n_blocks"]: len(members)
             for members in groups(trials, "BlockNeRF.block").values()}
    assert sizes == {4: 4, 1: 1}
    assert all("MipField.width = 32" in t.config for t in trials)


# ---- settings in parts (baselines/block_nerf/parts.py) ----------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: MipField(n_coarse=1), "MipField.n_coarse = 1: expected an integer >= 2"),
    (lambda: MipField(spacing="cubic"), "MipField.spacing = 'cubic': expected one of ('linear', 'disparity', 'log')"),
    (lambda: MipField(near=2.0, far=1.0), "MipField.far = 1.0: expected a number > MipField.near (2.0)"),
    (lambda: MipField(width=64.0), "MipField.width = 64.0: expected an integer >= 1"),
    (lambda: Appearance(mode="per_image"), "Appearance.mode = 'per_image': expected one of"),
    (lambda: Appearance(exposure="yes"), "Appearance.exposure = 'yes': expected True or False"),
    (lambda: Appearance(fit_lr=-0.05), "Appearance.fit_lr = -0.05: expected a positive number"),
    (lambda: Appearance(mode="image", test_protocol="appearance_id"),
     "Appearance.test_protocol = 'appearance_id' needs Appearance.mode = 'appearance_id'"),
    (lambda: Appearance(test_protocol="right_half"), "Appearance.test_protocol must be 'auto' or one of"),
    (lambda: Visibility(width=0), "Visibility.width = 0: expected an integer >= 1"),
    (lambda: Visibility(weight=float("nan")), "Visibility.weight = nan: expected a number >= 0"),
    (lambda: Visibility(eval_stride=0), "Visibility.eval_stride = 0: expected an integer >= 1"),
    (lambda: PoseRefinement(reg_initial=-1.0), "PoseRefinement.reg_initial = -1.0: expected a number >= 0"),
    (lambda: PoseRefinement(reg_steps=-5), "PoseRefinement.reg_steps = -5: expected an integer >= 0"),
    (lambda: PoseNoise(rotation_deg=-1.0), "PoseNoise.rotation_deg = -1.0: expected a number >= 0"),
    (lambda: PoseNoise(translation=-0.1), "PoseNoise.translation = -0.1: expected a number >= 0"),
    (lambda: Optimization(optimizer="adagrad"), "Optimization.optimizer = 'adagrad': expected one of"),
    (lambda: Optimization(lr_mlp=-5e-3), "Optimization.lr_mlp = -0.005: expected a positive number"),
    (lambda: Optimization(lr_pose_translation=0.0), "Optimization.lr_pose_translation = 0.0: expected a positive"),
    (lambda: Optimization(schedule="cosine"), "Optimization.schedule = 'cosine': expected @Schedule() or None"),
    (lambda: Optimization(mixed_precision=1), "Optimization.mixed_precision = 1: expected True or False"),
])
def test_each_part_rejects_a_bad_value_in_one_line_naming_it(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


def test_block_nerf_takes_only_its_parts():
    """The old switches (`BlockNeRF.visibility = True`) or a part in the wrong place are one clear error
    (BlockNeRF is gin.configurable: Gin adds a line naming the configurable after it)."""
    for kw, message in [({"visibility": True}, "BlockNeRF.visibility = True: expected @Visibility() or None"),
                        ({"pose_refinement": False}, "BlockNeRF.pose_refinement = False: expected @PoseRefinement()"),
                        ({"optimization": MipField()}, "BlockNeRF.optimization = MipField(n_coarse=32, ")]:
        with pytest.raises(ConfigError) as info:
            BlockNeRF(toy_scene(), 0, **kw)
        assert str(info.value).splitlines()[0].startswith(message), str(info.value)


def test_parts_keep_their_settings_and_defaults():
    f = MipField()
    assert (f.n_coarse, f.n_fine, f.spacing, f.near, f.far, f.coarse_loss_weight, f.pos_freqs, f.dir_freqs, f.depth,
            f.width, f.skip, f.colour_width) == (32, 32, "log", None, None, 0.1, 12, 4, 4, 64, 2, 32)
    a = Appearance(mode="image")
    assert (a.dim, a.exposure, a.exposure_freqs, a.exposure_scale, a.fit_steps, a.fit_lr, a.fit_rays) == \
        (32, True, 4, 0.5, 64, 0.05, 512) and a.protocol == "left_half"
    v, r, n = Visibility(), PoseRefinement(), PoseNoise()
    assert (v.weight, v.width, v.depth, v.freqs, v.eval_stride) == (0.1, 32, 2, 8, 4)
    assert (r.reg_initial, r.reg_final, r.reg_steps) == (10.0, 0.01, 500)
    assert (n.rotation_deg, n.translation, n.translation_frac) == (0.0, None, 0.0)
    o = Optimization()
    assert (o.optimizer, o.lr_mlp, o.lr_appearance, o.lr_visibility, o.lr_pose, o.lr_pose_translation, o.clip_norm,
            o.mixed_precision) == ("adam", 5e-3, 5e-3, 5e-3, 1e-3, None, 0.0, True)
    assert o.schedule.kind == "exponential"  # None: Schedule()
    assert Appearance.positive_settings == ("fit_lr",) and BlockNeRF.positive_settings == ("batch_size",)
    assert set(Optimization.positive_settings) == {"lr_mlp", "lr_appearance", "lr_visibility", "lr_pose",
                                                   "lr_pose_translation"}


@pytest.mark.parametrize("binding, key", [("Optimization.lr_mlp = -1e-3", "Optimization.lr_mlp = -0.001"),
                                          ("Appearance.fit_lr = 0", "Appearance.fit_lr = 0"),
                                          ("BlockNeRF.batch_size = -4", "BlockNeRF.batch_size = -4")])
def test_a_bad_positive_setting_of_a_part_stops_the_expansion(binding, key):
    """The sweep follows the method's `@Part()` references and checks each part's `positive_settings`
    (harness.run.sweep.check_positive_settings) before any trial is made."""
    from harness.run.sweep import expand

    with pytest.raises(ConfigError) as info:
        expand("block_nerf_ablation", [binding], require_data=False)
    msg = str(info.value)
    assert f"{key}: expected a positive number" in msg and "\n" not in msg, msg


def test_visibility_and_pose_refinement_bound_to_none_are_not_built():
    """`BlockNeRF.visibility = None` and `BlockNeRF.pose_refinement = None`: no visibility network, no
    pose offsets, no optimizers, losses or records for them; the same model with both parts has them."""
    scene = toy_scene()
    common = ["BlockNeRF.field = @MipField()", "MipField.n_coarse = 8", "MipField.n_fine = 8", "MipField.width = 32",
              "MipField.near = 0.5", "MipField.far = 8.0", "BlockNeRF.batch_size = 128",
              "BlockNeRF.pose_noise = @PoseNoise()", "PoseNoise.rotation_deg = 1.0", "PoseNoise.translation = 0.05"]
    gin.parse_config(common + ["BlockNeRF.visibility = None", "BlockNeRF.pose_refinement = None"])
    m = BlockNeRF(scene, 0)
    gin.clear_config()
    gin.parse_config(common + ["BlockNeRF.visibility = @Visibility()", "BlockNeRF.pose_refinement = @PoseRefinement()"])
    full = BlockNeRF(scene, 0)
    gin.clear_config()
    assert m.field.visibility is None and m.pose is None
    assert full.field.visibility is not None and full.pose is not None
    assert set(m.opt.opts) == {"mlp", "appearance"}
    assert set(full.opt.opts) == {"mlp", "appearance", "visibility", "pose", "pose_translation"}
    assert m.state_dict()["pose"] is None and full.state_dict()["pose"] is not None
    assert m.stats()["params_visibility"] == 0 and m.stats()["params_pose"] == 0
    assert full.stats()["params_visibility"] > 0 and full.stats()["params_pose"] > 0
    # the same networks otherwise (the same draws of the random generator, in the same order)
    assert torch.equal(m.field.mlp.trunk[0].weight, full.field.mlp.trunk[0].weight)
    from harness.core.data.rays import RaySampler

    tr = m.trial_scene.split("train")
    batch = RaySampler(tr.images, tr.cameras, 0).sample(0, m.batch_size)
    losses = m.train_step(0, batch)
    assert "visibility" not in losses and "pose_reg" not in losses and np.isfinite(losses["loss"])
    assert {"visibility", "pose_reg"} <= set(full.train_step(0, batch))
    test = m.trial_scene.split("test")
    assert m.visibility_error(test) is None
    rec = m.pose_record()
    assert rec["refinement"] is False and rec["error_after"] == rec["error_before"]
    assert rec["noise"]["rotation_deg"] == 1.0 and rec["noise"]["translation"] == 0.05
    # BlockNeRF's own defaults: neither part, and no noise
    plain = BlockNeRF(scene, 0, field=MipField(n_coarse=8, n_fine=8, width=32, near=0.5, far=8.0))
    assert plain.field.visibility is None and plain.pose is None
    assert plain.pose_noise["rotation_deg"] == 0.0 and plain.pose_noise["translation"] == 0.0


# ---- visibility on the block's own geometry, region-restricted selection, pose learning rates ------------
def test_visibility_error_on_hit_rays_counts_only_rays_ending_in_the_block():
    """`mae_hit` uses exactly the rays whose first surface (from the depth map) lies within the block's
    radius; rays with infinite depth (sky) are left out; the all-ray `mae` keeps them."""
    scene = toy_scene()
    m = small(scene, block=0, partition=BlockPartition(n_blocks=2))
    test = m.trial_scene.split("test")
    depth = scene.extras["depth"]["test"].copy()
    depth[m.test_index[0], :, : depth.shape[2] // 2] = np.inf  # sky on the left half of the first view
    scene.extras["depth"] = {**scene.extras["depth"], "test": depth}
    rec = m.visibility_error(test)
    from harness.core.data.rays import image_rays

    stride, hit, total = m.visibility_eval_stride, 0, 0
    for k, i in enumerate(m.test_index):
        o, d = image_rays(test.cameras, k)
        pick = np.arange(0, o.shape[0], stride)
        t = depth[i].reshape(-1)[pick]
        p = o.numpy()[pick] + np.where(np.isfinite(t), t, 0)[:, None] * d.numpy()[pick]
        hit += int((np.isfinite(t) & (np.linalg.norm(p - m.block.center, axis=1) <= m.block.radius)).sum())
        total += len(pick)
    assert 0 < hit < total
    assert rec["hit_ray_fraction"] == pytest.approx(hit / total)
    assert 0 <= rec["mae_hit"] <= 1 and 0 <= rec["mae_hit_coarse"] <= 1 and rec["mae_hit"] != rec["mae"]


def test_region_visibility_is_zero_for_a_view_that_never_enters_the_block():
    scene = toy_scene()
    m = small(scene, block=0, partition=BlockPartition(n_blocks=2))
    c, r = m.block.center, m.block.radius
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0.0], [1.0, -0.2, 0.1]]), dim=-1)
    far_o = torch.tensor(np.array([c + np.array([r + 1.0, 0.0, 0.0])] * 2), dtype=torch.float32)  # looks away
    assert m.mean_visibility(far_o, d, region=True) == 0.0
    assert m.mean_visibility(far_o, d, region=False) > 0.0
    near_o = torch.tensor(np.array([c] * 2), dtype=torch.float32)
    assert m.mean_visibility(near_o, d, region=True) > 0.0


def test_pose_translation_has_its_own_learning_rate():
    m = small(toy_scene(), optimization={"lr_pose": 2e-3, "lr_pose_translation": 3e-2})
    assert m.opt.base["pose"] == 2e-3 and m.opt.base["pose_translation"] == 3e-2
    assert m.opt.params["pose_translation"][0] is m.pose.translation
    assert m.opt.params["pose"][0] is m.pose.rotation
    m2 = small(toy_scene(), optimization={"lr_pose": 2e-3})
    assert m2.opt.base["pose_translation"] == 2e-3


def test_region_visibility_drops_a_candidate_block_the_view_does_not_reach():
    """With candidates taken from far away (select_radius 10), a view of block 0 whose samples never enter
    block 1's region drops block 1 under `visibility_region` and keeps it without."""
    scene = toy_scene()
    m = small(scene, block=0, partition=BlockPartition(n_blocks=2))
    m2 = small(scene, block=1, partition=BlockPartition(n_blocks=2))
    test = scene.split("test")
    i = 0  # the camera at x = 0, looking at the wall (+y)
    opts = {"power": 4.0, "select_radius": 10.0, "visibility_threshold": 0.1, "visibility_stride": 4,
            "visibility_mean": "samples", "max_blocks": 0}
    _, plain = compose_view({0: m, 1: m2}, test, i, {**opts, "visibility_region": False}, None)
    _, region = compose_view({0: m, 1: m2}, test, i, {**opts, "visibility_region": True}, None)
    assert sorted(plain["blocks"]) == [0, 1]
    assert region["blocks"] == [0] and region["visibility"]["1"] == 0.0 and region["visibility"]["0"] > 0.1


# ---- per-sequence pose offsets -------------------------------------------------------------------------
def test_sequence_pose_groups_share_noise_and_offsets_within_a_drive():
    scene = toy_scene()
    with pytest.raises(ValueError, match="sequence_id"):
        small(scene, pose_groups="sequence")
    with pytest.raises(ValueError, match="pose_groups"):
        small(scene, pose_groups="segment")
    train = scene.split("train")
    train.sequence_id = np.arange(len(train)) // 6  # drives of 6 consecutive images
    m = small(scene, pose_groups="sequence",
              pose_noise={"rotation_deg": 1.0, "translation_frac": 0.5, "translation": 0.2})
    seq = train.sequence_id[m.train_index]
    assert m.pose.translation.shape == (len(np.unique(seq)), 3)
    moved = m.noisy_c2w[:, :, 3] - m.true_c2w[:, :, 3]
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), 0.2)  # the absolute amount wins over the fraction
    for s in np.unique(seq):
        np.testing.assert_allclose(moved[seq == s], moved[seq == s][:1].repeat((seq == s).sum(), 0), atol=1e-12)
    assert len({tuple(np.round(moved[seq == s][0], 9)) for s in np.unique(seq)}) == len(np.unique(seq))
    rec = m.pose_record()
    assert rec["noise"]["groups"] == "sequence" and rec["noise"]["n_groups"] == len(np.unique(seq))
    assert rec["error_before"]["translation"] == pytest.approx(0.2)
    assert rec["error_before_aligned"]["translation"] < 0.2  # the mean offset of the drives is a rigid motion
    assert rec["error_after"] == rec["error_before"]  # nothing refined yet


def test_paired_seam_compares_the_same_views_as_overlap_and_as_interior():
    # views 0-1: A's overlap, B's interior; view 2: B's overlap, A's interior; view 3: interior in both
    s = paired_seam([18.0, 20.0, 25.0, 30.0], [2, 2, 1, 1], [19.0, 21.0, 24.0, 10.0], [1, 1, 3, 1])
    assert s["a_overlap"] == {"n": 2, "psnr_overlap": 19.0, "psnr_interior": 20.0, "seam": 1.0}
    assert s["b_overlap"] == {"n": 1, "psnr_overlap": 24.0, "psnr_interior": 25.0, "seam": 1.0}
    assert s["n"] == 3 and s["psnr_overlap"] == pytest.approx(62 / 3) and s["seam"] == pytest.approx(1.0)
    assert paired_seam([1.0], [1], [2.0], [1])["seam"] is None  # no view in either overlap
    with pytest.raises(ValueError, match="same views"):
        paired_seam([1.0, 2.0], [1, 2], [1.0], [1])
