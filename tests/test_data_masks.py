"""Masks (`Split.masks`): the street's moving cars through the writer and the loaders, Blender-format masks,
min-pool downscaling, the street without cars unchanged, and one DataError line per bad mask."""

import dataclasses
import json
import shutil

import gin
import numpy as np
import pytest
from PIL import Image

from harness.core.data.blender import load_blender
from harness.core.data.images import downscale_mask
from harness.core.data.nerfstudio import load_nerfstudio
from harness.core.data.procedural import provenance, scene_params
from harness.core.data.procedural.street import build_street, street_scene, street_views
from harness.core.data.procedural.views import render_split, render_view
from harness.core.data.scene import Split
from harness.core.errors import ConfigError
from tests.test_data_errors import _raises
from tests.test_data_street import generate

SMALL = {"n_blocks": 1, "n_images": 24, "width": 48, "height": 32}
CARS = {**SMALL, "transients": 6}
DEFAULT_STREET_HASH = "72109c0dd7c5"  # street_scene() before `transients` existed: its cache folder must not move


@pytest.fixture(scope="module")
def street_dir(tmp_path_factory):
    return generate("street", tmp_path_factory.mktemp("cache"), **CARS)


@pytest.fixture(scope="module")
def source():
    return build_street(street_scene(**CARS))


@pytest.fixture(scope="module")
def views(source):
    return [render_view(source, i) for i in range(len(source.names))]


@pytest.fixture
def scene(street_dir, tmp_path):
    """A writable copy of the street with cars and a function to edit its transforms.json."""
    root = tmp_path / "street"
    shutil.copytree(street_dir, root)

    def edit(change):
        meta = json.loads((root / "transforms.json").read_text())
        change(meta)
        (root / "transforms.json").write_text(json.dumps(meta))

    return root, edit


