"""The procedural dynamic scene (harness/core/data/procedural/dynamic.py): its forward flow checked against the
known motion, static and occluded pixels, the round trip through the writer and the nerfstudio loader (`time`,
`time_step`, `camera_id`, flow), one DataError line per bad input, and the static scenes left as they were."""

import itertools
import json
import shutil

import gin
import numpy as np
import pytest

from harness.core.data.nerfstudio import load_nerfstudio
from harness.core.data.procedural import KINDS, load_procedural, provenance, scene_params
from harness.core.data.procedural.dynamic import AABB, build_dynamic, dynamic_scene, frame_flow, render_frame
from harness.core.data.procedural.raycast import signed_distance
from harness.core.data.procedural.writer import write_scene
from harness.core.data.rays import image_rays, pixel_grid
from harness.core.errors import ConfigError
from tests.test_data_errors import _raises
from tests.test_data_street import generate

SMALL = {"size": 32, "n_steps": 4, "n_train": 4, "n_test": 2}  # 6 cameras per step, 24 frames
ON_SURFACE = 1e-4  # |signed distance| of a point read back from a float32 depth map


@pytest.fixture(scope="module")
def source():
    return build_dynamic(dynamic_scene(**SMALL))


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return generate("dynamic", tmp_path_factory.mktemp("cache"), **SMALL)


@pytest.fixture(scope="module")
def frames(scene_dir):
    return json.loads((scene_dir / "transforms.json").read_text())["frames"]


@pytest.fixture
def copy(scene_dir, tmp_path):
    """A writable copy of the scene and a function to edit its frames."""
    root = tmp_path / "dynamic"
    shutil.copytree(scene_dir, root)

    def edit(change):
        meta = json.loads((root / "transforms.json").read_text())
        change(meta["frames"])
        (root / "transforms.json").write_text(json.dumps(meta))

    return root, edit


def _rays(scene, index):
    return tuple(x.numpy().astype(np.float64) for x in image_rays(scene.base.cameras, index))


def _project(scene, index, points):
    """Pinhole projection (pixel centres at +0.5, OpenGL camera axes) of world points into frame `index`."""
    cams = scene.base.cameras
    c2w = cams.c2w[index].astype(np.float64)
    x, y, z = ((points - c2w[:, 3]) @ c2w[:, :3]).T
    return np.stack([cams.cx[index] + cams.fx[index] * x / -z, cams.cy[index] - cams.fy[index] * y / -z], axis=-1)


def _object_sdf(mover, step, points):
    return signed_distance((points - mover.centre[step]) @ mover.rotation[step], mover.shapes)


def _scene_sdf(scene, step, points):
    return np.min([signed_distance(points, scene.base.shapes)] + [_object_sdf(m, step, points) for m in scene.movers],
                  axis=0)


def _blocked(scene, step, start, end, samples):
    """(R,) whether the segment from `start` to 10 microns before each `end` passes through a solid at `step`:
    `samples` evenly spaced points, and more in the last millimetre (where a turned-away face is hidden by its
    own object's edge)."""
    length = np.linalg.norm(end - start, axis=-1)
    unit = (end - start) / length[:, None]
    fraction = np.linspace(0.0, 1.0, samples)[None] * (length[:, None] - 1e-3)
    along = np.concatenate([fraction, length[:, None] - np.geomspace(1e-3, 1e-5, 100)[None]], axis=1)
    points = (start[:, None] + along[..., None] * unit[:, None]).reshape(-1, 3)
    return (_scene_sdf(scene, step, points).reshape(along.shape) < -1e-7).any(axis=1)


def _written(scene_dir, frame, key):
    return np.load(scene_dir / frame[key]).reshape(-1, *([2] if key == "flow_file_path" else []))


