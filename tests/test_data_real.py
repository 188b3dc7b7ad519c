"""Loaders on real captures (shared test data): LLFF fern, NeRF-Synthetic lego; rays land where poses say."""

import struct

import numpy as np
import pytest
import torch

from harness.core.data.blender import load_blender
from harness.core.data.colmap_io import read_cameras_binary
from harness.core.data.formats import detect_format
from harness.core.data.llff import average_pose, load_llff
from harness.core.data.ndc import ndc_rays, to_ndc
from harness.core.data.rays import image_rays, rays_for_pixels
from harness.scene_cli import check_scene
from tests.conftest import SHARED_DATA, requires_shared

FERN = SHARED_DATA / "nerf_llff" / "fern"
LEGO = SHARED_DATA / "nerf_synthetic" / "lego_100"


@pytest.fixture(scope="module")
def fern():
    return load_llff(FERN, downscale_factor=8)


def _project(cameras, i, point):
    """Pixel (u, v) of a world point in camera i (OpenGL axes: the camera looks down -z)."""
    c2w = cameras.c2w[i].astype(np.float64)
    x, y, z = c2w[:, :3].T @ (point - c2w[:, 3])
    return cameras.cx[i] + cameras.fx[i] * x / -z, cameras.cy[i] - cameras.fy[i] * y / -z


def _check_rays_hit_known_points(cameras):
    for i in range(len(cameras)):
        centre = rays_for_pixels(cameras, np.array([i]), cameras.cx[i:i + 1], cameras.cy[i:i + 1])[1][0].numpy()
        np.testing.assert_allclose(centre, -cameras.c2w[i, :, 2], atol=1e-6)  # principal point: the -z axis
        c2w = cameras.c2w[i].astype(np.float64)
        point = c2w[:, 3] - 3.0 * c2w[:, 2] + 0.4 * c2w[:, 0] - 0.2 * c2w[:, 1]  # in front, off-centre
        u, v = _project(cameras, i, point)
        assert 0 < u < cameras.width and 0 < v < cameras.height
        o, d = (t.numpy().astype(np.float64)[0] for t in rays_for_pixels(
            cameras, np.array([i]), np.array([u], np.float32), np.array([v], np.float32)))
        off = (point - o) - np.dot(point - o, d) * d
        assert np.linalg.norm(off) < 1e-4, f"ray of camera {i} misses its projected point by {np.linalg.norm(off)}"


@requires_shared("nerf_llff", "fern")
def test_fern_images_splits_and_focal_match_colmap(fern):
    assert len(fern.splits["train"]) + len(fern.splits["test"]) == 20
    assert fern.splits["test"].names == ["image000", "image008", "image016"]  # llffhold = 8
    for split in fern.splits.values():
        assert split.images.shape[1:] == (378, 504, 3)
        assert (split.cameras.width, split.cameras.height) == (504, 378)
    colmap = read_cameras_binary(FERN / "sparse" / "0" / "cameras.bin")
    (cam,) = colmap.values()
    assert (cam.model, cam.width, cam.height) == ("SIMPLE_RADIAL", 4032, 3024)
    assert abs(fern.splits["train"].cameras.fx[0] / (cam.params[0] / 8) - 1) < 0.01


@requires_shared("nerf_llff", "fern")
def test_fern_rescaled_and_recentred_as_nerf_does(fern):
    assert abs(fern.extras["bounds"].min() - 1 / 0.75) < 1e-5  # NeRF load_llff.py, bd_factor = 0.75
    c2w = np.concatenate([s.cameras.c2w for s in fern.splits.values()]).astype(np.float64)
    np.testing.assert_allclose(average_pose(c2w), np.eye(3, 4), atol=1e-5)
    assert fern.near == pytest.approx(0.9 / 0.75) and fern.far > fern.near


def _read_points3d_bin(path):
    """xyz (P, 3) and rgb (P, 3) of a COLMAP points3D.bin (uint64 count; per point uint64 id, 3 float64,
    3 uint8, float64 error, uint64 track length, then (int32, int32) per track element)."""
    data, pos = path.read_bytes(), 8
    xyz, rgb = [], []
    for _ in range(struct.unpack_from("<Q", data, 0)[0]):
        xyz.append(struct.unpack_from("<3d", data, pos + 8))
        rgb.append(struct.unpack_from("<3B", data, pos + 32))
        (track,) = struct.unpack_from("<Q", data, pos + 43)
        pos += 51 + 8 * track
    return np.array(xyz), np.array(rgb) / 255.0