def _min_pool(masks: np.ndarray, f: int) -> np.ndarray:
    n, h, w = masks.shape
    return masks.reshape(n, h // f, f, w // f, f).all(axis=(2, 4))


def test_masks_round_trip_through_writer_and_loader(street_dir, source, views):
    frames = json.loads((street_dir / "transforms.json").read_text())["frames"]
    assert all(f["mask_path"] == f"masks/{n}.png" for f, n in zip(frames, source.names))
    with Image.open(street_dir / frames[1]["mask_path"]) as im:
        assert im.mode == "L" and set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
    loaded = load_nerfstudio(street_dir, splits=("train", "test"))
    for split in loaded.splits.values():
        assert split.masks is not None and split.masks.dtype == bool
        assert split.masks.shape == split.images.shape[:3]
        for k, name in enumerate(split.names):
            np.testing.assert_array_equal(split.masks[k], ~views[source.names.index(name)]["transient"])


def test_cars_show_in_most_frames_and_move(source, views):
    maps = np.stack([v["transient"] for v in views])
    assert maps.any(axis=(1, 2)).mean() >= 0.6
    assert 0 < maps.mean() < 0.3  # cars, not a wall of them
    changed = [not np.array_equal(a, b) for a, b in zip(maps[:-1], maps[1:]) if a.any() or b.any()]
    assert np.mean(changed) > 0.9  # every view sees them elsewhere
    x = source.transients.lo[:, :, 0]
    assert all(len(np.unique(np.round(x[:, k], 3))) > len(x) // 2 for k in range(x.shape[1]))
    eye = source.cameras.c2w[:, :, 3]
    inside = ((eye[:, None] > source.transients.lo) & (eye[:, None] < source.transients.hi)).all(axis=-1)
    assert not inside.any()  # no camera sits inside a car


def test_cars_cast_no_shadow_on_static_pixels(source, views):
    """Masking the cars removes every trace of them: the static pixels are those of the street without cars."""
    empty = dataclasses.replace(source, transients=None)
    for i in range(0, len(views), 3):
        plain, car = render_view(empty, i), views[i]["transient"]
        assert not plain["transient"].any()
        np.testing.assert_array_equal(views[i]["rgb"][~car], plain["rgb"][~car])
        np.testing.assert_array_equal(views[i]["depth"][~car], plain["depth"][~car])
        assert (views[i]["depth"][car] < plain["depth"][car]).all() and (views[i]["alpha"][car] == 1).all()


def test_street_without_transients_keeps_its_parameters_and_cache_name(tmp_path):
    assert "transients" not in street_scene() and street_scene(transients=0) == street_scene()
    assert provenance("street", scene_params_of()).get("hash") == DEFAULT_STREET_HASH
    assert provenance("street", scene_params_of(transients=0))["hash"] == DEFAULT_STREET_HASH
    assert provenance("street", scene_params_of(transients=2))["hash"] != DEFAULT_STREET_HASH
    with pytest.raises(ConfigError, match=r"street_scene\.transients must be a non-negative integer"):
        scene_params_of(transients=-1)
    folder = generate("street", tmp_path, **SMALL, transients=0)
    assert folder.name == f"street-{provenance('street', json.loads(json.dumps(street_scene(**SMALL))))['hash']}"
    assert not (folder / "masks").exists()
    assert not any("mask_path" in f for f in json.loads((folder / "transforms.json").read_text())["frames"])
    loaded = load_nerfstudio(folder, splits=("train", "test"))
    assert all(s.masks is None for s in loaded.splits.values())


def scene_params_of(**bindings) -> dict:
    """`scene_params('street')` under Gin bindings, leaving Gin clean."""
    gin.clear_config()
    gin.parse_config([f"street_scene.{k} = {v!r}" for k, v in bindings.items()])
    try:
        return scene_params("street")
    finally:
        gin.clear_config()


def test_render_split_has_masks_and_novel_views_have_no_cars(source, views):
    split = render_split(source)
    np.testing.assert_array_equal(split.masks, ~np.stack([v["transient"] for v in views]))
    novel = street_views(street_scene(**CARS), 6, seed=1)
    assert novel.transients is None and render_split(novel).masks is None


def test_split_subset_keeps_masks_and_misshaped_masks_are_refused(street_dir):
    train = load_nerfstudio(street_dir, splits=("train",)).splits["train"]
    part = train.subset([3, 0])
    assert part.names == [train.names[3], train.names[0]]
    np.testing.assert_array_equal(part.masks, train.masks[[3, 0]])
    np.testing.assert_array_equal(part.exposure, train.exposure[[3, 0]])
    with pytest.raises(ValueError, match="Split.masks must be bool"):
        Split(train.images, train.cameras, train.names, masks=train.masks[:, :-1])
    with pytest.raises(ValueError, match="Split.masks must be bool"):
        Split(train.images, train.cameras, train.names, masks=train.masks.astype(np.uint8))


def test_downscale_keeps_a_pixel_only_where_all_its_sources_count(street_dir):
    assert downscale_mask(np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool), 2).tolist() == [[True, False]]
    full = load_nerfstudio(street_dir, splits=("train", "test"))
    half = load_nerfstudio(street_dir, splits=("train", "test"), downscale_factor=2)
    for name, split in full.splits.items():
        np.testing.assert_array_equal(half.splits[name].masks, _min_pool(split.masks, 2))
    any_pool = ~_min_pool(~full.splits["train"].masks, 2)
    assert (any_pool != half.splits["train"].masks).any()  # some 2x2 blocks are part car: the rule matters


def test_frames_without_a_mask_count_every_pixel(scene):
    root, edit = scene
    edit(lambda m: m["frames"][1].pop("mask_path"))
    train = load_nerfstudio(root, splits=("train",)).splits["train"]
    k = train.names.index("frame_00001")
    assert train.masks[k].all()
    with Image.open(root / "masks" / "frame_00002.png") as im:
        np.testing.assert_array_equal(train.masks[train.names.index("frame_00002")], np.asarray(im) > 0)


def _blender(root, street_dir, masked: dict[int, str]):
    """A Blender-format train split of street frames 1-3; frame k gets `mask_path` masked[k] when given."""
    meta = json.loads((street_dir / "transforms.json").read_text())
    root.mkdir()
    shutil.copytree(street_dir / "images", root / "images")
    shutil.copytree(street_dir / "masks", root / "masks")
    frames = []
    for k, i in enumerate((1, 2, 3)):
        frame = {"file_path": f"./images/frame_{i:05d}", "transform_matrix": meta["frames"][i]["transform_matrix"]}
        if k in masked:
            frame["mask_path"] = masked[k]
        frames.append(frame)
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 1.3, "frames": frames}))
    return root