def test_default_scene_meets_the_spec():
    scene = build_dynamic(dynamic_scene())  # building only: no rendering
    assert scene.n_steps == 24 and len(scene.names) == 24 * 24
    assert (scene.base.cameras.width, scene.base.cameras.height) == (100, 100)
    assert scene.base.splits.count("train") == 24 * 20 and scene.base.splits.count("test") == 24 * 4
    rig = scene.base.cameras.c2w.reshape(24, 24, 3, 4)
    assert (rig == rig[:1]).all()  # a fixed rig: the same 24 poses at every step
    assert len(scene.movers) == 3 and len({n for n in scene.names}) == len(scene.names)


@pytest.mark.parametrize("motion", [1.0, 2.7, -3.0])
def test_objects_stay_inside_the_box_above_the_slab(motion):
    scene = build_dynamic(dynamic_scene(**SMALL, motion=motion))
    for m in scene.movers:
        if m.shapes.n_boxes:
            local = np.array(list(itertools.product(*zip(m.shapes.box_lo[0], m.shapes.box_hi[0]))))
        else:
            local = np.concatenate([np.eye(3), -np.eye(3)]) * m.shapes.sphere_radius[0]  # a sphere's extremes
        for s in range(scene.n_steps):
            world = local @ m.rotation[s].T + m.centre[s]
            assert (world >= AABB[0]).all() and (world <= AABB[1]).all() and world[:, 2].min() > 0.005
    eyes = scene.base.cameras.c2w[:, :, 3]
    assert ((eyes < AABB[0]) | (eyes > AABB[1])).any(axis=1).all()


def test_flow_maps_moving_points_exactly(scene_dir, frames, source):
    """Pixel + flow is where the point the pixel sees (from the written depth) lands after its object's known
    motion, to 1e-4 px; points that land outside the image or hidden are NaN, visible ones are not hidden."""
    u, v = pixel_grid(32, 32)
    pixels = np.stack([u, v], axis=-1).astype(np.float64)
    checked, hidden, confirmed = 0, 0, 0
    for i, frame in enumerate(frames):
        s = int(source.step[i])
        if s + 1 == source.n_steps:
            assert "flow_file_path" not in frame
            continue
        j = source.frame(s + 1, int(source.camera[i]))
        o, d = _rays(source, i)
        depth, flow = _written(scene_dir, frame, "depth_file_path"), _written(scene_dir, frame, "flow_file_path")
        hit = np.isfinite(depth)
        point = o + np.where(hit, depth, 0.0)[:, None] * d
        for m in source.movers:
            on = hit & (np.abs(_object_sdf(m, s, point)) < ON_SURFACE)
            moved = (point[on] - m.centre[s]) @ m.rotation[s] @ m.rotation[s + 1].T + m.centre[s + 1]
            q = _project(source, j, moved)
            valid = np.isfinite(flow[on]).all(axis=-1)
            np.testing.assert_allclose(pixels[on][valid] + flow[on][valid], q[valid], rtol=0, atol=1e-4)
            inside = (q >= 0).all(axis=-1) & (q < 32).all(axis=-1)
            assert not valid[~inside].any()
            eye = np.broadcast_to(source.base.cameras.c2w[j, :, 3].astype(np.float64), moved.shape)
            assert not _blocked(source, s + 1, eye[valid], moved[valid], 300).any()
            occluded = inside & ~valid
            hidden += occluded.sum()
            confirmed += _blocked(source, s + 1, eye[occluded], moved[occluded], 4000).sum()
            checked += valid.sum()
    assert checked > 300 and hidden > 20 and confirmed == hidden