@requires_shared("nerf_llff", "fern", "sparse", "0", "points3D.bin")
def test_fern_poses_see_the_colmap_points_in_their_colours(fern):
    """An independent check of the LLFF axis conversion: COLMAP's coloured 3-D points, mapped into the
    loaded frame and projected with the loaded cameras, land on pixels of their own colour (an axis
    flipped or mirrored would put them on unrelated pixels)."""
    xyz, rgb = _read_points3d_bin(FERN / "sparse" / "0" / "points3D.bin")
    m = fern.extras["world_to_scene"]
    pts = xyz @ m[:, :3].T + m[:, 3]
    split = fern.splits["train"]
    for i in range(0, len(split), 5):
        c2w = split.cameras.c2w[i].astype(np.float64)
        cam = (pts - c2w[:, 3]) @ c2w[:, :3]
        assert (cam[:, 2] < 0).mean() > 0.99  # in front of the camera (OpenGL: -z)
        u = split.cameras.cx[i] + split.cameras.fx[i] * cam[:, 0] / -cam[:, 2]
        v = split.cameras.cy[i] - split.cameras.fy[i] * cam[:, 1] / -cam[:, 2]
        inside = (u >= 0) & (u < 504) & (v >= 0) & (v < 378)
        assert inside.mean() > 0.5
        ui, vi = u[inside].astype(int), v[inside].astype(int)

        def colour_error(rows, cols, i=i, inside=inside):
            return np.abs(split.images[i][np.clip(rows, 0, 377), np.clip(cols, 0, 503)] - rgb[inside]).mean()

        err = colour_error(vi, ui)
        # best where projected: 3 pixels off in any direction, or flipped upside down, matches worse
        others = [colour_error(vi + dv, ui + du) for du, dv in ((3, 0), (-3, 0), (0, 3), (0, -3))]
        assert err < 0.85 * min(others) and err < 0.6 * colour_error(377 - vi, ui), (err, others)


@requires_shared("nerf_llff", "fern")
def test_fern_rays_hit_known_points(fern):
    _check_rays_hit_known_points(fern.splits["train"].cameras)


@requires_shared("nerf_llff", "fern")
def test_fern_ndc_rays_follow_the_projective_map():
    scene = load_llff(FERN, downscale_factor=8, ndc=True, splits=("test",))
    assert scene.ndc and (scene.near, scene.far) == (0.0, 1.0)
    ndc = scene.extras["ndc"]
    o, d = image_rays(scene.splits["test"].cameras, 0)
    o, d = o[::97].double(), d[::97].double()
    o_n, d_n = ndc_rays(o, d, ndc["focal"], ndc["width"], ndc["height"], ndc["near"])
    assert torch.allclose(o_n[:, 2], torch.full_like(o_n[:, 2], -1.0), atol=1e-9)  # starts on the near plane
    for t in (2.0, 5.0, 40.0):  # points on the world ray map onto the NDC ray
        q = to_ndc(o + t * d, ndc["focal"], ndc["width"], ndc["height"], ndc["near"])
        s = (q[:, 2] - o_n[:, 2]) / d_n[:, 2]
        assert torch.allclose(o_n + s[:, None] * d_n, q, atol=1e-6) and bool((s > 0).all() and (s < 1).all())


@requires_shared("nerf_synthetic", "lego_100")
def test_lego_loads_and_rays_hit_known_points():
    scene = load_blender(LEGO, splits=("train", "test"))
    assert len(scene.splits["train"]) == 100 and scene.splits["train"].images.shape[1:] == (100, 100, 3)
    cams = scene.splits["train"].cameras
    _check_rays_hit_known_points(cams.subset(np.arange(0, 100, 7)))
    for i in range(0, 100, 9):  # every lego camera looks at the origin
        u, v = _project(cams, i, np.zeros(3))
        assert abs(u - 50) < 1 and abs(v - 50) < 1


@requires_shared("nerf_llff", "fern")
@requires_shared("nerf_synthetic", "lego_100")
def test_detect_format_and_check_scene_on_real_data():
    assert detect_format(FERN) == "llff" and detect_format(LEGO) == "blender"
    line = check_scene(LEGO)
    assert "blender" in line and "train 100" in line and "100x100" in line
    line = check_scene(FERN, "llff")  # fern ships only images_8/: check picks it
    assert "llff" in line and "train 17" in line and "test 3" in line and "504x378" in line