def test_blender_frames_load_their_masks(street_dir, tmp_path, views):
    root = _blender(tmp_path / "blender", street_dir, {0: "masks/frame_00001.png", 2: "masks/frame_00003.png"})
    for factor in (1, 2):
        split = load_blender(root, splits=("train",), downscale_factor=factor).splits["train"]
        want = np.stack([~views[1]["transient"], np.ones((32, 48), bool), ~views[3]["transient"]])
        np.testing.assert_array_equal(split.masks, _min_pool(want, factor))
    bad = _blender(tmp_path / "bad", street_dir, {1: "masks/nothing.png"})
    _raises(r"masks/nothing\.png: mask file is missing \(.*transforms_train\.json frame 1\)",
            load_blender, bad, splits=("train",))
    none = _blender(tmp_path / "none", street_dir, {})
    assert load_blender(none, splits=("train",)).splits["train"].masks is None


def _replace_mask(root, name: str, image: Image.Image) -> None:
    image.save(root / "masks" / f"{name}.png")


def test_bad_masks_give_one_line_naming_the_file_and_frame(scene):
    root, edit = scene
    frame = r"\(.*transforms\.json frame {}\)"
    (root / "masks" / "frame_00003.png").unlink()
    _raises(r"masks/frame_00003\.png: mask file is missing " + frame.format(3), load_nerfstudio, root)
    (root / "masks" / "frame_00003.png").write_bytes(b"not a png")
    _raises(r"masks/frame_00003\.png: unreadable mask .*" + frame.format(3), load_nerfstudio, root)
    _replace_mask(root, "frame_00003", Image.new("L", (40, 30), 255))
    _raises(r"masks/frame_00003\.png: mask is 40x30, its image .*images/frame_00003\.png is 48x32 "
            + frame.format(3), load_nerfstudio, root)
    for mode in ("RGB", "RGBA", "LA", "P"):
        _replace_mask(root, "frame_00003", Image.new(mode, (48, 32)))
        _raises(rf"masks/frame_00003\.png: mask has image mode {mode}, expected single-channel 8-bit "
                + frame.format(3), load_nerfstudio, root)
    _replace_mask(root, "frame_00003", Image.fromarray(np.full((32, 48), 1000, np.uint16)))
    _raises(r"masks/frame_00003\.png: mask has image mode I", load_nerfstudio, root)
    _replace_mask(root, "frame_00003", Image.new("L", (48, 32), 0))
    _raises(r"masks/frame_00003\.png: mask keeps no pixel \(all 0\) " + frame.format(3), load_nerfstudio, root)
    checker = (np.indices((32, 48)).sum(axis=0) % 2 * 255).astype(np.uint8)
    _replace_mask(root, "frame_00003", Image.fromarray(checker))
    assert load_nerfstudio(root, splits=("train",)).splits["train"].masks is not None  # fine at full size
    _raises(r"masks/frame_00003\.png: mask keeps no pixel after downscale by 2 .*" + frame.format(3),
            load_nerfstudio, root, downscale_factor=2)
    edit(lambda m: m["frames"][4].__setitem__("mask_path", 7))
    _raises(r"transforms\.json frame 4 'mask_path': expected a non-empty string", load_nerfstudio, root)


def test_one_bit_masks_are_accepted(scene):
    root, _ = scene
    keep = np.ones((32, 48), bool)
    keep[:10, :20] = False
    _replace_mask(root, "frame_00002", Image.fromarray(keep).convert("1"))
    train = load_nerfstudio(root, splits=("train",)).splits["train"]
    np.testing.assert_array_equal(train.masks[train.names.index("frame_00002")], keep)