def test_static_pixels_have_zero_flow_and_are_invalid_where_covered(scene_dir, frames, source):
    """Under the fixed rig a static point (slab or background) stays at its pixel: zero flow, valid exactly
    where the next frame's depth there is unchanged (not covered by a moving object)."""
    covered = 0
    for i, frame in enumerate(frames[:-6]):
        nxt = frames[source.frame(int(source.step[i]) + 1, int(source.camera[i]))]
        depth, flow = _written(scene_dir, frame, "depth_file_path"), _written(scene_dir, frame, "flow_file_path")
        o, d = _rays(source, i)
        point = o + np.where(np.isfinite(depth), depth, 0.0)[:, None] * d
        moving = np.isfinite(depth) & (np.min([np.abs(_object_sdf(m, int(source.step[i]), point))
                                              for m in source.movers], axis=0) < ON_SURFACE)
        static = ~moving
        valid = np.isfinite(flow).all(axis=-1)
        assert (flow[static & valid] == 0).all()
        np.testing.assert_array_equal(valid[static], (_written(scene_dir, nxt, "depth_file_path") == depth)[static])
        covered += (static & ~valid).sum()
    assert covered > 10


def test_points_leaving_the_image_are_invalid():
    narrow = build_dynamic(dynamic_scene(**SMALL, fov_deg=20.0))
    outside = 0
    for i in range(len(narrow.names) - 6):
        view, flow = render_frame(narrow, i), frame_flow(narrow, i)
        s, j = int(narrow.step[i]), narrow.frame(int(narrow.step[i]) + 1, int(narrow.camera[i]))
        o, d = _rays(narrow, i)
        depth = view["depth"].reshape(-1).astype(np.float64)
        point = o + np.where(np.isfinite(depth), depth, 0.0)[:, None] * d
        for k, m in enumerate(narrow.movers):
            on = view["owner"].reshape(-1) == k + 1
            q = _project(narrow, j, (point[on] - m.centre[s]) @ m.rotation[s] @ m.rotation[s + 1].T + m.centre[s + 1])
            out = ~((q >= 0).all(axis=-1) & (q < 32).all(axis=-1))
            assert np.isnan(flow.reshape(-1, 2)[on][out]).all()
            outside += out.sum()
    assert outside > 10


def test_scene_round_trips_through_writer_and_loader(scene_dir, frames, source):
    meta = json.loads((scene_dir / "transforms.json").read_text())
    assert meta["aabb"] == AABB and meta["time_steps"] == 4 and "flow_convention" in meta
    for i, f in enumerate(frames):
        s = int(source.step[i])
        assert (f["time"], f["time_step"], f["camera_id"]) == (s / 3, s, int(source.camera[i]))
        assert ("flow_file_path" in f) == (s < 3)
    scene = load_procedural(scene_dir)  # the generated folder loads through the nerfstudio loader
    assert scene.name == "dynamic" and scene.extras["procedural"]["params"]["n_steps"] == 4
    np.testing.assert_array_equal(scene.bbox, np.float32(AABB))
    for name, split in scene.splits.items():
        idx = np.array([source.names.index(n) for n in split.names])
        np.testing.assert_array_equal(split.time_step, source.step[idx])
        np.testing.assert_array_equal(split.camera_id, source.camera[idx])
        np.testing.assert_array_equal(split.time, (source.step[idx] / 3).astype(np.float32))
        np.testing.assert_array_equal(split.cameras.c2w, source.base.cameras.c2w[idx])
        flow = scene.extras["flow"][name]
        assert flow.shape == (len(idx), 32, 32, 2) and flow.dtype == np.float32
        for k, i in enumerate(idx):
            last = source.step[i] == 3  # no forward flow: all NaN
            want = np.full((1024, 2), np.nan) if last else _written(scene_dir, frames[i], "flow_file_path")
            np.testing.assert_array_equal(flow[k].reshape(-1, 2), want)
        sub = split.subset([1, 0])
        assert sub.time_step.tolist() == split.time_step[[1, 0]].tolist() and sub.camera_id is not None
    assert len(scene.splits["train"]) == 16 and len(scene.splits["test"]) == 8
    small = load_nerfstudio(scene_dir, downscale_factor=2)  # flow is not box-filterable: left out, times kept
    assert "flow" not in small.extras and small.splits["train"].time_step is not None


