"""Every bad input gives one DataError line naming the file and the key or frame at fault."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from harness.core.data.colmap import load_colmap
from harness.core.data.colmap_io import read_cameras_binary
from harness.core.data.llff import load_llff
from harness.core.data.nerfstudio import load_nerfstudio
from harness.core.errors import DataError
from tests.conftest import SHARED_DATA, requires_shared
from tests.test_data_street import generate

TINY = {"size": 16, "n_train": 6, "n_test": 2}


def write_llff(root, cameras, n: int, bounds=(2.0, 6.0)):
    """An LLFF folder (poses_bounds.npy + images/) for the first n of `cameras` (OpenGL c2w)."""
    c2w = cameras.c2w[:n].astype(np.float64)
    right, up, back, t = (c2w[:, :, k] for k in range(4))
    hwf = np.tile([cameras.height, cameras.width, float(cameras.fx[0])], (n, 1))
    mats = np.stack([-up, right, back, t, hwf], axis=-1)  # LLFF columns: [down, right, back, t, hwf]
    rows = np.concatenate([mats.reshape(n, 15), np.tile(bounds, (n, 1))], axis=1)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "poses_bounds.npy", rows)
    (root / "images").mkdir()
    for i in range(n):
        Image.new("RGB", (cameras.width, cameras.height), (i * 20, 90, 160)).save(root / "images" / f"img_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generate("tiny", tmp_path_factory.mktemp("cache"), **TINY)


@pytest.fixture
def scene(tiny_dir, tmp_path):
    """A writable copy of a small nerfstudio scene and a function to edit its transforms.json."""
    root = tmp_path / "scene"
    shutil.copytree(tiny_dir, root)

    def edit(change):
        meta = json.loads((root / "transforms.json").read_text())
        change(meta)
        (root / "transforms.json").write_text(json.dumps(meta))

    return root, edit


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_image(scene):
    root, _ = scene
    (root / "images" / "train_003.png").unlink()
    _raises(r"train_003\.png: image file is missing", load_nerfstudio, root)


def test_truncated_png(scene):
    root, _ = scene
    path = root / "images" / "test_001.png"
    path.write_bytes(path.read_bytes()[:60])
    _raises(r"test_001\.png: unreadable image", load_nerfstudio, root)


def test_image_size_differs_from_intrinsics(scene):
    root, _ = scene
    Image.new("RGBA", (10, 12)).save(root / "images" / "train_002.png")
    _raises(r"train_002\.png: image is 10x12, but .*transforms\.json frame 2 \(w, h\) says 16x16",
            load_nerfstudio, root)


def test_non_finite_pose(scene):
    root, edit = scene
    edit(lambda m: m["frames"][4]["transform_matrix"][1].__setitem__(3, float("nan")))
    _raises(r"transforms\.json frame 4: camera pose has non-finite values", load_nerfstudio, root)


def test_non_rigid_pose(scene):
    root, edit = scene
    edit(lambda m: m["frames"][1]["transform_matrix"][0].__setitem__(0, 2.0))
    _raises(r"transforms\.json frame 1: camera pose is not rigid", load_nerfstudio, root)


def test_missing_keys(scene):
    root, edit = scene
    edit(lambda m: m["frames"][5].pop("transform_matrix"))
    _raises(r"transforms\.json frame 5: missing required key 'transform_matrix'", load_nerfstudio, root)
    edit(lambda m: m.pop("frames"))
    _raises(r"transforms\.json: missing required key 'frames'", load_nerfstudio, root)


def test_missing_focal_length(scene):
    root, edit = scene
    edit(lambda m: m.pop("fl_x"))
    _raises(r"frame 0: missing required key 'fl_x'", load_nerfstudio, root)


def test_empty_split(scene):
    root, edit = scene
    edit(lambda m: [f.__setitem__("split", "train") for f in m["frames"]])
    _raises(r"transforms\.json: split 'test' has no frames \(splits with frames: train\)", load_nerfstudio, root)


def test_bad_optional_fields(scene):
    root, edit = scene
    edit(lambda m: m["frames"][3].__setitem__("exposure", 1.5))
    _raises(r"frame 0: missing 'exposure' \(other frames of split 'train' have it\)", load_nerfstudio, root)
    edit(lambda m: [f.__setitem__("exposure", -1.0 if i == 2 else 1.0) for i, f in enumerate(m["frames"])])
    _raises(r"frame 2 'exposure': expected a positive finite number", load_nerfstudio, root)
    edit(lambda m: [f.__setitem__("exposure", 1.0) for f in m["frames"]]
         + [m["frames"][0].__setitem__("appearance_id", "a")])
    _raises(r"frame 1: missing 'appearance_id'", load_nerfstudio, root)
    edit(lambda m: m["frames"][0].pop("appearance_id"))
    edit(lambda m: m.__setitem__("blocks", [{"center": [0, 0], "radius": 1}]))
    _raises(r"blocks\[0\] 'center': expected 3 numbers", load_nerfstudio, root)


def test_llff_poses_bounds_of_the_wrong_shape(tmp_path):
    root = tmp_path / "llff"
    root.mkdir()
    np.save(root / "poses_bounds.npy", np.zeros((20, 15)))
    _raises(r"poses_bounds\.npy: expected an array of shape \(N, 17\).*got shape \(20, 15\)", load_llff, root)


def test_llff_image_count_and_pose_checks(tmp_path):
    from harness.core.data.procedural.tiny import build_tiny, tiny_scene

    cams = build_tiny(tiny_scene(**TINY)).cameras
    root = write_llff(tmp_path / "a", cams, n=5)
    (root / "images" / "img_004.png").unlink()
    _raises(r"a/images: 4 images, but .*poses_bounds\.npy has 5 poses", load_llff, root)
    root = write_llff(tmp_path / "b", cams, n=5)
    rows = np.load(root / "poses_bounds.npy")
    rows[2, 0] = 3.0
    np.save(root / "poses_bounds.npy", rows)
    _raises(r"poses_bounds\.npy row 2: camera pose is not rigid", load_llff, root)
    root = write_llff(tmp_path / "c", cams, n=5)
    Image.new("RGB", (8, 8)).save(root / "images" / "img_001.png")
    _raises(r"img_001\.png: image is 8x8, but .*hwf / 1 says 16x16", load_llff, root)
    _raises(r"img_000\.png: image of 16x16 cannot be downscaled by 3", load_llff, root, downscale_factor=3)
    shutil.rmtree(root / "images")
    _raises(r"c/images: image folder is missing .*found no images_N folder", load_llff, root)


@requires_shared("nerf_llff", "fern")
def test_colmap_model_missing_images_file():
    # The shared fern copy has sparse/0/cameras.bin without images.bin.
    _raises(r"sparse/0/images\.bin: file is missing", load_colmap, SHARED_DATA / "nerf_llff" / "fern")


def test_colmap_truncated_and_unsupported(tmp_path):
    path = tmp_path / "cameras.bin"
    path.write_bytes(np.array([1], dtype="<u8").tobytes() + b"\x01\x00\x00\x00")
    _raises(r"cameras\.bin: truncated", read_cameras_binary, path)
    (tmp_path / "cameras.txt").write_text("1 FOV 16 16 10 10 8 8 0.1\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n")
    path.unlink()
    _raises(r"camera 1: camera model FOV is not supported", load_colmap, tmp_path, images_dir=".", llffhold=0,
            splits=("train",))