def test_gin_generation_reuses_the_cache(scene_dir):
    gin.clear_config()
    gin.parse_config([f"dynamic_scene.{k} = {v!r}" for k, v in SMALL.items()])
    try:
        assert scene_dir.name == f"dynamic-{provenance('dynamic', scene_params('dynamic'))['hash']}"
        gin.parse_config(["dynamic_scene.n_steps = 1"])
        with pytest.raises(ConfigError, match=r"dynamic_scene\.n_steps must be an integer >= 2"):
            scene_params("dynamic")
        gin.parse_config(["dynamic_scene.n_steps = 4", "dynamic_scene.radius = 1.5"])
        with pytest.raises(ConfigError, match=r"dynamic_scene\.radius must exceed"):
            scene_params("dynamic")
    finally:
        gin.clear_config()


def _set(index, **values):
    return lambda frames: frames[index].update(values)


def _each(condition, **values):
    return lambda frames: [f.update(values) for f in frames if condition(f)]


BAD_FRAMES = {
    "missing time": (lambda fr: fr[3].pop("time"), r"frame 3: missing 'time' \(other frames have it\)"),
    "time outside [0, 1]": (_set(0, time=1.5), r"frame 0 'time': expected a time in \[0, 1\]"),
    "non-integer step": (_set(2, time_step=1.5), r"frame 2 'time_step': expected an integer"),
    "step disagrees with time": (_set(7, time_step=2), r"frame 7: time 0\.333\d* is at time_step 2, but at time_step 1 "
                                                       r"in .*frame 6 \(one step per time\)"),
    "gap in steps": (_each(lambda f: f["time_step"] == 3, time_step=4), r"frame 18: time_step 4, but no frame has "
                                                                        r"time_step 3"),
    "steps out of time order": (_each(lambda f: f["time_step"] == 1, time=0.9),
                                r"frame 12: time_step 2 has time 0\.666\d*, not later than time_step 1's 0\.9"),
    "step without training view": (_each(lambda f: f["time_step"] == 2, split="test"),
                                   r"frame 12: time_step 2 has no training view"),
    "camera twice at a step": (_set(1, camera_id=0), r"frame 1: camera_id 0 already has a frame at time_step 0"),
    "flow without time": (lambda fr: [f.pop(k) for f in fr for k in ("time", "time_step", "camera_id")],
                          r"frame 0: has 'flow_file_path' but no frame has 'time'"),
    "flow not .npy": (_set(0, flow_file_path="flow/x.png"), r"flow/x\.png: flow files must be \.npy .*frame 0\)"),
}


@pytest.mark.parametrize("case", BAD_FRAMES)
def test_bad_frames_give_one_line(copy, case):
    root, edit = copy
    edit(BAD_FRAMES[case][0])
    _raises(BAD_FRAMES[case][1], load_nerfstudio, root)


@pytest.mark.parametrize("content, match", [
    (np.zeros((32, 32)), r"flow is float64 \(32, 32\), expected float \(32, 32, 2\)"),
    (np.zeros((32, 32, 2), np.int32), r"flow is int32 \(32, 32, 2\), expected float"),
    (b"not a numpy file", r"unreadable flow file \(ValueError\)"),
    (None, r"flow file is missing"),
])
def test_bad_flow_files_give_one_line(copy, content, match):
    root, _ = copy
    path = root / "flow" / "train_c01_t000.npy"
    path.unlink()
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    _raises(rf"train_c01_t000\.npy: {match}.* frame 1\)", load_nerfstudio, root)


def test_static_scenes_are_unchanged():
    """Registering 'dynamic' leaves tiny's and street's writer, parameters and cache folders as they were."""
    gin.clear_config()
    assert provenance("tiny", scene_params("tiny"))["hash"] == "840789f921b3"
    assert provenance("street", scene_params("street"))["hash"] == "72109c0dd7c5"
    assert KINDS["tiny"][2] is write_scene and KINDS["street"][2] is write_scene
